"""Certificates and kubeconfigs for the sandbox control plane.

The sandbox runs with serving certificates, client-certificate authentication,
RBAC and ServiceAccount tokens, as a real cluster does, so that what works here
(including the operator's RBAC) works on a real cluster.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `cryptography` is only needed to create the PKI, not to stop the sandbox.
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

VALIDITY = dt.timedelta(days=3650)

# Identities of the control-plane clients: (file stem, common name, organization).
# kwok simulates every node's kubelet, so it gets cluster-admin like kwokctl's own setup.
CLIENTS: tuple[tuple[str, str, str | None], ...] = (
    ("admin", "sandbox-admin", "system:masters"),
    ("kube-controller-manager", "system:kube-controller-manager", None),
    ("kube-scheduler", "system:kube-scheduler", None),
    ("kwok", "kwok-controller", "system:masters"),
    # The real node's kubelet, as the Node authorizer expects it, and the API server's
    # identity towards kubelets (for `kubectl logs` / `exec`).
    ("kubelet", "system:node:localhost", "system:nodes"),
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
)
# The real node is called `localhost`: its name resolves to 127.0.0.1, so the API server
# reaches the kubelet on loopback (--kubelet-preferred-address-types=Hostname).
NODE_NAME = "localhost"

APISERVER_SANS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_SANS_IP = ("127.0.0.1", "10.96.0.1")


@dataclass(frozen=True)
class Pki:
    """Paths of every key and certificate the sandbox uses."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    def client_cert(self, stem: str) -> Path:
        return self.root / f"{stem}.crt"

    def client_key(self, stem: str) -> Path:
        return self.root / f"{stem}.key"


def _new_key() -> "rsa.RSAPrivateKey":
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: "rsa.RSAPrivateKey", path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: "x509.Certificate", path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organization: str | None = None) -> "x509.Name":
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(subject: "x509.Name", issuer: "x509.Name", public_key) -> "x509.CertificateBuilder":
    from cryptography import x509

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
    )


def ensure_pki(pki: Pki) -> None:
    """Create the CA, serving, client and ServiceAccount keys once; reuse them afterwards."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    pki.root.mkdir(parents=True, exist_ok=True)
    if not pki.ca_cert.exists():
        ca_key = _new_key()
        ca_name = _name("mlflow-operator-sandbox-ca")
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(ca_key, pki.ca_key)
        _write_cert(ca_cert, pki.ca_cert)

    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    try:
        ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        # Python >= 3.13 verifies strictly (the workspace server runs on it): certificates
        # need key identifiers, which a sandbox made before they were added lacks.
        raise SystemExit(f"the sandbox's PKI in {pki.root} predates key identifiers, which Python 3.13 "
                         "requires: `make sandbox-clean`, then `make sandbox-up`") from None
    # Python >= 3.13 refuses a certificate without the key identifier of its issuer.
    issuer_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())

    if not pki.apiserver_cert.exists():
        key = _new_key()
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in APISERVER_SANS_DNS]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in APISERVER_SANS_IP]
        cert = (
            _builder(_name("kube-apiserver"), ca_cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(issuer_key_id, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(key, pki.apiserver_key)
        _write_cert(cert, pki.apiserver_cert)

    for stem, common_name, organization in CLIENTS:
        if pki.client_cert(stem).exists():
            continue
        key = _new_key()
        cert = (
            _builder(_name(common_name, organization), ca_cert.subject, key.public_key())
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(issuer_key_id, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(key, pki.client_key(stem))
        _write_cert(cert, pki.client_cert(stem))

    if not pki.client_cert("kubelet-serving").exists():
        key = _new_key()
        sans = [x509.DNSName(NODE_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            _builder(_name(f"system:node:{NODE_NAME}", "system:nodes"), ca_cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(issuer_key_id, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(key, pki.client_key("kubelet-serving"))
        _write_cert(cert, pki.client_cert("kubelet-serving"))

    if not pki.sa_key.exists():
        key = _new_key()
        _write_key(key, pki.sa_key)
        pki.sa_pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def write_kubeconfig(path: Path, server: str, pki: Pki, client_stem: str, user: str) -> None:
    """Write a kubeconfig that authenticates with a client certificate from the sandbox PKI."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster:
    server: {server}
    certificate-authority: {pki.ca_cert}
users:
- name: {user}
  user:
    client-certificate: {pki.client_cert(client_stem)}
    client-key: {pki.client_key(client_stem)}
contexts:
- name: sandbox
  context:
    cluster: sandbox
    user: {user}
current-context: sandbox
"""
    )
    path.chmod(0o600)
