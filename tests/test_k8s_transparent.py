"""`flowtap k8s attach --transparent` / `detach` offline: the sidecar of deploy/sidecar/component
added to the sample workloads, applied with the real `kubectl patch --local --type strategic`,
checked field by field, against the component as `kubectl kustomize` builds it, and with
`kubernetes-validate --strict`; attach twice changes nothing; detach gives back the original;
the pods it cannot be right for are refused. (--apply: test_k8s_apply.py; the patched manifest
run for real in a network namespace: test_k8s_transparent_run.py.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from support import k8s
from support.k8s import (BUNDLE, BUNDLE_VARS, DOWNWARD_VARS, MOUNT_DIR, SAMPLE_REFS, SAMPLES, container,
                         env_of, field_refs, init_container, mounts_of)

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
COMPONENT = k8s.DEPLOY / "sidecar" / "component"
EXAMPLE = k8s.DEPLOY / "sidecar" / "example"
VERSION = re.search(r'^version = "(.+)"', (k8s.REPO_ROOT / "Cargo.toml").read_text(), re.M).group(1)
IMAGE, INIT_IMAGE = f"flowtap:{VERSION}", f"flowtap-init:{VERSION}"
PROXY_VARS = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
              "NODE_USE_ENV_PROXY"]
SIDECAR_VOLUMES = ["flowtap-ca-secret", "flowtap-proxy-ca", "flowtap-run", "flowtap-tmp"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    return k8s.new_ca(tmp_path_factory)


@pytest.fixture(scope="module")
def attach(ca, tmp_path_factory):
    """attach(sample_path, ref, *flags) -> (configmap, patch_path, result, result_path, stderr)."""
    base = tmp_path_factory.mktemp("k8s-transparent")
    counter = iter(range(10_000))

    def run(sample: Path, ref: str, *flags):
        out = base / f"out{next(counter)}"
        r = k8s.flowtap("k8s", "attach", ref, "-f", sample, "--transparent", "--ca-cert", ca,
                        "--system-bundle", SYSTEM_BUNDLE, "--out", out, *flags)
        cm = json.loads((out / "configmap.json").read_text())
        patch = out / "patch.json"
        result = k8s.kubectl_patch(sample, patch)
        result_path = out / "result.json"
        result_path.write_text(json.dumps(result))
        return cm, patch, result, result_path, r.stderr

    return run


def refused(sample: Path, ref: str, ca: Path, out: Path, *flags) -> str:
    """attach --transparent that must be refused: exit 1, nothing written to `out`; returns
    stderr."""
    r = k8s.flowtap("k8s", "attach", ref, "-f", sample, "--transparent", "--ca-cert", ca,
                    "--system-bundle", SYSTEM_BUNDLE, "--out", out, *flags, check=False)
    assert r.returncode == 1, f"not refused ({r.returncode}):\n{r.stderr}"
    assert not out.exists(), "a refused attach writes nothing"
    assert f"{ref} in namespace" in r.stderr and "refused:" in r.stderr, r.stderr
    return r.stderr


def values(c: dict) -> dict:
    """name -> value of a container's plain env entries. Every entry attach writes is a plain
    value but the downward API's (field_refs): no reference to a ConfigMap is left."""
    out = {}
    for e in c.get("env", []):
        if "valueFrom" in e:
            assert list(e["valueFrom"]) == ["fieldRef"], e
            continue
        out[e["name"]] = e.get("value", "")
    return out


def edited(sample: str, tmp_path: Path, change) -> Path:
    """A copy of a sample with `change(doc)` applied."""
    doc = yaml.safe_load((SAMPLES / sample).read_text())
    change(doc)
    path = tmp_path / sample
    path.write_text(yaml.safe_dump(doc))
    return path


# --- the velero-like Deployment, field by field ---------------------------------------------


