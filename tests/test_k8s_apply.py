"""`--apply`: flowtap shells out to `kubectl` with the same objects it prints. No API server
runs here, so a stand-in `kubectl` on PATH records each command line and its stdin and answers
`get` from files; the tests check the commands, and apply the recorded patch to the sample with
the real `kubectl patch --local` to check it is the one `--out` writes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from support import k8s
from support.k8s import PROXY_URL, SAMPLES, StandIn

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture
def cluster(tmp_path):
    s = StandIn(tmp_path / "kubectl")
    workload = k8s.kubectl_local(SAMPLES / "velero.yaml")
    workload["metadata"].update(uid="6f1d2b1e-8a10-4c3e-9a51-0192f0c47c1e", resourceVersion="4711")
    s.put("deployment", "velero", workload)
    return s


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("k8s-apply") / "ca"
    k8s.flowtap("ca", "init", "--dir", d)
    return d


def _secret(ca_dir: Path) -> dict:
    return json.loads(k8s.flowtap("k8s", "ca-secret", "--ca-dir", ca_dir).stdout)


def test_attach_apply_runs_get_apply_patch(cluster, ca_dir, tmp_path):
    cluster.put("secret", "flowtap-ca", _secret(ca_dir))
    r = cluster.flowtap("k8s", "attach", "deployment/velero", "-n", "velero", "--proxy", PROXY_URL,
                        "--system-bundle", SYSTEM_BUNDLE, "--apply")
    assert "attached deployment/velero in namespace velero" in r.stderr
    assert "kubectl rollout status deployment/velero -n velero" in r.stderr
    calls = cluster.calls()
    assert [c["args"][:2] for c in calls] == [
        ["get", "deployment/velero"], ["get", "secret/flowtap-ca"], ["apply", "--server-side"],
        ["patch", "deployment/velero"]]
    assert calls[0]["args"] == ["get", "deployment/velero", "-n", "velero", "-o", "json"]
    # The CA comes from the Secret in the namespace the proxy URL names.
    assert calls[1]["args"] == ["get", "secret/flowtap-ca", "-n", "flowtap", "-o", "json"]
    assert calls[2]["args"] == ["apply", "--server-side", "--field-manager", "flowtap",
                                "--force-conflicts", "-f", "-"]
    applied = [d for d in yaml.safe_load_all(calls[2]["stdin"]) if d]
    assert [d["kind"] for d in applied] == ["ConfigMap"]
    cm = applied[0]
    assert cm["metadata"]["ownerReferences"] == [{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "velero",
        "uid": "6f1d2b1e-8a10-4c3e-9a51-0192f0c47c1e"}]
    assert cm["data"]["flowtap-ca.pem"] == (ca_dir / "ca.pem").read_text()
    patch_args = calls[3]["args"]
    assert patch_args[:6] == ["patch", "deployment/velero", "-n", "velero", "--type", "strategic"]
    assert patch_args[6] == "--patch"
    patch = json.loads(patch_args[7])
    assert patch["metadata"]["resourceVersion"] == "4711", "refused if the workload changed meanwhile"

    # The applied patch is the one --out writes (plus the version lock).
    out = tmp_path / "out"
    k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml", "--proxy",
                PROXY_URL, "--ca-cert", ca_dir / "ca.pem", "--system-bundle", SYSTEM_BUNDLE,
                "--out", out)
    del patch["metadata"]["resourceVersion"]
    assert patch == json.loads((out / "patch.json").read_text())
    cm_file = json.loads((out / "configmap.json").read_text())
    del cm["metadata"]["ownerReferences"]
    assert cm == cm_file
    k8s.validate_strict(applied[0])


def test_detach_apply_patches_back_and_deletes_the_configmap(cluster, ca_dir, tmp_path):
    out = tmp_path / "out"
    k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml", "--proxy",
                PROXY_URL, "--ca-cert", ca_dir / "ca.pem", "--system-bundle", SYSTEM_BUNDLE,
                "--out", out)
    attached = k8s.kubectl_patch(SAMPLES / "velero.yaml", out / "patch.json")
    attached["metadata"]["resourceVersion"] = "5000"
    cluster.put("deployment", "velero", attached)
    r = cluster.flowtap("k8s", "detach", "deploy/velero", "--apply", "--context", "staging")
    assert "detached deployment/velero in namespace velero" in r.stderr
    calls = [c["args"] for c in cluster.calls()]
    assert calls[0] == ["--context", "staging", "get", "deployment/velero", "-o", "json"]
    assert calls[1][:8] == ["--context", "staging", "patch", "deployment/velero", "-n", "velero",
                            "--type", "strategic"]
    assert calls[2] == ["--context", "staging", "delete", "configmap/flowtap-ca-deployment-velero",
                        "-n", "velero", "--ignore-not-found"]
    patch = json.loads(calls[1][9])
    assert patch["metadata"]["resourceVersion"] == "5000"
    del patch["metadata"]["resourceVersion"]
    patch_file = tmp_path / "detach.json"
    patch_file.write_text(json.dumps(patch))
    attached_file = tmp_path / "attached.json"
    attached_file.write_text(json.dumps(attached))
    restored = k8s.kubectl_patch(attached_file, patch_file)
    original = k8s.kubectl_local(SAMPLES / "velero.yaml")
    del restored["metadata"]["resourceVersion"]
    assert k8s.normalise(restored) == k8s.normalise(original)


def test_ca_secret_apply(cluster, ca_dir):
    r = cluster.flowtap("k8s", "ca-secret", "--ca-dir", ca_dir, "-n", "tools", "--apply")
    assert "applied secret/flowtap-ca in namespace tools" in r.stderr
    (call,) = cluster.calls()
    assert call["args"][:2] == ["apply", "--server-side"]
    (secret,) = [d for d in yaml.safe_load_all(call["stdin"]) if d]
    assert secret["metadata"]["namespace"] == "tools"
    assert base64.b64decode(secret["data"]["ca-key.pem"]) == (ca_dir / "ca-key.pem").read_bytes()


def test_kubectl_failure_is_reported(cluster, ca_dir):
    cluster.put("secret", "flowtap-ca", _secret(ca_dir))
    cluster.extra_env["FAKE_KUBECTL_FAIL"] = "patch"
    r = cluster.flowtap("k8s", "attach", "deployment/velero", "--proxy", PROXY_URL,
                        "--system-bundle", SYSTEM_BUNDLE, "--apply", check=False)
    assert r.returncode == 1
    assert "kubectl patch deployment/velero" in r.stderr
    assert "patch is forbidden for this user" in r.stderr


def test_missing_ca_secret_names_the_way_out(cluster):
    r = cluster.flowtap("k8s", "attach", "deployment/velero", "--proxy", PROXY_URL,
                        "--system-bundle", SYSTEM_BUNDLE, "--apply", check=False)
    assert r.returncode == 1
    assert 'secret "flowtap-ca" not found' in r.stderr
    r = cluster.flowtap("k8s", "attach", "deployment/velero", "--proxy", "http://10.0.0.7:8080",
                        "--system-bundle", SYSTEM_BUNDLE, "--apply", check=False)
    assert r.returncode == 64
    assert "give --ca-cert FILE or --ca-secret NAMESPACE/NAME" in r.stderr


def test_kubectl_not_installed(ca_dir, tmp_path):
    env = {"PATH": str(tmp_path)}
    r = k8s.flowtap("k8s", "attach", "deployment/velero", "--proxy", PROXY_URL, "--apply",
                    "--system-bundle", SYSTEM_BUNDLE, env=env, check=False)
    assert r.returncode == 1
    assert "cannot run kubectl" in r.stderr
