"""`flowtap k8s attach --transparent`, taken literally: the patch it writes for a sample workload is
applied with `kubectl patch --local`, and the patched pod is then run for real in a network
namespace of the test's own (support/netns.py): the flowtap-init container's command and
environment through deploy/sidecar/init-redirect.sh, the flowtap container's args, environment
and uid through the real binary, and the application's uid and trust variables (the ConfigMap's
files where its volume is mounted) for curl and Python requests with no proxy configured, against
nginx on the other side of a veth. The records must say what happened."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from support import k8s
from support.k8s import MOUNT_DIR, SAMPLES, container, init_container
from support.netns import (  # noqa: F401 - topo is a fixture
    API_NAME, API_V4, CLIENT_V4, EXTRA_TLS_PORT, INIT_SCRIPT, SERVER_NAME, SERVER_V4, SidecarProxy, topo,
)
from support.nginx import JSON_BODY, SMALL_BODY
from support.proxy import REPO_ROOT, clean_env, run_flowtap

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SAMPLE, REF = SAMPLES / "reporter.yaml", "deployment/reporter"
POD_NAME = "reporter-6b8d9f7c5d-x2k4q"  # one of the Deployment's pods, as its fieldRefs see it
DOCKERFILE_INIT = k8s.DEPLOY / "sidecar" / "Dockerfile.init"


def readme_jq() -> str:
    """The jq program of the README's `attach --transparent` walkthrough."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("### `attach --transparent`", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    (program,) = re.findall(r"\| jq -cR '([^']+)'", block)
    return program


def _mapped(value: str, paths: dict[str, Path]) -> str:
    """A path in the pod, moved to where the test keeps that volume."""
    for pod_path, local in paths.items():
        if value == pod_path or value.startswith(pod_path + "/"):
            return str(local) + value[len(pod_path):]
    return value


def _paths(c: dict, volumes: dict[str, Path]) -> dict[str, Path]:
    """mountPath -> local directory, for the container's mounts of the volumes the test made."""
    return {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])
            if m["name"] in volumes and "subPath" not in m}


def _env(c: dict, volumes: dict[str, Path], namespace: str) -> dict:
    """The container's environment as the kubelet gives it, in a pod of `namespace`: plain values
    (paths moved to the test's volumes) and the downward API's fields; nothing else is expected."""
    paths = _paths(c, volumes)
    out = {}
    for e in c.get("env", []):
        if "valueFrom" in e:
            assert list(e["valueFrom"]) == ["fieldRef"], f"{c['name']}: {e}"
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            out[e["name"]] = k8s.downward_value(path, POD_NAME, namespace)
        else:
            out[e["name"]] = _mapped(e.get("value", ""), paths)
    return out


def _as(uid: int, *argv) -> list:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]


