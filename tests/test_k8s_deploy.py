"""deploy/: every Kustomize base and overlay builds with `kubectl kustomize`, every object
passes `kubernetes-validate --strict`, and the pieces agree with each other and with the
binaries (the Secret `flowtap k8s ca-secret` prints is the one the Deployment mounts, the
label the NetworkPolicy admits is the one attach sets, every FLOWTAP_* variable is a real flag);
the proxy runs with the Deployment's settings and a CA laid out as a Secret volume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support import k8s
from support.k8s import DEPLOY, SAMPLES
from support.proxy import REPO_ROOT, flowtap_bin

KUSTOMIZATIONS = ["base", "overlays/production", "overlays/capture-bodies"]
PROXY_LABELS = {"app.kubernetes.io/name": "flowtap", "app.kubernetes.io/component": "proxy"}


def build(path: str | Path) -> list[dict]:
    r = subprocess.run([k8s.kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"kubectl kustomize {path}:\n{r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def proxy_container(docs) -> dict:
    dep = by_kind(docs)[("Deployment", "flowtap")]
    return dep["spec"]["template"]["spec"]["containers"][0]


def env_values(c: dict) -> dict:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomizations_build_and_validate(path):
    docs = build(DEPLOY / path)
    k8s.validate_strict(*docs)
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "flowtap", (d["kind"], d["metadata"]["name"])
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "flowtap"


def test_base_proxy_deployment():
    docs = build(DEPLOY / "base")
    objs = by_kind(docs)
    assert set(objs) == {("Namespace", "flowtap"), ("ServiceAccount", "flowtap"),
                         ("Deployment", "flowtap"), ("Service", "flowtap")}
    assert objs[("ServiceAccount", "flowtap")]["automountServiceAccountToken"] is False
    dep = objs[("Deployment", "flowtap")]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"] == PROXY_LABELS
    assert PROXY_LABELS.items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["fsGroup"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = spec["containers"]
    assert c["args"] == ["proxy"]
    assert c["image"] == "flowtap:0.1.0"
    sc = c["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "capabilities": {"drop": ["ALL"]}}
    env = env_values(c)
    assert env["FLOWTAP_OUTPUT"] == "jsonl", "JSON lines on stdout"
    assert env["FLOWTAP_LISTEN"] == "0.0.0.0:8080"
    # The downward-API variables --output otlp turns into k8s.* resource attributes.
    assert [e["name"] for e in c["env"] if "valueFrom" in e] == list(k8s.DOWNWARD_VARS)
    assert k8s.field_refs(c) == k8s.DOWNWARD_VARS
    assert c["ports"] == [{"name": "proxy", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "proxy"}, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"] == "512Mi"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["ca"]["mountPath"] == env["FLOWTAP_CA_DIR"] and mounts["ca"]["readOnly"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["ca"]["secret"] == {"secretName": "flowtap-ca", "defaultMode": 0o440}
    svc = objs[("Service", "flowtap")]
    assert svc["spec"]["selector"] == PROXY_LABELS
    assert svc["spec"]["ports"][0]["port"] == 8080 and svc["spec"]["ports"][0]["targetPort"] == "proxy"


def test_ca_secret_is_the_one_the_deployment_mounts(tmp_path):
    ca = tmp_path / "ca"
    r = k8s.flowtap("ca", "init", "--dir", ca)
    assert "created a new CA" in r.stderr
    secret = json.loads(k8s.flowtap("k8s", "ca-secret", "--ca-dir", ca).stdout)
    k8s.validate_strict(secret)
    docs = build(DEPLOY / "base")
    volume = next(v for v in by_kind(docs)[("Deployment", "flowtap")]["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "ca")
    assert secret["metadata"]["name"] == volume["secret"]["secretName"]
    assert secret["metadata"]["namespace"] == "flowtap"
    assert sorted(secret["data"]) == ["ca-key.pem", "ca.pem"]
    import base64
    assert base64.b64decode(secret["data"]["ca.pem"]) == (ca / "ca.pem").read_bytes()
    assert base64.b64decode(secret["data"]["ca-key.pem"]) == (ca / "ca-key.pem").read_bytes()


def test_ca_secret_refuses_a_missing_or_exposed_ca(tmp_path):
    r = k8s.flowtap("k8s", "ca-secret", "--ca-dir", tmp_path / "none", check=False)
    assert r.returncode == 1 and "flowtap ca init" in r.stderr
    ca = tmp_path / "ca"
    k8s.flowtap("ca", "init", "--dir", ca)
    (ca / "ca-key.pem").chmod(0o644)
    r = k8s.flowtap("k8s", "ca-secret", "--ca-dir", ca, check=False)
    assert r.returncode == 1 and "chmod 600" in r.stderr
    r = k8s.flowtap("k8s", "ca-secret", "--ca-dir", ca, "-n", "Bad_NS", check=False)
    assert r.returncode == 64


def test_network_policy_admits_what_attach_labels(tmp_path):
    docs = by_kind(build(DEPLOY / "overlays/production"))
    np = docs[("NetworkPolicy", "flowtap-proxy")]
    assert np["spec"]["podSelector"]["matchLabels"] == PROXY_LABELS
    (rule,) = np["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"] == {}
    # The label attach puts on pods.
    out = tmp_path / "out"
    ca = tmp_path / "ca"
    k8s.flowtap("ca", "init", "--dir", ca)
    k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml", "--proxy",
                k8s.PROXY_URL, "--ca-cert", ca / "ca.pem", "--system-bundle",
                "/etc/ssl/certs/ca-certificates.crt", "--out", out)
    attached = k8s.kubectl_patch(SAMPLES / "velero.yaml", out / "patch.json")
    labels = k8s.pod_meta(attached)["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    cnp = docs[("NetworkPolicy", "flowtap-collector")]
    assert cnp["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == PROXY_LABELS


def test_components_one_at_a_time(tmp_path):
    """Each component on its own on top of the base, as a user would add it."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    comps = sorted(p.name for p in (DEPLOY / "components").iterdir() if p.is_dir())
    assert "network-policy" in comps
    for comp in comps:
        d = tmp_path / "deploy" / "overlays" / f"only-{comp}"
        d.mkdir()
        (d / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"namespace: flowtap\nresources: [../../base]\ncomponents: [../../components/{comp}]\n")
        docs = build(d)
        k8s.validate_strict(*docs)
        kinds = {k for k, _ in by_kind(docs)}
        assert ("NetworkPolicy" in kinds) == (comp == "network-policy")


