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


# --- attach --transparent --apply ---------------------------------------------------------------


def _transparent_cluster(cluster, ca_dir, *, version=("1", "30"), pod_security=None, secret=True):
    """The stand-in answering what --transparent --apply asks: the server version, the
    workload's namespace, the CA Secret in that namespace."""
    if version:
        cluster.put_version(*version)
    labels = {"kubernetes.io/metadata.name": "velero"}
    if pod_security:
        labels["pod-security.kubernetes.io/enforce"] = pod_security
    cluster.put("namespace", "velero", {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": "velero", "labels": labels}})
    if secret:
        s = json.loads(k8s.flowtap("k8s", "ca-secret", "--ca-dir", ca_dir, "-n", "velero").stdout)
        if secret != True:  # noqa: E712 - a change to make
            secret(s)
        cluster.put("secret", "flowtap-ca", s)


def test_transparent_apply_checks_the_cluster_then_applies(cluster, ca_dir, tmp_path):
    _transparent_cluster(cluster, ca_dir)
    r = cluster.flowtap("k8s", "attach", "deployment/velero", "-n", "velero", "--transparent",
                        "--system-bundle", SYSTEM_BUNDLE, "--apply")
    assert "attached deployment/velero in namespace velero: the transparent sidecar" in r.stderr
    assert "the sidecar uses secret/flowtap-ca in namespace velero" in r.stderr
    assert "kubectl logs deployment/velero -n velero -c flowtap" in r.stderr
    calls = cluster.calls()
    assert [c["args"] for c in calls[:4]] == [
        ["get", "deployment/velero", "-n", "velero", "-o", "json"],
        ["version", "-o", "json"],
        ["get", "namespace/velero", "-o", "json"],
        # The Secret the sidecar mounts, in the workload's namespace; its ca.pem is what the
        # application trusts.
        ["get", "secret/flowtap-ca", "-n", "velero", "-o", "json"],
    ]
    assert [c["args"][:2] for c in calls[4:]] == [["apply", "--server-side"], ["patch", "deployment/velero"]]
    (cm,) = [d for d in yaml.safe_load_all(calls[4]["stdin"]) if d]
    assert cm["data"]["flowtap-ca.pem"] == (ca_dir / "ca.pem").read_text()
    patch = json.loads(calls[5]["args"][7])
    assert patch["metadata"]["resourceVersion"] == "4711"

    # The applied patch is the one --out writes offline (plus the version lock).
    out = tmp_path / "out"
    k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml", "--transparent",
                "--ca-cert", ca_dir / "ca.pem", "--system-bundle", SYSTEM_BUNDLE, "--out", out)
    del patch["metadata"]["resourceVersion"]
    assert patch == json.loads((out / "patch.json").read_text())


def test_transparent_apply_with_the_matching_ca_cert(cluster, ca_dir):
    _transparent_cluster(cluster, ca_dir)
    cluster.flowtap("k8s", "attach", "deployment/velero", "--transparent", "--ca-cert",
                    ca_dir / "ca.pem", "--system-bundle", SYSTEM_BUNDLE, "--apply")
    assert [c["args"][0] for c in cluster.calls()] == ["get", "version", "get", "get", "apply", "patch"]


def _refused(cluster, *flags) -> str:
    r = cluster.flowtap("k8s", "attach", "deployment/velero", "--transparent", "--system-bundle",
                        SYSTEM_BUNDLE, "--apply", *flags, check=False)
    assert r.returncode == 1, r.stderr
    assert "deployment/velero in namespace velero: refused:" in r.stderr, r.stderr
    verbs = [c["args"][0] for c in cluster.calls()]
    assert "apply" not in verbs and "patch" not in verbs, "nothing is changed"
    return r.stderr


def test_transparent_apply_without_the_ca_secret_is_refused(cluster, ca_dir):
    _transparent_cluster(cluster, ca_dir, secret=False)
    stderr = _refused(cluster)
    assert ("the sidecar needs the CA Secret flowtap-ca in namespace velero, and it cannot be read "
            "(kubectl get secret/flowtap-ca -n velero -o json: failed") in stderr
    assert 'Error from server (NotFound): secret "flowtap-ca" not found' in stderr
    assert "make it with: flowtap k8s ca-secret --ca-dir DIR --name flowtap-ca -n velero | kubectl apply --server-side -f -" in stderr
    # --ca-cert does not make the Secret unnecessary: the sidecar signs with its key.
    _refused(cluster, "--ca-cert", ca_dir / "ca.pem")


def test_transparent_apply_refuses_an_incomplete_or_other_secret(cluster, ca_dir, tmp_path):
    _transparent_cluster(cluster, ca_dir, secret=lambda s: s["data"].pop("ca-key.pem"))
    stderr = _refused(cluster)
    assert "the CA Secret flowtap-ca in namespace velero has no ca-key.pem, which the sidecar needs" in stderr

    _transparent_cluster(cluster, ca_dir)
    other = tmp_path / "other"
    k8s.flowtap("ca", "init", "--dir", other)
    stderr = _refused(cluster, "--ca-cert", other / "ca.pem")
    assert "is not the certificate in the CA Secret the sidecar signs with" in stderr


def test_transparent_apply_refuses_old_kubernetes_and_pod_security(cluster, ca_dir):
    _transparent_cluster(cluster, ca_dir, version=("1", "28+"), pod_security="baseline")
    stderr = _refused(cluster)
    assert "the API server is Kubernetes 1.28; the flowtap container is a native sidecar" in stderr
    assert 'namespace velero enforces the Pod Security level "baseline"' in stderr


def test_transparent_apply_notes_what_it_cannot_tell(cluster, ca_dir):
    """No version answer and no readable namespace: said, not refused."""
    _transparent_cluster(cluster, ca_dir, version=None)
    (cluster.dir / "get-namespace-velero.json").unlink()
    r = cluster.flowtap("k8s", "attach", "deployment/velero", "--transparent", "--system-bundle",
                        SYSTEM_BUNDLE, "--apply")
    assert "note: cannot tell the Kubernetes version" in r.stderr and "needs 1.29 or later" in r.stderr
    assert "note: cannot read namespace velero" in r.stderr
    assert [c["args"][0] for c in cluster.calls()][-2:] == ["apply", "patch"]


def test_transparent_detach_apply(cluster, ca_dir, tmp_path):
    out = tmp_path / "out"
    k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml", "--transparent",
                "--ca-cert", ca_dir / "ca.pem", "--system-bundle", SYSTEM_BUNDLE, "--out", out)
    attached = k8s.kubectl_patch(SAMPLES / "velero.yaml", out / "patch.json")
    cluster.put("deployment", "velero", attached)
    r = cluster.flowtap("k8s", "detach", "deploy/velero", "--apply")
    assert "the sidecar is gone from the pod template; the CA Secret stays in namespace velero" in r.stderr
    calls = [c["args"] for c in cluster.calls()]
    assert [c[0] for c in calls] == ["get", "patch", "delete"]
    assert calls[2] == ["delete", "configmap/flowtap-ca-deployment-velero", "-n", "velero", "--ignore-not-found"]
    patch_file = tmp_path / "detach.json"
    patch_file.write_text(calls[1][7])
    attached_file = tmp_path / "attached.json"
    attached_file.write_text(json.dumps(attached))
    restored = k8s.kubectl_patch(attached_file, patch_file)
    assert k8s.normalise(restored) == k8s.normalise(k8s.kubectl_local(SAMPLES / "velero.yaml"))