def test_attached_pod_runs_and_is_captured(topo, tmp_path):
    # The CA Secret's files, as a Secret volume holds them (root's, 0400); attach trusts its cert.
    secret = topo.workdir / "ca-secret"
    r = run_flowtap("ca", "init", "--dir", secret)
    assert r.returncode == 0, r.stderr
    for f in secret.iterdir():
        f.chmod(0o400)
    out = tmp_path / "attach"
    k8s.flowtap("k8s", "attach", REF, "-f", SAMPLE, "--transparent", "--ca-cert", secret / "ca.pem",
                "--system-bundle", SYSTEM_BUNDLE, "--out", out)
    cm = json.loads((out / "configmap.json").read_text())
    pod = k8s.kubectl_patch(SAMPLE, out / "patch.json")
    spec = k8s.pod_spec(pod)
    namespace = pod["metadata"]["namespace"]
    init, sidecar, app = init_container(pod, "flowtap-init"), init_container(pod, "flowtap"), container(pod, "reporter")

    # The pod's volumes, as directories of the test: the Secret, the emptyDirs, the ConfigMap.
    ca_copy = topo.workdir / "flowtap-proxy-ca"
    tmp = topo.workdir / "flowtap-tmp"
    trust = topo.workdir / "flowtap-ca"
    for d in (ca_copy, tmp, trust):
        d.mkdir(mode=0o777)
        d.chmod(0o777)
    for key, text in cm["data"].items():
        (trust / key).write_text(text)
        (trust / key).chmod(0o644)
    volumes = {"flowtap-ca-secret": secret, "flowtap-proxy-ca": ca_copy, "flowtap-tmp": tmp,
               "flowtap-ca": trust}
    assert {v["name"] for v in spec["volumes"]} >= set(volumes)

    # 1. flowtap-init: the script its image installs at the command's path, its environment,
    #    as root, with the API server's address, which Kubernetes sets in every container.
    assert f"COPY init-redirect.sh {init['command'][0]}" in DOCKERFILE_INIT.read_text()
    assert init["securityContext"]["runAsUser"] == 0
    init_env = _env(init, volumes, namespace)
    r = topo.ns(topo.client, "sh", INIT_SCRIPT, *init["command"][1:], check=False,
                env={"PATH": os.environ["PATH"], "KUBERNETES_SERVICE_HOST": API_V4, **init_env})
    proxy = None
    try:
        assert r.returncode == 0, r.stderr.decode()
        uid = sidecar["securityContext"]["runAsUser"]
        assert int(init_env["FLOWTAP_PROXY_UID"]) == uid == 10001
        key = ca_copy / "ca-key.pem"
        assert (key.stat().st_uid, key.stat().st_mode & 0o777) == (uid, 0o600)

        # 2. The flowtap container: its args and environment (and trust in the test servers'
        #    CA, which a real one has among its public roots), as its uid.
        penv = _env(sidecar, volumes, namespace)
        assert (penv["POD_NAME"], penv["POD_NAMESPACE"]) == (POD_NAME, "billing")
        penv["FLOWTAP_UPSTREAM_CA"] = str(topo.pki.ca)
        health = int(penv["FLOWTAP_LISTEN"].rsplit(":", 1)[1])
        assert sidecar["startupProbe"]["httpGet"]["port"] == health
        proxy = SidecarProxy(topo, "attached", sidecar["args"], penv, uid=uid, health_port=health)
        proxy.start()
        assert proxy.ca_path.read_bytes() == (secret / "ca.pem").read_bytes()

        # 3. The application: the pod's uid, no proxy variables, its trust variables pointing
        #    into the ConfigMap's files.
        app_uid = spec["securityContext"]["runAsUser"]
        app_env = _env(app, volumes, namespace)
        assert not [v for v in app_env if v.lower().endswith("_proxy")], app_env
        assert app_env["CURL_CA_BUNDLE"] == app_env["REQUESTS_CA_BUNDLE"] == str(trust / "ca-certificates.crt")
        env = clean_env({**app_env, "PATH": os.environ["PATH"]})

        def curl(*args) -> bytes:
            p = topo.ns(topo.client, *_as(app_uid, "curl", "-sS", "--fail", "--max-time", "20", *args),
                        env=env, check=False)
            assert p.returncode == 0, p.stderr.decode()
            return p.stdout

        assert curl("--http2", f"https://{SERVER_NAME}/json") == JSON_BODY
        assert curl(f"http://{SERVER_NAME}/small") == SMALL_BODY
        code = ("import requests; r = requests.get('https://%s/small', timeout=20); "
                "r.raise_for_status(); print(len(r.content))") % SERVER_NAME
        p = topo.ns(topo.client, *_as(app_uid, sys.executable, "-c", code), env=env, check=False)
        assert p.returncode == 0 and p.stdout.decode().strip() == str(len(SMALL_BODY)), p.stderr.decode()

        # A program that reads only the distribution's bundle file: the ConfigMap's bundle
        # mounted there (subPath), as attach mounts it, in a mount namespace of its own.
        distro = next(m["mountPath"] for m in app["volumeMounts"]
                      if m.get("subPath") == "ca-certificates.crt" and Path(m["mountPath"]).is_file())
        script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        p = topo.ns(topo.client, "unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    script, "sh", trust / "ca-certificates.crt", distro,
                    *_as(app_uid, "curl", "-sS", "--fail", "--max-time", "20", f"https://{SERVER_NAME}/small"),
                    env=clean_env({"PATH": os.environ["PATH"]}), check=False)
        assert p.returncode == 0 and p.stdout == SMALL_BODY, p.stderr.decode()

        # Not captured: a port attach did not redirect, and the API server. Both show the
        # server's own certificate.
        assert curl("--cacert", topo.pki.ca, f"https://{SERVER_NAME}:{EXTRA_TLS_PORT}/small") == SMALL_BODY
        assert curl("--cacert", topo.pki.ca, f"https://{API_NAME}/small") == SMALL_BODY

        recs = proxy.records(4)
        by_url = {}
        for rec in recs:
            by_url.setdefault(rec["request"]["url"], []).append(rec)
        assert sorted(by_url) == [f"http://{SERVER_NAME}/small", f"https://{SERVER_NAME}/json",
                                  f"https://{SERVER_NAME}/small"], json.dumps(recs)[:3000]
        assert len(by_url[f"https://{SERVER_NAME}/small"]) == 2, "curl and requests"
        for rec in recs:
            assert rec["kind"] == "http" and rec["mode"] == "transparent", rec
            assert rec["server"]["host"] == SERVER_NAME and rec["server"]["ip"] == SERVER_V4, rec["server"]
            assert rec["client"]["ip"] == CLIENT_V4
            assert rec["response"]["status"] == 200 and "error" not in rec, rec
        (json_rec,) = by_url[f"https://{SERVER_NAME}/json"]
        assert json_rec["server"]["port"] == 443 and json_rec["tls"]["intercepted"] is True
        assert json_rec["response"]["body_size"] == len(JSON_BODY)
        assert json_rec["request"]["http_version"] == "HTTP/2.0"
        (plain,) = by_url[f"http://{SERVER_NAME}/small"]
        assert plain["server"]["port"] == 80 and "tls" not in plain
        assert plain["response"]["body_size"] == len(SMALL_BODY)
        agents = sorted(r["request"]["headers"]["user-agent"].split("/")[0] for r in by_url[f"https://{SERVER_NAME}/small"])
        assert agents == ["curl", "python-requests"]

        # The README's jq over what `kubectl logs -c flowtap` shows: stdout and stderr mixed.
        logs = proxy.stdout_path.read_bytes() + proxy.stderr_path.read_bytes()
        p = subprocess.run(["jq", "-cR", readme_jq()], input=logs, capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr.decode()
        rows = [json.loads(line) for line in p.stdout.decode().splitlines()]
        assert {(r["mode"], r["url"], r["status"]) for r in rows} == {
            ("transparent", url, 200) for url in by_url}
    finally:
        if proxy is not None and proxy.running:
            assert proxy.stop(timeout=15) == 0, proxy.stderr_text()[-3000:]
        if proxy is not None:
            assert "panicked at" not in proxy.stderr_text()
        removed = topo.ns(topo.client, "sh", INIT_SCRIPT, "remove", check=False,
                          env={"PATH": os.environ["PATH"], "FLOWTAP_IPV6": init_env.get("FLOWTAP_IPV6", "off")})
        assert removed.returncode == 0, removed.stderr.decode()
    rules = topo.nat_rules()
    assert "FLOWTAP" not in rules, rules