def test_production_overlay():
    objs = by_kind(build(DEPLOY / "overlays/production"))
    dep = objs[("Deployment", "flowtap")]
    assert dep["spec"]["replicas"] == 2
    (spread,) = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == PROXY_LABELS
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/flowtap:0.1.0"
    assert objs[("PodDisruptionBudget", "flowtap")]["spec"] == {
        "minAvailable": 1, "selector": {"matchLabels": PROXY_LABELS}}
    assert ("NetworkPolicy", "flowtap-proxy") in objs
    assert ("Deployment", "flowtap-collector") in objs


def test_collector_component_wiring():
    docs = build(DEPLOY / "overlays/production")
    objs = by_kind(docs)
    proxy_env = env_values(proxy_container(docs))
    assert proxy_env["FLOWTAP_OUTPUT"] == "jsonl,grpc://flowtap-collector:9700"
    svc = objs[("Service", "flowtap-collector")]
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 9700, "admin": 9701}
    col = objs[("Deployment", "flowtap-collector")]["spec"]["template"]["spec"]["containers"][0]
    assert col["command"] == ["flowtap-collector"]
    assert col["image"] == "registry.example.com/flowtap:0.1.0"
    cenv = env_values(col)
    assert cenv["FLOWTAP_COLLECTOR_LISTEN"].endswith(":9700")
    assert cenv["FLOWTAP_COLLECTOR_ADMIN_LISTEN"].endswith(":9701")
    assert col["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def _containers(docs):
    for d in docs:
        if d["kind"] == "Deployment":
            yield from d["spec"]["template"]["spec"]["containers"]


# Read by the binaries but not flags: the log filter, and the downward-API variables the OTLP
# output turns into k8s.* resource attributes (proxy/src/output/otlp/config.rs, K8S_VARS).
NOT_FLAGS = {"RUST_LOG", *k8s.DOWNWARD_VARS}


def test_every_variable_is_a_real_flag():
    """The manifests only set variables the binaries read (clap prints them in --help): the
    proxy's containers against `flowtap proxy --help`, the collector's against
    `flowtap-collector --help`."""
    helps = {
        "flowtap": subprocess.run([flowtap_bin(), "proxy", "--help"], capture_output=True,
                                  text=True).stdout,
    }
    collector = Path(flowtap_bin()).with_name("flowtap-collector")
    checked = 0
    for path in KUSTOMIZATIONS:
        for c in _containers(build(DEPLOY / path)):
            program = (c.get("command") or ["flowtap"])[0]
            if program not in helps:
                assert program == "flowtap-collector" and collector.is_file(), program
                helps[program] = subprocess.run([str(collector), "--help"], capture_output=True,
                                                text=True).stdout
            for e in c.get("env", []):
                if e["name"] not in NOT_FLAGS:
                    assert f"env: {e['name']}" in helps[program], \
                        f"{path}: {e['name']} is not a `{program}` flag"
                    checked += 1
    assert checked >= 4


def test_proxy_runs_with_the_deployment_settings(tmp_path):
    """The base Deployment's environment and a CA directory laid out as a Secret volume is
    (symlinks into ..data, files 0440): the proxy starts, answers the probes' /healthz, and
    serves the CA it was given."""
    ca = tmp_path / "made"
    k8s.flowtap("ca", "init", "--dir", ca)
    mount = tmp_path / "etc-flowtap-ca"
    data = mount / "..2024_08_12_09_23_28.000000001"
    data.mkdir(parents=True)
    for f in ("ca.pem", "ca-key.pem"):
        shutil.copy(ca / f, data / f)
        (data / f).chmod(0o440)
    (mount / "..data").symlink_to(data.name)
    for f in ("ca.pem", "ca-key.pem"):
        (mount / f).symlink_to(f"..data/{f}")

    from support.net import free_port
    port = free_port()
    env = {k: v for k, v in env_values(proxy_container(build(DEPLOY / "base"))).items() if v is not None}
    env["FLOWTAP_CA_DIR"] = str(mount)
    env["FLOWTAP_LISTEN"] = f"127.0.0.1:{port}"
    proc = subprocess.Popen([flowtap_bin(), "proxy"], env=k8s.clean_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        import http.client
        import time
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                assert (resp.status, resp.read().strip()) == (200, b"ok")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "no /healthz"
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/ca.pem")
        assert conn.getresponse().read() == (ca / "ca.pem").read_bytes()
        assert not (mount / "..data" / "new").exists()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert b"created a new CA" not in err