def test_velero_gets_the_sidecar_and_the_trust(attach, ca):
    sample = SAMPLES / "velero.yaml"
    original = k8s.kubectl_local(sample)
    cm, _, result, _, stderr = attach(sample, "deployment/velero")

    # The same ConfigMap as the proxy variant: the system roots, then the flowtap CA.
    assert cm["metadata"]["name"] == "flowtap-ca-deployment-velero"
    assert cm["metadata"]["namespace"] == "velero"
    assert cm["data"]["flowtap-ca.pem"].strip() == ca.read_text().strip()
    assert cm["data"]["ca-certificates.crt"].endswith(cm["data"]["flowtap-ca.pem"])

    # The application: trust variables and mounts, no proxy variables.
    velero = container(result, "velero")
    env = env_of(velero)
    for var in BUNDLE_VARS:
        assert env[var] == {"name": var, "value": BUNDLE}
    assert env["NODE_EXTRA_CA_CERTS"] == {"name": "NODE_EXTRA_CA_CERTS",
                                          "value": f"{MOUNT_DIR}/flowtap-ca.pem"}
    for var in PROXY_VARS:
        assert var not in env, f"{var} is set: the transparent variant needs no proxy variables"
    orig = container(original, "velero")
    assert [e for e in velero["env"] if e["name"] in env_of(orig)] == orig["env"]
    mounts = mounts_of(velero)
    assert mounts[MOUNT_DIR] == {"name": "flowtap-ca", "mountPath": MOUNT_DIR, "readOnly": True}
    assert mounts["/etc/ssl/certs/ca-certificates.crt"]["subPath"] == "ca-certificates.crt"
    for key in ("image", "command", "args", "ports", "resources"):
        assert velero[key] == orig[key], key

    # The init containers: the pod's own first (run before the rules, as before), then the sidecar.
    spec = k8s.pod_spec(result)
    assert [c["name"] for c in spec["initContainers"]] == ["velero-plugin-for-aws", "flowtap-init", "flowtap"]
    assert spec["initContainers"][0] == k8s.pod_spec(original)["initContainers"][0]
    assert "init container(s) velero-plugin-for-aws run before flowtap-init" in stderr

    init = init_container(result, "flowtap-init")
    assert init["image"] == INIT_IMAGE
    assert init["command"] == ["/usr/local/bin/init-redirect.sh", "install"]
    assert "envFrom" not in init, "no ConfigMap flowtap-sidecar: the settings are plain values"
    assert values(init) == {
        "FLOWTAP_PROXY_UID": "10001", "FLOWTAP_PROXY_PORT": "15001",
        "FLOWTAP_REDIRECT_PORTS": "80,443", "FLOWTAP_IPV6": "off",
        "FLOWTAP_MODE": "regular,transparent@127.0.0.1:15001",
        "FLOWTAP_CA_FROM": "/flowtap/ca-secret", "FLOWTAP_CA_DIR": "/flowtap/ca",
    }
    assert field_refs(init) == {}
    sc = init["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (0, 0, False)
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "CHOWN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]} == {
        "/flowtap/ca-secret": "flowtap-ca-secret", "/flowtap/ca": "flowtap-proxy-ca", "/run": "flowtap-run"}
    assert "restartPolicy" not in init, "runs once"

    proxy = init_container(result, "flowtap")
    assert proxy["image"] == IMAGE
    assert proxy["restartPolicy"] == "Always", "a native sidecar"
    assert proxy["args"] == ["proxy"]
    assert values(proxy) == {
        "FLOWTAP_LISTEN": "0.0.0.0:15000", "FLOWTAP_MODE": "regular,transparent@127.0.0.1:15001",
        "FLOWTAP_CA_DIR": "/flowtap/ca", "FLOWTAP_OUTPUT": "jsonl", "FLOWTAP_GRACE": "5",
        "RUST_LOG": "info",
    }
    # The pod's name, namespace and node from the downward API, as deploy/base gives them (the
    # OTLP resource attributes k8s.pod.name & co.).
    assert field_refs(proxy) == DOWNWARD_VARS
    assert [e for e in proxy["env"] if e["name"] in DOWNWARD_VARS] == [
        {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in DOWNWARD_VARS.items()]
    sc = proxy["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (10001, 10001, True)
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert proxy[probe]["httpGet"] == {"path": "/healthz", "port": 15000}, probe
    assert proxy["ports"] == [{"name": "flowtap", "containerPort": 15000, "protocol": "TCP"}]

    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["flowtap-ca"] == {"name": "flowtap-ca",
                                     "configMap": {"name": "flowtap-ca-deployment-velero"}}
    assert volumes["flowtap-ca-secret"] == {
        "name": "flowtap-ca-secret", "secret": {"secretName": "flowtap-ca", "defaultMode": 0o400}}
    for name in ("flowtap-proxy-ca", "flowtap-run"):
        assert volumes[name]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    assert volumes["flowtap-tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}
    kept = [v for v in spec["volumes"] if not v["name"].startswith("flowtap-")]
    assert kept == k8s.pod_spec(original)["volumes"]

    meta = k8s.pod_meta(result)
    assert meta["labels"]["flowtap.dev/attached"] == "transparent", "not admitted by the shared proxy's policy"
    assert meta["annotations"]["flowtap.dev/ca-sha256"] == cm["metadata"]["annotations"]["flowtap.dev/ca-sha256"]
    # velero announces its own metrics to Prometheus: those stay.
    assert meta["annotations"]["prometheus.io/port"] == "8085"
    assert "prometheus.io/path" not in meta["annotations"]
    assert 'the pod already has prometheus.io/port: "8085"' in stderr

    record = k8s.record_of(result)
    assert record["variant"] == "transparent" and "proxy" not in record
    assert record["initContainers"] == {"flowtap": None, "flowtap-init": None}
    assert record["volumes"] == {name: None for name in ["flowtap-ca", *SIDECAR_VOLUMES]}
    assert set(record["containers"]["velero"]["env"]) == {*BUNDLE_VARS, "NODE_EXTRA_CA_CERTS"}

    # What the pods need, and how to make the Secret.
    assert "the pods need the CA Secret flowtap-ca (ca.pem, ca-key.pem) in namespace velero" in stderr
    assert "flowtap k8s ca-secret --ca-dir DIR --name flowtap-ca -n velero | kubectl apply" in stderr
    assert "the transparent sidecar (flowtap:" in stderr and "TCP to ports 80,443" in stderr
    k8s.validate_strict(result, cm)


def test_pod_without_metrics_annotations_gets_the_sidecars(attach):
    _, _, result, _, _ = attach(SAMPLES / "two-containers.yaml", "deployment/shop")
    ann = k8s.pod_meta(result)["annotations"]
    assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"], ann["prometheus.io/path"]) == (
        "true", "15000", "/metrics")
    # Both containers trust the CA (no -c), neither gets proxy variables.
    for name in ("web", "sidecar"):
        env = env_of(container(result, name))
        assert env["SSL_CERT_FILE"]["value"] == BUNDLE
        assert not set(PROXY_VARS) & set(env)
    assert [c["name"] for c in k8s.pod_spec(result)["initContainers"]] == ["flowtap-init", "flowtap"]
    assert "$setElementOrder/initContainers" not in json.dumps(result)


def test_flags_reach_the_containers(attach):
    _, _, result, _, stderr = attach(
        SAMPLES / "velero.yaml", "deployment/velero", "--redirect-ports", "80,443", "--redirect-ports",
        "8443", "--exclude-cidrs", "10.96.0.0/12,fd00:10:96::/112", "--ipv6", "on", "--proxy-uid",
        "20001", "--image", "registry.example.com/flowtap:0.1.0", "--init-image",
        "registry.example.com/flowtap-init:0.1.0", "--ca-secret", "velero/flowtap-ca-2024")
    init, proxy = init_container(result, "flowtap-init"), init_container(result, "flowtap")
    ienv = values(init)
    assert ienv["FLOWTAP_PROXY_UID"] == "20001"
    assert ienv["FLOWTAP_REDIRECT_PORTS"] == "80,443,8443"
    assert ienv["FLOWTAP_EXCLUDE_CIDRS"] == "10.96.0.0/12,fd00:10:96::/112"
    assert ienv["FLOWTAP_IPV6"] == "on"
    modes = "regular,transparent@127.0.0.1:15001,transparent@[::1]:15001"
    assert ienv["FLOWTAP_MODE"] == values(proxy)["FLOWTAP_MODE"] == modes
    assert proxy["securityContext"]["runAsUser"] == proxy["securityContext"]["runAsGroup"] == 20001
    assert init["securityContext"]["runAsUser"] == 0
    assert proxy["image"] == "registry.example.com/flowtap:0.1.0"
    assert init["image"] == "registry.example.com/flowtap-init:0.1.0"
    secret = next(v for v in k8s.pod_spec(result)["volumes"] if v["name"] == "flowtap-ca-secret")
    assert secret["secret"]["secretName"] == "flowtap-ca-2024"
    assert "the pods need the CA Secret flowtap-ca-2024" in stderr
    assert "from every uid but 20001" in stderr and "and 10.96.0.0/12,fd00:10:96::/112" in stderr
    k8s.validate_strict(result)


def test_jvm_gets_the_truststore_and_no_proxy_properties(attach):
    _, _, result, _, _ = attach(SAMPLES / "statefulset.yaml", "statefulset/connect")
    jto = env_of(container(result, "connect"))["JAVA_TOOL_OPTIONS"]["value"]
    assert jto == ("-Xmx512m -XX:+UseG1GC -Djavax.net.ssl.trustStore=/etc/flowtap-ca/truststore.p12 "
                   "-Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=changeit")
    assert "proxyHost" not in jto


def test_native_sidecars_and_regular_init_containers(attach):
    """reporter.yaml: a regular init container runs before the rules (not captured); a native
    sidecar of the application's keeps running, so its new connections are captured: said."""
    sample = SAMPLES / "reporter.yaml"
    original = k8s.kubectl_local(sample)
    _, patch, result, _, stderr = attach(sample, "deployment/reporter")
    spec = k8s.pod_spec(result)
    assert [c["name"] for c in spec["initContainers"]] == ["migrate", "log-shipper", "flowtap-init", "flowtap"]
    assert spec["initContainers"][:2] == k8s.pod_spec(original)["initContainers"]
    assert json.loads(patch.read_text())["spec"]["template"]["spec"]["$setElementOrder/initContainers"] == [
        {"name": n} for n in ["migrate", "log-shipper", "flowtap-init", "flowtap"]]
    assert "init container(s) migrate run before flowtap-init" in stderr
    assert "init container log-shipper is a sidecar (restartPolicy: Always)" in stderr
    assert spec["securityContext"]["runAsUser"] == 1000, "the app's uid, not the proxy's"
    k8s.validate_strict(result)


def test_proxy_variables_the_app_sets_are_noted(attach):
    _, _, result, _, stderr = attach(SAMPLES / "cronjob.yaml", "cronjob/backup")
    assert "container restic sets HTTPS_PROXY" in stderr
    env = env_of(container(result, "restic"))
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.corp.example:3128", "left alone"


# --- the component and attach agree ---------------------------------------------------------


def test_attach_adds_what_the_component_adds(attach, tmp_path):
    """deploy/sidecar/example built by `kubectl kustomize` (the component with the example's
    setting, ports 80,443,8443) and the example's app attached with the same settings give the
    same init containers (env resolved through the ConfigMap), volumes and annotations."""
    r = subprocess.run([k8s.kubectl(), "kustomize", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    built = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "demo")
    built_spec = built["spec"]["template"]["spec"]

    app = tmp_path / "app.yaml"
    demo = next(d for d in yaml.safe_load_all((EXAMPLE / "app.yaml").read_text())
                if d["metadata"]["name"] == "demo")
    app.write_text(yaml.safe_dump(demo))
    _, _, result, _, _ = attach(app, "deployment/demo", "-n", "demo",
                                "--redirect-ports", settings["FLOWTAP_REDIRECT_PORTS"])
    ours = k8s.pod_spec(result)

    def resolved(c: dict) -> dict:
        env = {k: v for k, v in settings.items()} if c.get("envFrom") else {}
        for e in c.get("env", []):
            if "configMapKeyRef" in e.get("valueFrom", {}):
                ref = e["valueFrom"]["configMapKeyRef"]
                env[e["name"]] = settings[ref["key"]]
            elif "valueFrom" in e:
                env[e["name"]] = e["valueFrom"]  # the downward API: the same reference
            else:
                env[e["name"]] = e["value"]
        return {k: v for k, v in env.items() if v != ""}

    assert [c["name"] for c in built_spec["initContainers"]] == [c["name"] for c in ours["initContainers"]]
    for theirs, mine in zip(built_spec["initContainers"], ours["initContainers"]):
        assert resolved(theirs) == resolved(mine), theirs["name"]
        rest = lambda c: {k: v for k, v in c.items() if k not in ("env", "envFrom")}  # noqa: E731
        assert rest(theirs) == rest(mine), theirs["name"]
    assert [v for v in built_spec["volumes"] if v["name"] in SIDECAR_VOLUMES] == \
           [v for v in ours["volumes"] if v["name"] in SIDECAR_VOLUMES]
    built_ann = built["spec"]["template"]["metadata"]["annotations"]
    assert {k: v for k, v in k8s.pod_meta(result)["annotations"].items() if k.startswith("prometheus.io/")} == built_ann


def test_flag_defaults_are_the_components():
    """The defaults --help names for the sidecar settings are the component's literals, and the
    image defaults are the tags deploy/ uses."""
    help_text = " ".join(k8s.flowtap("k8s", "attach", "--help").stdout.split())
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    literals = dict(l.split("=", 1) for l in kustomization["configMapGenerator"][0]["literals"])
    for flag, key in [("REDIRECT_PORTS", "FLOWTAP_REDIRECT_PORTS"), ("IPV6", "FLOWTAP_IPV6"),
                      ("PROXY_UID", "FLOWTAP_PROXY_UID")]:
        said = f"Default: the component's, {literals[key]} [env: FLOWTAP_K8S_{flag}="
        assert said in help_text, said
    assert f"[default: {IMAGE}]" in help_text and f"[default: {INIT_IMAGE}]" in help_text
    example = yaml.safe_load((EXAMPLE / "kustomization.yaml").read_text())
    assert {i["name"]: i["newTag"] for i in example["images"]} == {"flowtap": VERSION, "flowtap-init": VERSION}


# --- attach twice, detach, the other variant ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLE_REFS))
def test_attach_twice_changes_nothing_and_detach_restores(attach, name, tmp_path):
    k8s.check_attach_twice_and_detach(attach, name, tmp_path / "detach",
                                      "was already attached (with the transparent sidecar)")


def test_reattach_with_other_settings_updates_in_place(attach, tmp_path):
    sample = SAMPLES / "reporter.yaml"
    original = k8s.kubectl_local(sample)
    _, _, first, first_path, _ = attach(sample, "deployment/reporter", "--ipv6", "on",
                                        "--exclude-cidrs", "10.0.0.0/8")
    _, _, second, second_path, _ = attach(first_path, "deployment/reporter", "--redirect-ports", "443")
    ienv = values(init_container(second, "flowtap-init"))
    assert ienv["FLOWTAP_REDIRECT_PORTS"] == "443"
    assert ienv["FLOWTAP_IPV6"] == "off"
    assert "FLOWTAP_EXCLUDE_CIDRS" not in ienv, "a setting no longer given is gone, not left over"
    assert values(init_container(second, "flowtap"))["FLOWTAP_MODE"] == "regular,transparent@127.0.0.1:15001"
    assert [c["name"] for c in k8s.pod_spec(second)["initContainers"]] == [
        "migrate", "log-shipper", "flowtap-init", "flowtap"]
    assert k8s.record_of(second) == k8s.record_of(first), "the originals are kept"
    restored = k8s.detach(second_path, "deployment/reporter", tmp_path / "d")
    assert k8s.normalise(restored) == k8s.normalise(original)


def test_the_other_variant_is_refused(attach, ca, tmp_path):
    # Attached to the shared proxy (cronjob-attached.yaml): no transparent attach on top.
    stderr = refused(SAMPLES / "cronjob-attached.yaml", "cronjob/backup", ca, tmp_path / "r")
    assert "it is attached to the shared proxy (--proxy); detach it first (flowtap k8s detach cronjob/backup -n backup)" in stderr
    # Attached transparently: no proxy attach on top.
    _, _, _, attached, _ = attach(SAMPLES / "velero.yaml", "deployment/velero")
    r = k8s.flowtap("k8s", "attach", "deployment/velero", "-f", attached, "--proxy",
                    "http://flowtap.flowtap.svc:8080", "--ca-cert", ca, "--system-bundle",
                    SYSTEM_BUNDLE, "--out", tmp_path / "out", check=False)
    assert r.returncode == 1, r.stderr
    assert "it is attached to the transparent sidecar (--transparent); detach it first" in r.stderr
    assert not (tmp_path / "out").exists()


# --- refusals -------------------------------------------------------------------------------


def _spec(doc):
    return doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("change,flags,message", [
    (lambda d: _spec(d).update(hostNetwork=True), [],
     "the pod uses hostNetwork: true; the init container's iptables rules would redirect the node's own connections"),
    (lambda d: _spec(d).update(securityContext={"runAsUser": 10001}), [],
     "container velero runs as uid 10001, the proxy's: its connections would not be redirected"),
    (lambda d: _spec(d)["containers"][0].update(securityContext={"runAsUser": 2000}), ["--proxy-uid", "2000"],
     "container velero runs as uid 2000, the proxy's"),
    (lambda d: _spec(d)["initContainers"].append({"name": "shipper", "image": "x", "restartPolicy": "Always",
                                                  "securityContext": {"runAsUser": 10001}}), [],
     "container shipper runs as uid 10001, the proxy's"),
    (lambda d: _spec(d)["containers"][0]["ports"].append({"containerPort": 15000}), [],
     "container velero declares port 15000, where the flowtap sidecar listens"),
    (lambda d: _spec(d)["containers"][0]["ports"].append({"containerPort": 15001}), [],
     "container velero declares port 15001"),
    (lambda d: _spec(d)["initContainers"].append({"name": "flowtap", "image": "flowtap"}), [],
     "it already has a container named flowtap that flowtap k8s attach did not add (deploy/sidecar/component applied?)"),
    (lambda d: _spec(d)["volumes"].append({"name": "flowtap-run", "emptyDir": {}}), [],
     "it already has a volume named flowtap-run"),
    (lambda d: d["spec"]["template"]["metadata"]["annotations"].update({"sidecar.istio.io/inject": "true"}), [],
     'its pod annotations ask for a service-mesh sidecar (sidecar.istio.io/inject: "true")'),
    (lambda d: _spec(d)["containers"].append({"name": "linkerd-proxy", "image": "x"}), [],
     "it has the service-mesh container linkerd-proxy"),
    (lambda d: _spec(d).update(os={"name": "windows"}), [], "the pod runs on Windows, which has no iptables"),
], ids=["hostNetwork", "pod-uid", "container-uid-flag", "native-sidecar-uid", "port-15000", "port-15001",
        "component-applied", "volume-name", "istio", "linkerd", "windows"])
def test_refusals(ca, tmp_path, change, flags, message):
    stderr = refused(edited("velero.yaml", tmp_path, change), "deployment/velero", ca,
                     tmp_path / "out", *flags)
    assert message in stderr


def test_every_reason_at_once(ca, tmp_path):
    def change(d):
        _spec(d).update(hostNetwork=True, securityContext={"runAsUser": 10001})
    stderr = refused(edited("velero.yaml", tmp_path, change), "deployment/velero", ca, tmp_path / "out")
    assert "deployment/velero in namespace velero: refused:\n  - the pod uses hostNetwork: true;" in stderr
    assert "\n  - container velero runs as uid 10001" in stderr


def test_a_regular_init_container_as_the_proxy_uid_is_fine(attach, tmp_path):
    """It runs before the rules exist: nothing to exempt."""
    def change(d):
        _spec(d)["initContainers"][0]["securityContext"] = {"runAsUser": 10001}
    _, _, result, _, _ = attach(edited("velero.yaml", tmp_path, change), "deployment/velero")
    assert init_container(result, "flowtap")["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize("flags,status,message", [
    (["--transparent", "--proxy", "http://flowtap.flowtap.svc:8080"], 64, "cannot be used with"),
    (["--transparent", "--no-proxy", "x"], 64, "cannot be used with"),
    ([], 64, "--proxy <URL>"),
    (["--proxy", "http://flowtap.flowtap.svc:8080", "--image", "x"], 64,
     "invalid --image: it is a setting of the sidecar: add --transparent"),
    (["--proxy", "http://flowtap.flowtap.svc:8080", "--redirect-ports", "443"], 64,
     "invalid --redirect-ports: it is a setting of the sidecar"),
    (["--proxy", "http://flowtap.flowtap.svc:8080", "--ca-secret", "flowtap/flowtap-ca"], 64,
     "the CA comes from --ca-cert or from --ca-secret, not both"),
    (["--transparent", "--redirect-ports", "80,70000"], 64, "invalid --redirect-ports"),
    (["--transparent", "--redirect-ports", "15001"], 64, "the sidecar's own transparent port"),
    (["--transparent", "--redirect-ports", ",".join(str(p) for p in range(1, 17))], 64, "at most 15"),
    (["--transparent", "--exclude-cidrs", "10.0.0.0/33"], 64, "invalid --exclude-cidrs"),
    (["--transparent", "--proxy-uid", "0"], 64, "invalid --proxy-uid"),
    (["--transparent", "--proxy-uid", "flowtap"], 64, "is not a numeric uid"),
    (["--transparent", "--ipv6", "auto"], 64, "invalid value 'auto'"),
    (["--transparent", "--image", "a b"], 64, "invalid --image"),
    (["--transparent", "--ca-secret", "flowtap/flowtap-ca"], 64,
     "the sidecar mounts the CA Secret from the workload's namespace velero, not flowtap"),
])
def test_bad_flags(ca, flags, status, message):
    r = k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml",
                    "--ca-cert", ca, "--system-bundle", SYSTEM_BUNDLE, *flags, check=False)
    assert r.returncode == status, r.stderr
    assert message in r.stderr


def test_printed_stream_says_what_comes_first(ca, tmp_path):
    args = ["k8s", "attach", "deploy/velero", "-f", SAMPLES / "velero.yaml", "--transparent",
            "--ca-cert", ca, "--system-bundle", SYSTEM_BUNDLE]
    printed = k8s.flowtap(*args).stdout
    assert printed.startswith("# 0. Before: the pods need the CA Secret flowtap-ca")
    docs = [d for d in yaml.safe_load_all(printed) if d is not None]
    k8s.flowtap(*args, "--out", tmp_path)
    assert docs == [json.loads((tmp_path / "configmap.json").read_text()),
                    json.loads((tmp_path / "patch.json").read_text())]
