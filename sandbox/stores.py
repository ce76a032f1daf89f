"""The sandbox's shared stores for the embedded MLflow server's scale-out mode: a real
PostgreSQL server (Debian's `postgresql`, run as its own process by the `postgres` user) and a
real S3-compatible object store (versitygw, built from its pinned Go module, over a directory).

Both listen on 127.0.0.1 only. Their secrets are made once per sandbox and kept in files
readable by root alone; they reach processes through the environment or stdin, never a
command line.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

POSTGRES_USER = "postgres"
# The role MLflow's databases belong to; it may create databases (one per chart test).
MLFLOW_ROLE = "mlflow"
MLFLOW_DATABASE = "mlflow"
S3_ACCESS_KEY = "sandbox"
S3_BUCKET = "mlflow"


class StoreError(RuntimeError):
    """A store cannot be set up; the message says what to do."""


def _secret_file(path: Path) -> str:
    """A random secret made once and kept in `path` (root only)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(18) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin(required: bool = True) -> Path:
    """The newest PostgreSQL server Debian installed (/usr/lib/postgresql/<major>/bin)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not versions:
        if required:
            raise StoreError("PostgreSQL is not installed: run `make node-packages` (Debian package postgresql)")
        return Path("/usr/lib/postgresql/15/bin")
    return versions[-1].parent


@dataclass(frozen=True)
class Postgres:
    directory: Path
    port: int

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def superuser_password(self) -> str:
        return _secret_file(self.directory / "superuser-password")

    @property
    def mlflow_password(self) -> str:
        return _secret_file(self.directory / "mlflow-password")

    def uri(self, database: str = MLFLOW_DATABASE) -> str:
        """The SQLAlchemy URI MLflow uses for `database` (it holds the role's password)."""
        return f"postgresql://{MLFLOW_ROLE}:{self.mlflow_password}@127.0.0.1:{self.port}/{database}"

    def argv(self) -> list[str]:
        return [
            "setpriv", f"--reuid={POSTGRES_USER}", f"--regid={POSTGRES_USER}", "--init-groups", "--",
            str(postgres_bin(required=False) / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            # TCP only: a socket path under a long sandbox directory could pass 107 bytes.
            "-c", "unix_socket_directories=",
            # A sandbox's database: speed over durability, as etcd's --unsafe-no-fsync.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]

    def prepare(self) -> None:
        """initdb once, as the postgres user, with password authentication on TCP."""
        user = pwd.getpwnam(POSTGRES_USER)
        for parent in self.directory.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                raise StoreError(f"the postgres user cannot reach {self.directory}: {parent} is not "
                                 "traversable by others (chmod o+x it or choose another SANDBOX_DIR)")
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.data / "PG_VERSION").exists():
            return
        self.data.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data, user.pw_uid, user.pw_gid)
        password_file = self.directory / "initdb-password"
        password_file.write_text(self.superuser_password + "\n")
        os.chown(password_file, user.pw_uid, user.pw_gid)
        password_file.chmod(0o600)
        try:
            result = subprocess.run(
                ["setpriv", f"--reuid={POSTGRES_USER}", f"--regid={POSTGRES_USER}", "--init-groups", "--",
                 str(postgres_bin() / "initdb"), "-D", str(self.data), f"--username={POSTGRES_USER}",
                 f"--pwfile={password_file}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
                capture_output=True, text=True, timeout=120, cwd="/",
            )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StoreError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")

    def ready(self) -> bool:
        result = subprocess.run([str(postgres_bin() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                capture_output=True, timeout=10)
        return result.returncode == 0

    def sql(self, statements: str, database: str = "postgres") -> str:
        """Run SQL as the superuser (statements on stdin, the password in the environment)."""
        result = subprocess.run(
            [str(postgres_bin() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", POSTGRES_USER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-t", "-A"],
            input=statements, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGPASSWORD": self.superuser_password},
        )
        if result.returncode != 0:
            raise StoreError(f"psql: {result.stderr.strip()}")
        return result.stdout

    def ensure_mlflow_role(self) -> None:
        """The `mlflow` role (may create databases) and its default database."""
        password = self.mlflow_password.replace("'", "''")
        self.sql(f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MLFLOW_ROLE}') THEN
    CREATE ROLE {MLFLOW_ROLE} LOGIN CREATEDB PASSWORD '{password}';
  ELSE
    ALTER ROLE {MLFLOW_ROLE} LOGIN CREATEDB PASSWORD '{password}';
  END IF;
END $$;
SELECT 'CREATE DATABASE {MLFLOW_DATABASE} OWNER {MLFLOW_ROLE}'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{MLFLOW_DATABASE}')\\gexec
""")


# --------------------------------------------------------------------------- S3


@dataclass(frozen=True)
class ObjectStore:
    directory: Path
    port: int
    binary: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def secret_key(self) -> str:
        return _secret_file(self.directory / "secret-key")

    def argv(self) -> list[str]:
        return [str(self.binary), f"--port=127.0.0.1:{self.port}", "--quiet", "posix", str(self.directory / "data")]

    def env(self) -> dict[str, str]:
        """The root credentials through the environment (versitygw reads them there)."""
        return {"ROOT_ACCESS_KEY_ID": S3_ACCESS_KEY, "ROOT_SECRET_ACCESS_KEY": self.secret_key}

    def prepare(self) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        self.secret_key  # noqa: B018 - made before the server starts, which reads it from its env

    def client(self):  # -> botocore S3 client; boto3 is a dev dependency, imported when used
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ACCESS_KEY,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))

    def ready(self) -> bool:
        try:
            self.client().list_buckets()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def ensure_bucket(self, name: str = S3_BUCKET) -> None:
        client = self.client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
