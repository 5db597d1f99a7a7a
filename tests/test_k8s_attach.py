"""`flowtap k8s attach` / `detach` offline: patches generated from the sample workloads in
k8s_samples/, applied with the real `kubectl patch --local --type strategic` (no API server
needed), the results checked field by field and validated with `kubernetes-validate --strict`;
attach twice changes nothing; detach gives back the original."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import k8s
from support.k8s import (BUNDLE, BUNDLE_VARS, MOUNT_DIR, PROXY_URL, SAMPLE_REFS, SAMPLES, container,
                         env_of, mounts_of)

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUNDLE_PATHS = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
]
PROXY_VARS = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    return k8s.new_ca(tmp_path_factory)


@pytest.fixture(scope="module")
def attach(ca, tmp_path_factory):
    """attach(sample_path, ref, *flags) -> (configmap, patch_path, result, stderr)."""
    base = tmp_path_factory.mktemp("k8s-attach")
    counter = iter(range(10_000))

    def run(sample: Path, ref: str, *flags, proxy: str = PROXY_URL, ca_cert: Path | None = None):
        out = base / f"out{next(counter)}"
        r = k8s.flowtap("k8s", "attach", ref, "-f", sample, "--proxy", proxy,
                        "--ca-cert", ca_cert or ca, "--system-bundle", SYSTEM_BUNDLE,
                        "--out", out, *flags)
        cm = json.loads((out / "configmap.json").read_text())
        patch = out / "patch.json"
        result = k8s.kubectl_patch(sample, patch)
        result_path = out / "result.json"
        result_path.write_text(json.dumps(result))
        return cm, patch, result, result_path, r.stderr

    return run


def certs(pem: str) -> list[bytes]:
    """The DER certificates of a PEM text, in order."""
    return [base64.b64decode(b) for b in re.findall(
        r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)]


def no_proxy_list(env: dict) -> list[str]:
    return env["NO_PROXY"]["value"].split(",")


# --- the velero-like Deployment, field by field ---------------------------------------------


def test_velero_deployment(attach, ca):
    sample = SAMPLES / "velero.yaml"
    original = k8s.kubectl_local(sample)
    cm, _, result, _, stderr = attach(sample, "deployment/velero")

    # The ConfigMap: the system roots, then the flowtap CA; the CA alone; a Java truststore.
    assert cm["kind"] == "ConfigMap" and cm["apiVersion"] == "v1"
    assert cm["metadata"]["name"] == "flowtap-ca-deployment-velero"
    assert cm["metadata"]["namespace"] == "velero"
    assert "ownerReferences" not in cm["metadata"], "no owner when read offline (no uid)"
    bundle = certs(cm["data"]["ca-certificates.crt"])
    system = certs(SYSTEM_BUNDLE.read_text())
    ours = certs(ca.read_text())
    assert bundle[-1] == ours[0], "the flowtap CA comes last"
    assert bundle[:-1] == system, "then every system root, in order"
    assert certs(cm["data"]["flowtap-ca.pem"]) == ours
    assert base64.b64decode(cm["binaryData"]["truststore.p12"])[:1] == b"\x30"
    assert f"{len(system)} public roots" in stderr

    velero = container(result, "velero")
    env = env_of(velero)
    for var in PROXY_VARS:
        assert env[var] == {"name": var, "value": PROXY_URL}
    for var in BUNDLE_VARS:
        assert env[var] == {"name": var, "value": BUNDLE}
    assert env["NODE_EXTRA_CA_CERTS"] == {"name": "NODE_EXTRA_CA_CERTS",
                                          "value": f"{MOUNT_DIR}/flowtap-ca.pem"}
    assert env["NODE_USE_ENV_PROXY"] == {"name": "NODE_USE_ENV_PROXY", "value": "1"}
    assert env["no_proxy"]["value"] == env["NO_PROXY"]["value"]
    no_proxy = no_proxy_list(env)
    for entry in ["localhost", "127.0.0.1", "::1", "$(KUBERNETES_SERVICE_HOST)",
                  "kubernetes.default.svc", ".svc", ".cluster.local", "169.254.169.254"]:
        assert entry in no_proxy, entry
    assert "JAVA_TOOL_OPTIONS" not in env, "velero is not a JVM"
    assert "no sign of a JVM" in stderr
    # Everything the container had is still there, unchanged and in order.
    orig = container(original, "velero")
    kept = [e for e in velero["env"] if e["name"] in env_of(orig)]
    assert kept == orig["env"]
    for key in ("image", "command", "args", "ports", "resources"):
        assert velero[key] == orig[key], key

    mounts = mounts_of(velero)
    assert mounts[MOUNT_DIR] == {"name": "flowtap-ca", "mountPath": MOUNT_DIR, "readOnly": True}
    for path in BUNDLE_PATHS:
        assert mounts[path] == {"name": "flowtap-ca", "mountPath": path,
                                "subPath": "ca-certificates.crt", "readOnly": True}
    for m in orig["volumeMounts"]:
        assert mounts[m["mountPath"]] == m
    assert len(mounts) == len(orig["volumeMounts"]) + 1 + len(BUNDLE_PATHS)

    spec = k8s.pod_spec(result)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["flowtap-ca"] == {"name": "flowtap-ca",
                                     "configMap": {"name": "flowtap-ca-deployment-velero"}}
    assert [v for v in spec["volumes"] if v["name"] != "flowtap-ca"] == k8s.pod_spec(original)["volumes"]
    assert spec["initContainers"] == k8s.pod_spec(original)["initContainers"], "init containers untouched"

    meta = k8s.pod_meta(result)
    assert meta["labels"]["flowtap.dev/attached"] == "true"
    assert meta["labels"]["app.kubernetes.io/name"] == "velero"
    assert meta["annotations"]["flowtap.dev/ca-sha256"] == cm["metadata"]["annotations"]["flowtap.dev/ca-sha256"]
    assert meta["annotations"]["prometheus.io/scrape"] == "true"

    record = k8s.record_of(result)
    assert record["proxy"] == PROXY_URL
    assert record["configMap"] == "flowtap-ca-deployment-velero"
    assert record["containers"]["velero"]["env"]["HTTP_PROXY"] is None
    assert set(record["containers"]) == {"velero"}
    assert record["podLabels"] == {"flowtap.dev/attached": None}
    # The selector is untouched: the pods stay the Deployment's.
    assert result["spec"]["selector"] == original["spec"]["selector"]
    assert result["metadata"]["labels"] == original["metadata"]["labels"]


def test_statefulset_java_options_are_appended(attach, ca):
    sample = SAMPLES / "statefulset.yaml"
    original = k8s.kubectl_local(sample)
    _, _, result, _, _ = attach(sample, "statefulset/connect")
    env = env_of(container(result, "connect"))
    jto = env["JAVA_TOOL_OPTIONS"]["value"]
    assert jto.startswith("-Xmx512m -XX:+UseG1GC -D"), "the existing options come first"
    opts = dict(o[2:].split("=", 1) for o in jto.split()[2:])
    assert opts["http.proxyHost"] == opts["https.proxyHost"] == "flowtap.flowtap.svc"
    assert opts["http.proxyPort"] == opts["https.proxyPort"] == "8080"
    assert opts["javax.net.ssl.trustStore"] == f"{MOUNT_DIR}/truststore.p12"
    assert opts["javax.net.ssl.trustStoreType"] == "PKCS12"
    assert opts["javax.net.ssl.trustStorePassword"] == "changeit"
    hosts = opts["http.nonProxyHosts"].split("|")
    for entry in ["localhost", "127.0.0.1", "[::1]", "$(KUBERNETES_SERVICE_HOST)", "*.svc",
                  "*.cluster.local", "kubernetes.default.svc", "169.254.169.254"]:
        assert entry in hosts, entry
    assert not any(h.startswith(".") or "," in h for h in hosts)
    # The rest of the StatefulSet is as it was.
    assert result["spec"]["volumeClaimTemplates"] == original["spec"]["volumeClaimTemplates"]
    assert k8s.pod_spec(result)["securityContext"] == k8s.pod_spec(original)["securityContext"]
    assert env["CONNECT_BOOTSTRAP_SERVERS"] == {"name": "CONNECT_BOOTSTRAP_SERVERS",
                                                "value": "kafka.data.svc:9092"}
    record = k8s.record_of(result)
    assert record["containers"]["connect"]["env"]["JAVA_TOOL_OPTIONS"] == {
        "name": "JAVA_TOOL_OPTIONS", "value": "-Xmx512m -XX:+UseG1GC"}


def test_daemonset_valuefrom_is_replaced_and_noted(attach):
    sample = SAMPLES / "daemonset.yaml"
    _, _, result, _, stderr = attach(sample, "daemonset/shipper")
    env = env_of(container(result, "shipper"))
    assert env["HTTPS_PROXY"] == {"name": "HTTPS_PROXY", "value": PROXY_URL}, "valueFrom dropped"
    assert "localhost,127.0.0.1" in env["NO_PROXY"]["value"]
    assert ".internal" not in no_proxy_list(env), "the old NO_PROXY is replaced, not merged"
    assert 'NO_PROXY was "localhost,.internal"' in stderr
    assert ("HTTPS_PROXY was set from valueFrom; flowtap replaces it while attached and detach puts "
            "it back (to keep the traffic going out through that proxy, run the flowtap proxy with "
            "--upstream-proxy set to it)") in stderr
    record = k8s.record_of(result)
    assert record["containers"]["shipper"]["env"]["HTTPS_PROXY"] == {
        "name": "HTTPS_PROXY", "valueFrom": {"configMapKeyRef": {"name": "corporate-proxy", "key": "url"}}}
    assert k8s.pod_spec(result)["tolerations"] == [{"operator": "Exists"}]


def test_named_container_only(attach):
    sample = SAMPLES / "two-containers.yaml"
    original = k8s.kubectl_local(sample)
    _, _, result, _, _ = attach(sample, "deployment/shop", "-c", "web", "--no-proxy",
                                "shop-db.web,.corp.example,10.0.0.0/8")
    web = container(result, "web")
    assert env_of(web)["HTTPS_PROXY"]["value"] == PROXY_URL
    assert web["envFrom"] == container(original, "web")["envFrom"]
    no_proxy = no_proxy_list(env_of(web))
    assert no_proxy[-3:] == ["shop-db.web", ".corp.example", "10.0.0.0/8"]
    assert container(result, "sidecar") == container(original, "sidecar"), "the sidecar is untouched"
    assert set(k8s.record_of(result)["containers"]) == {"web"}


def test_java_on_notes_envfrom_and_unexpressible_entries(attach):
    _, _, result, _, stderr = attach(SAMPLES / "two-containers.yaml", "deployment/shop",
                                     "-c", "web", "--java", "on", "--no-proxy", "172.16.0.0/12")
    jto = env_of(container(result, "web"))["JAVA_TOOL_OPTIONS"]["value"]
    assert jto.startswith("-Dhttp.proxyHost=flowtap.flowtap.svc ")
    assert "container web: has envFrom" in stderr
    assert "cannot express 172.16.0.0/12" in stderr


def test_java_from_valuefrom_is_refused_with_a_reason(attach, tmp_path):
    doc = yaml.safe_load((SAMPLES / "statefulset.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["env"][0] = {
        "name": "JAVA_TOOL_OPTIONS", "valueFrom": {"configMapKeyRef": {"name": "jvm", "key": "opts"}}}
    sample = tmp_path / "sts.yaml"
    sample.write_text(yaml.safe_dump(doc))
    _, _, result, _, stderr = attach(sample, "statefulset/connect")
    env = env_of(container(result, "connect"))
    assert "valueFrom" in env["JAVA_TOOL_OPTIONS"] and "value" not in env["JAVA_TOOL_OPTIONS"]
    assert "cannot set the JVM's proxy and truststore: JAVA_TOOL_OPTIONS comes from valueFrom" in stderr
    assert env["HTTPS_PROXY"]["value"] == PROXY_URL, "the rest is still attached"


def test_cronjob(attach):
    sample = SAMPLES / "cronjob.yaml"
    _, patch, result, _, stderr = attach(sample, "cronjob/backup")
    assert "jobTemplate" in json.loads(patch.read_text())["spec"]
    env = env_of(container(result, "restic"))
    assert env["HTTPS_PROXY"]["value"] == PROXY_URL
    assert 'HTTPS_PROXY was "http://proxy.corp.example:3128"' in stderr
    assert mounts_of(container(result, "restic"))["/data"]["readOnly"] is True
    assert k8s.pod_meta(result)["labels"]["flowtap.dev/attached"] == "true"


# --- attach twice, detach, the already attached sample ----------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLE_REFS))
def test_attach_twice_is_harmless_and_detach_restores(attach, name, tmp_path):
    k8s.check_attach_twice_and_detach(attach, name, tmp_path / "detach", "was already attached")


def test_reattach_with_other_settings_keeps_the_originals(attach, tmp_path):
    sample = SAMPLES / "two-containers.yaml"
    original = k8s.kubectl_local(sample)
    _, _, both, both_path, _ = attach(sample, "deployment/shop", "--java", "on")
    assert "JAVA_TOOL_OPTIONS" in env_of(container(both, "sidecar"))
    # Again, to another proxy, for one container only: the sidecar goes back as it was.
    _, _, web_only, web_only_path, _ = attach(both_path, "deployment/shop", "-c", "web",
                                              proxy="http://flowtap.tools.svc:3128")
    assert k8s.normalise(container(web_only, "sidecar")) == k8s.normalise(container(original, "sidecar"))
    env = env_of(container(web_only, "web"))
    assert env["HTTPS_PROXY"]["value"] == "http://flowtap.tools.svc:3128"
    assert "JAVA_TOOL_OPTIONS" not in env, "auto: node is not a JVM; the earlier one is removed"
    assert set(k8s.record_of(web_only)["containers"]) == {"web"}
    restored = k8s.detach(web_only_path, "deployment/shop", tmp_path / "d")
    assert k8s.normalise(restored) == k8s.normalise(original)


def test_reattach_does_not_append_java_options_twice(attach):
    sample = SAMPLES / "statefulset.yaml"
    _, _, once, once_path, _ = attach(sample, "statefulset/connect")
    _, _, twice, _, _ = attach(once_path, "statefulset/connect", proxy="http://flowtap.other.svc:8080")
    jto = env_of(container(twice, "connect"))["JAVA_TOOL_OPTIONS"]["value"]
    assert jto.count("-Dhttp.proxyHost=") == 1
    assert jto.startswith("-Xmx512m -XX:+UseG1GC -Dhttp.proxyHost=flowtap.other.svc ")


def test_the_already_attached_sample(attach, tmp_path):
    """cronjob-attached.yaml is cronjob.yaml as an earlier attach left it (another proxy,
    another CA): attach again only moves it to the new proxy and CA; detach gives back
    cronjob.yaml."""
    attached = SAMPLES / "cronjob-attached.yaml"
    before = k8s.kubectl_local(attached)
    record = k8s.record_of(before)
    assert record["containers"]["restic"]["env"]["HTTPS_PROXY"] == {
        "name": "HTTPS_PROXY", "value": "http://proxy.corp.example:3128"}

    restored = k8s.detach(attached, "cronjob/backup", tmp_path / "d")
    assert k8s.normalise(restored) == k8s.normalise(k8s.kubectl_local(SAMPLES / "cronjob.yaml"))

    _, _, again, _, _ = attach(attached, "cronjob/backup")
    assert k8s.record_of(again)["containers"] == record["containers"], "originals kept"
    env = env_of(container(again, "restic"))
    assert env["HTTPS_PROXY"]["value"] == PROXY_URL
    # Only the proxy URL, the CA digest and the record's proxy changed.
    a, b = json.loads(json.dumps(before)), json.loads(json.dumps(again))
    for obj in (a, b):
        del obj["metadata"]["annotations"]["flowtap.dev/attached"]
        del k8s.pod_meta(obj)["annotations"]["flowtap.dev/ca-sha256"]
        for e in container(obj, "restic")["env"]:
            if e.get("value") in (PROXY_URL, record["proxy"]):
                e["value"] = "PROXY"
    assert a == b


def test_detach_of_a_workload_never_attached(tmp_path):
    r = k8s.flowtap("k8s", "detach", "deployment/velero", "-f", SAMPLES / "velero.yaml",
                    "--out", tmp_path / "out")
    assert "is not attached" in r.stderr
    assert not (tmp_path / "out").exists()


# --- output forms, validation, errors ---------------------------------------------------------


def test_printed_stream_matches_the_files(ca, tmp_path):
    args = ["k8s", "attach", "deploy/velero", "-f", SAMPLES / "velero.yaml", "--proxy", PROXY_URL,
            "--ca-cert", ca, "--system-bundle", SYSTEM_BUNDLE]
    printed = k8s.flowtap(*args).stdout
    docs = [d for d in yaml.safe_load_all(printed) if d is not None]
    k8s.flowtap(*args, "--out", tmp_path)
    assert docs == [json.loads((tmp_path / "configmap.json").read_text()),
                    json.loads((tmp_path / "patch.json").read_text())]
    assert "kubectl patch deployment/velero -n velero --type strategic" in printed


def test_every_generated_manifest_validates(attach, tmp_path):
    docs = []
    for name, ref in SAMPLE_REFS.items():
        cm, _, result, _, _ = attach(SAMPLES / name, ref)
        docs += [cm, result, k8s.kubectl_local(SAMPLES / name)]
    docs.append(k8s.kubectl_local(SAMPLES / "cronjob-attached.yaml"))
    k8s.validate_strict(*docs)


@pytest.mark.parametrize("flags,message", [
    (["--proxy", "flowtap:8080"], "invalid --proxy"),
    (["--proxy", "https://flowtap.flowtap.svc:8080"], "must start with http://"),
    (["--proxy", "http://flowtap.flowtap.svc"], "give the port"),
    (["--proxy", PROXY_URL, "-c", "nope"], "has no container \"nope\"; it has velero"),
    (["--proxy", PROXY_URL, "--no-proxy", "a b"], "invalid --no-proxy"),
    (["--proxy", PROXY_URL, "--bundle-path", "relative/file"], "invalid --bundle-path"),
    (["--proxy", PROXY_URL, "--apply"], "invalid --apply"),
])
def test_bad_flags_exit_with_usage_status(ca, flags, message):
    r = k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml",
                    "--ca-cert", ca, "--system-bundle", SYSTEM_BUNDLE, *flags, check=False)
    assert r.returncode == 64, r.stderr
    assert message in r.stderr


def test_workload_errors(ca):
    base = ["--proxy", PROXY_URL, "--ca-cert", ca, "--system-bundle", SYSTEM_BUNDLE]
    r = k8s.flowtap("k8s", "attach", "pod/x", "-f", SAMPLES / "velero.yaml", *base, check=False)
    assert r.returncode == 64 and "deployment, statefulset, daemonset or cronjob" in r.stderr
    r = k8s.flowtap("k8s", "attach", "deployment/other", "-f", SAMPLES / "velero.yaml", *base, check=False)
    assert r.returncode == 1 and 'no Deployment named "other"' in r.stderr
    r = k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml",
                    "--proxy", PROXY_URL, "--ca-cert", SAMPLES / "velero.yaml",
                    "--system-bundle", SYSTEM_BUNDLE, check=False)
    assert r.returncode == 1 and "holds no PEM certificate" in r.stderr


# --- the settings work with real clients --------------------------------------------------------


def _env_for_local_run(result: dict, name: str, mount_dir: Path, proxy_url: str) -> dict:
    """The container's env as the pod would see it, with the mount directory moved to a local
    directory and $(KUBERNETES_SERVICE_HOST) expanded as the kubelet would."""
    env = {}
    for e in container(result, name).get("env", []):
        if "value" in e:
            env[e["name"]] = (e["value"].replace(MOUNT_DIR, str(mount_dir))
                              .replace("$(KUBERNETES_SERVICE_HOST)", "10.96.0.1"))
    assert env["HTTPS_PROXY"] == proxy_url
    return env


def _write_mount(cm: dict, mount_dir: Path) -> None:
    mount_dir.mkdir(parents=True, exist_ok=True)
    for key, text in cm["data"].items():
        (mount_dir / key).write_text(text)
    for key, b64 in cm["binaryData"].items():
        (mount_dir / key).write_bytes(base64.b64decode(b64))


def test_curl_and_python_trust_the_proxy_with_the_attached_env(attach, start_proxy, nginx, tmp_path):
    """curl and Python requests, given exactly the variables and files attach produces (paths
    moved out of /etc), reach an HTTPS server through a real flowtap, trusting its CA through
    the combined bundle; hosts in NO_PROXY (localhost here) bypass the proxy."""
    proxy = start_proxy()
    cm, _, result, _, _ = attach(SAMPLES / "velero.yaml", "deployment/velero",
                                 proxy=proxy.url, ca_cert=proxy.ca_path)
    mount = tmp_path / "mount"
    _write_mount(cm, mount)
    env = _env_for_local_run(result, "velero", mount, proxy.url)
    # The test servers are on loopback, which NO_PROXY rightly excludes: take loopback out for
    # the proxied requests, keep it for the bypass check.
    proxied_env = dict(env)
    for var in ("NO_PROXY", "no_proxy"):
        proxied_env[var] = ",".join(e for e in env[var].split(",")
                                    if e not in ("localhost", "127.0.0.1", "::1"))
    url = nginx.url("/small", tls=True)
    r = subprocess.run(["curl", "-sS", "--fail", url], capture_output=True, text=True,
                       env=k8s.clean_env(proxied_env), timeout=30)
    assert r.returncode == 0, r.stderr
    code = ("import requests; r = requests.get(%r, timeout=20); r.raise_for_status(); "
            "print(r.status_code)") % url
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=k8s.clean_env(proxied_env), timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "200", r.stderr
    recs = proxy.records(2, where=lambda rec: rec["request"]["url"] == url)
    assert all(rec["tls"]["intercepted"] for rec in recs)

    # localhost is in NO_PROXY: curl goes direct, so the proxy records nothing for it.
    direct = nginx.url("/small", host="localhost")
    r = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", direct],
                       capture_output=True, text=True, env=k8s.clean_env(env), timeout=30)
    assert r.returncode == 0, r.stderr
    assert not proxy.records(where=lambda rec: rec.get("request", {}).get("url") == direct)


def _java():
    java = shutil.which("java")
    if java is None:
        k8s.ensure_apt_tool("java", "default-jdk-headless")
        java = shutil.which("java")
    assert java, "java missing"
    keytool = shutil.which("keytool") or k8s.ensure_apt_tool("keytool", "default-jdk-headless")
    javac_ok = subprocess.run([java, "--version"], capture_output=True).returncode == 0
    assert javac_ok
    return java, keytool


def test_java_truststore_and_proxy_properties(attach, start_proxy, tmp_path):
    """The truststore is what keytool lists (every root, as trusted entries), and a JVM started
    with the JAVA_TOOL_OPTIONS attach sets goes through flowtap and trusts its CA."""
    java, keytool = _java()
    proxy = start_proxy()
    cm, _, result, _, _ = attach(SAMPLES / "statefulset.yaml", "statefulset/connect",
                                 proxy=proxy.url, ca_cert=proxy.ca_path)
    mount = tmp_path / "mount"
    _write_mount(cm, mount)
    r = subprocess.run([keytool, "-list", "-keystore", str(mount / "truststore.p12"),
                        "-storetype", "PKCS12", "-storepass", "changeit"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    entries = [line for line in r.stdout.splitlines() if "trustedCertEntry" in line]
    assert len(entries) == len(certs(cm["data"]["ca-certificates.crt"]))
    assert any(line.startswith("flowtap-ca,") for line in entries), r.stdout

    env = _env_for_local_run(result, "connect", mount, proxy.url)
    src = tmp_path / "Fetch.java"
    src.write_text(
        "import java.net.URI; import java.net.http.*;\n"
        "public class Fetch { public static void main(String[] a) throws Exception {\n"
        "  var c = HttpClient.newBuilder().proxy(java.net.ProxySelector.getDefault()).build();\n"
        "  var r = c.send(HttpRequest.newBuilder(URI.create(a[0])).build(),\n"
        "                 HttpResponse.BodyHandlers.ofString());\n"
        "  System.out.println(r.statusCode()); } }\n")
    # The JDK never proxies loopback names, whatever http.nonProxyHosts says, so the target is a
    # name that resolves nowhere: the JVM must send CONNECT to flowtap, accept flowtap's leaf
    # through the truststore, and then read flowtap's own 502 over the intercepted TLS.
    url = "https://flowtap-test.invalid/"          # the suite's one non-loopback name (test_errors)
    run_env = k8s.clean_env({"JAVA_TOOL_OPTIONS": env["JAVA_TOOL_OPTIONS"]})
    r = subprocess.run([java, str(src), url], capture_output=True, text=True, env=run_env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("502"), r.stdout + r.stderr
    assert "Picked up JAVA_TOOL_OPTIONS: -Xmx512m -XX:+UseG1GC -Dhttp.proxyHost=127.0.0.1" in r.stderr
    (rec,) = proxy.records(1, where=lambda rec: rec.get("request", {}).get("url") == url)
    assert rec["tls"]["intercepted"] is True
    assert rec["request"]["headers"]["user-agent"].startswith("Java-http-client/")
    assert rec["error"]["kind"] == "upstream_dns"
