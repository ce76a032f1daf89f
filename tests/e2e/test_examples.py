"""The examples are valid against the real API server (and so against the CRDs)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_top_level_examples_pass_server_side_validation(sandbox):
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        result = sandbox.kubectl("apply", "--dry-run=server", "-f", str(path))
        assert "(server dry run)" in result.stdout, path


def test_the_gitops_overlay_builds_and_passes_server_side_validation(sandbox, core):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    built = sandbox.kubectl("kustomize", str(ROOT / "examples" / "gitops" / "overlays" / "production")).stdout
    documents = [d for d in yaml.safe_load_all(built) if d]
    model = next(d for d in documents if d["kind"] == "RegisteredModel")
    assert model["metadata"]["namespace"] == "ml-production"
    assert model["spec"]["aliases"] == {"champion": "3", "challenger": "4"}
    assert model["spec"]["archiveExistingVersions"] is True
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="ml-production")))
    except ApiException as error:
        assert error.status == 409
    try:
        result = sandbox.kubectl("apply", "--dry-run=server", "-f", "-", input_text=built)
        # The Experiment, the RegisteredModel and the training pods' RoleBinding (its subject in
        # the overlay's namespace).
        assert result.stdout.count("(server dry run)") == 3
        binding = next(d for d in documents if d["kind"] == "RoleBinding")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default", "namespace": "ml-production"}]
    finally:
        core.delete_namespace("ml-production")
