"""The sidecar recipe (deploy/sidecar): the Kustomize component and its example overlay build with
`kubectl kustomize` and validate, the pieces agree with each other (uid, ports, script path), and
the built manifest, run for real in a network namespace (its init container's environment given
to init-redirect.sh, its flowtap container's args and environment given to flowtap, as the
container's uid), captures an application that has no proxy settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from support import k8s
from support.nginx import JSON_BODY, SMALL_BODY
from support.netns import (  # noqa: F401 - fixtures
    API_NAME, API_V4, CLIENT_V4, EXTRA_TLS_PORT, INIT_SCRIPT, SERVER_NAME, SERVER_V4, SidecarProxy, topo,
)
from support.proxy import REPO_ROOT, run_flowtap

SIDECAR = REPO_ROOT / "deploy" / "sidecar"
EXAMPLE = SIDECAR / "example"
POD_NAME = "demo-7c5d9b8f6-k3m2p"  # one of the example Deployment's pods, as its fieldRefs see it


def kustomize(path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to build the Kustomize manifests (it bundles kustomize)"
    p = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return [d for d in yaml.safe_load_all(p.stdout) if d]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    docs = kustomize(EXAMPLE)
    out = tmp_path_factory.mktemp("sidecar") / "built.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    return docs, out


def by_kind_name(docs, kind, prefix):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, [(d["kind"], d["metadata"]["name"]) for d in docs]
    return found[0]


def container(pod, name):
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}: {[c['name'] for c in pod.get('initContainers', [])]}")


def resolved_env(c, configmaps, namespace) -> dict:
    """A container's environment as the kubelet would give it in a pod POD_NAME of `namespace`:
    envFrom ConfigMaps, then env (values, configMapKeyRef, the downward API's fieldRef, $(VAR)
    references to earlier variables)."""
    env = {}
    for src in c.get("envFrom", []):
        env.update(configmaps[src["configMapRef"]["name"]])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = k8s.downward_value(e["valueFrom"]["fieldRef"]["fieldPath"], POD_NAME, namespace)
        else:
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = configmaps[ref["name"]][ref["key"]]
    return env


def test_manifests_build_and_validate(built):
    docs, path = built
    # From the test venv (tests/requirements.txt), next to this interpreter.
    kv = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    assert os.path.exists(kv), f"{kv} missing: pip install -r tests/requirements.txt"
    p = subprocess.run([kv, "--strict", str(path)], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    kinds = sorted((d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap"
                    else d["metadata"]["name"]) for d in docs)
    assert kinds == [("ConfigMap", "flowtap-sidecar"), ("Deployment", "demo"), ("Deployment", "untouched")]


def test_the_pieces_agree(built):
    docs, _ = built
    cm = by_kind_name(docs, "ConfigMap", "flowtap-sidecar")
    settings = cm["data"]
    demo = by_kind_name(docs, "Deployment", "demo")
    pod, namespace = demo["spec"]["template"]["spec"], demo["metadata"]["namespace"]
    names = [c["name"] for c in pod["initContainers"]]
    assert names == ["flowtap-init", "flowtap"], names
    init, proxy = container(pod, "flowtap-init"), container(pod, "flowtap")
    configmaps = {cm["metadata"]["name"]: settings}

    # The init container runs the script that the tests run (the image installs it there).
    dockerfile = (SIDECAR / "Dockerfile.init").read_text()
    assert f"COPY init-redirect.sh {init['command'][0]}" in dockerfile
    assert init["command"][1:] == ["install"]
    assert init["securityContext"]["runAsUser"] == 0
    assert set(init["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW", "CHOWN"}
    assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]

    # The uid the rules exempt is the uid flowtap runs as, and the application's is another.
    uid = int(settings["FLOWTAP_PROXY_UID"])
    assert proxy["securityContext"]["runAsUser"] == uid
    assert proxy["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != uid

    # The port the rules redirect to is where --mode transparent listens (on loopback, where
    # REDIRECT delivers locally generated connections).
    penv = resolved_env(proxy, configmaps, namespace)
    assert f"transparent@127.0.0.1:{settings['FLOWTAP_PROXY_PORT']}" in penv["FLOWTAP_MODE"].split(",")
    # The probes reach the regular listener's /healthz.
    listen_port = int(penv["FLOWTAP_LISTEN"].rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert proxy[probe]["httpGet"] == {"path": "/healthz", "port": listen_port}, proxy[probe]
    assert proxy["restartPolicy"] == "Always", "a native sidecar, started before the app"
    # The pod's name, namespace and node from the downward API, as deploy/base gives them.
    assert k8s.field_refs(proxy) == k8s.DOWNWARD_VARS
    assert (penv["POD_NAME"], penv["POD_NAMESPACE"]) == (POD_NAME, "demo")
    # The CA copy the init container makes is the directory flowtap reads.
    ienv = resolved_env(init, configmaps, namespace)
    assert ienv["FLOWTAP_CA_DIR"] == penv["FLOWTAP_CA_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert mounts[ienv["FLOWTAP_CA_DIR"]] == {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}[penv["FLOWTAP_CA_DIR"]]
    secret_vol = next(v for v in pod["volumes"] if v["name"] == mounts[ienv["FLOWTAP_CA_FROM"]])
    assert secret_vol["secret"]["secretName"] == "flowtap-ca"
    # The overlay's setting reached the ConfigMap the pod reads.
    assert settings["FLOWTAP_REDIRECT_PORTS"] == "80,443,8443"
    # The opt-out annotation keeps a workload as it was.
    untouched = by_kind_name(docs, "Deployment", "untouched")["spec"]["template"]["spec"]
    assert "initContainers" not in untouched


def test_recipe_runs_in_a_namespace(topo, built, tmp_path):
    """The built manifest, executed: init container, then the flowtap container, then an app."""
    docs, _ = built
    cm = by_kind_name(docs, "ConfigMap", "flowtap-sidecar")
    demo = by_kind_name(docs, "Deployment", "demo")
    pod, namespace = demo["spec"]["template"]["spec"], demo["metadata"]["namespace"]
    configmaps = {cm["metadata"]["name"]: cm["data"]}
    init_env = resolved_env(container(pod, "flowtap-init"), configmaps, namespace)
    proxy_c = container(pod, "flowtap")
    proxy_env = resolved_env(proxy_c, configmaps, namespace)
    uid = int(init_env["FLOWTAP_PROXY_UID"])
    app_uid = pod["securityContext"]["runAsUser"]

    # The CA Secret, as a Secret volume holds it: files owned by root.
    secret = topo.workdir / "ca-secret"
    r = run_flowtap("ca", "init", "--dir", secret)
    assert r.returncode == 0, r.stderr
    for f in secret.iterdir():
        f.chmod(0o400)
    ca_copy = topo.workdir / "ca-emptydir"
    ca_copy.mkdir(mode=0o777)
    # The pod's paths, mapped into the test's work directory.
    paths = {init_env["FLOWTAP_CA_FROM"]: str(secret), init_env["FLOWTAP_CA_DIR"]: str(ca_copy)}
    init_env = {k: paths.get(v, v) for k, v in init_env.items()}
    proxy_env = {k: paths.get(v, v) for k, v in proxy_env.items()}

    # 1. The init container. Kubernetes sets KUBERNETES_SERVICE_HOST in every container.
    r = topo.ns(topo.client, "sh", INIT_SCRIPT, *container(pod, "flowtap-init")["command"][1:],
                env={"PATH": os.environ["PATH"], "KUBERNETES_SERVICE_HOST": API_V4, **init_env}, check=False)
    try:
        assert r.returncode == 0, r.stderr.decode()
        key = ca_copy / "ca-key.pem"
        st = key.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o600)

        # 2. The flowtap container (plus trust in the test servers' CA, which a real one gets
        #    from the system roots).
        env = dict(proxy_env, FLOWTAP_UPSTREAM_CA=str(topo.pki.ca))
        proxy = SidecarProxy(topo, "sidecar", proxy_c["args"], env, uid=uid,
                             health_port=int(proxy_env["FLOWTAP_LISTEN"].rsplit(":", 1)[1]))
        try:
            proxy.start()
            # 3. The app: its own uid, no proxy settings, the bundle (system roots + flowtap CA).
            bundle = topo.workdir / "ca-certificates.crt"
            r = run_flowtap("ca", "export", "--bundle", "--ca-dir", secret)
            assert r.returncode == 0, r.stderr
            bundle.write_bytes(r.stdout)
            bundle.chmod(0o644)
            got = topo.curl("--cacert", bundle, "--http2", f"https://{SERVER_NAME}/json", uid=app_uid).check()
            assert got.out == JSON_BODY
            extra = topo.curl("--cacert", bundle, f"https://{SERVER_NAME}:{EXTRA_TLS_PORT}/small", uid=app_uid).check()
            assert extra.out == SMALL_BODY, "the overlay's extra port 8443 is captured"
            plain = topo.curl(f"http://{SERVER_NAME}/echo?from=app", uid=app_uid).check().json()
            assert plain["headers"]["x-front-client"] == CLIENT_V4
            # The API server is not captured: its own certificate reaches the app.
            api = topo.curl("--cacert", topo.pki.ca, f"https://{API_NAME}/small", uid=app_uid).check()
            assert api.out == SMALL_BODY

            recs = proxy.records(3)
            urls = sorted(r["request"]["url"] for r in recs)
            assert urls == sorted([f"https://{SERVER_NAME}/json", f"https://{SERVER_NAME}:{EXTRA_TLS_PORT}/small",
                                   f"http://{SERVER_NAME}/echo?from=app"]), json.dumps(recs)[:3000]
            for rec in recs:
                assert rec["mode"] == "transparent" and rec["server"]["ip"] == SERVER_V4
                assert rec["response"]["status"] == 200 and "error" not in rec
            # The leaf the app trusted was signed by the CA from the Secret.
            assert proxy.ca_path.read_bytes() == (secret / "ca.pem").read_bytes()
        finally:
            if proxy.running:
                assert proxy.stop(timeout=15) == 0, proxy.stderr_text()[-3000:]
            assert "panicked at" not in proxy.stderr_text()
    finally:
        removed = topo.init_redirect("remove")
        assert removed.returncode == 0, removed.stderr.decode()
    rules = topo.nat_rules()
    assert "FLOWTAP" not in rules, rules
