"""The README's Kubernetes walkthrough, minus the cluster: a backup tool (boto3, as velero's
S3 plugin would) talking to an S3 server (moto, TLS) with exactly the environment and files
`flowtap k8s attach` gives the velero sample, through a real flowtap; then the jq commands of the
walkthrough, taken from README.md, run over what `kubectl logs` would show (the proxy's stdout
and stderr together)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import k8s
from support.k8s import SAMPLES, container
from support.net import free_port, wait_listening
from support.proxy import REPO_ROOT

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
LOOPBACK = ("localhost", "127.0.0.1", "::1")

BACKUP_TOOL = r'''
import os, sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="eu-west-3",
                  aws_access_key_id="AKIAFLOWTAPWALKTHRU1", aws_secret_access_key="x" * 40,
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
s3.create_bucket(Bucket="velero-backups", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
s3.put_object(Bucket="velero-backups", Key="backups/probe/probe.tar.gz", Body=b"b" * 3000)
s3.put_object(Bucket="velero-backups", Key="backups/probe/velero-backup.json", Body=b"{}" * 100)
print(len(s3.list_objects_v2(Bucket="velero-backups", Prefix="backups/")["Contents"]))
'''


@pytest.fixture
def s3_server(pki, tmp_path):
    """moto's S3 server on loopback over TLS, with the test server certificate."""
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port),
         "--ssl-cert", str(pki.server_cert), "--ssl-key", str(pki.server_key)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening("127.0.0.1", port, timeout=30)
        yield f"https://localhost:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def readme_jq_programs() -> list[str]:
    """The jq invocations of the walkthrough, as printed in README.md."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("### Walkthrough: a backup tool talking to S3", 1)[1].split("```sh", 1)[1]
    block = block.split("```", 1)[0]
    programs, current = [], None
    for line in block.splitlines():
        if line.lstrip().startswith("| jq "):
            current = line.lstrip()[2:]
            programs.append(current)
        elif current is not None and line.startswith("            "):
            programs[-1] += "\n" + line
        else:
            current = None
    assert len(programs) == 3, programs
    return programs


def test_backup_tool_through_attached_env_and_the_readme_jq(start_proxy, s3_server, tmp_path):
    proxy = start_proxy()
    out = tmp_path / "attach"
    k8s.flowtap("k8s", "attach", "deployment/velero", "-f", SAMPLES / "velero.yaml",
                "--proxy", proxy.url, "--ca-cert", proxy.ca_path,
                "--system-bundle", SYSTEM_BUNDLE, "--out", out)
    cm = json.loads((out / "configmap.json").read_text())
    attached = k8s.kubectl_patch(SAMPLES / "velero.yaml", out / "patch.json")
    mount = tmp_path / "etc-flowtap-ca"
    mount.mkdir()
    for key, value in cm["data"].items():
        (mount / key).write_text(value)
    for key, value in cm["binaryData"].items():
        (mount / key).write_bytes(base64.b64decode(value))

    env = {}
    for e in container(attached, "velero")["env"]:
        if "value" in e:
            env[e["name"]] = e["value"].replace("/etc/flowtap-ca", str(mount))
    # S3 is on loopback here, which NO_PROXY rightly keeps off the proxy in a cluster.
    for var in ("NO_PROXY", "no_proxy"):
        env[var] = ",".join(x for x in env[var].split(",") if x not in LOOPBACK)
    env["HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", BACKUP_TOOL, s3_server], capture_output=True,
                       text=True, env=k8s.clean_env(env), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "2", r.stderr[-3000:]

    recs = proxy.records(4, where=lambda rec: rec.get("server", {}).get("port") == int(s3_server.rsplit(":", 1)[1]))
    assert all(rec["tls"]["intercepted"] for rec in recs)
    assert all("<redacted>" in rec["request"]["headers"]["authorization"] for rec in recs)

    # What `kubectl logs` shows: records (stdout) and the proxy's own log lines (stderr).
    logs = tmp_path / "kubectl-logs.txt"
    logs.write_bytes(proxy.stdout_path.read_bytes() + proxy.stderr_path.read_bytes())
    assert b" INFO " in proxy.stderr_path.read_bytes(), "there are log lines to skip"
    outputs = []
    for program in readme_jq_programs():
        r = subprocess.run(["sh", "-c", f"cat {logs} | {program}"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, f"{program}\n{r.stderr}"
        outputs.append(r.stdout)

    calls = [json.loads(line) for line in outputs[0].splitlines()]
    puts = [c for c in calls if c["m"] == "PUT" and "/backups/probe/" in c["url"]]
    assert len(puts) == 2 and all(c["status"] == 200 and c["ms"] >= 0 for c in puts), calls
    assert outputs[1].strip() == "", "nothing went wrong"
    (per_host,) = json.loads(outputs[2])
    put_bytes = sum(rec["request"]["body_size"] for rec in recs if rec["request"]["method"] == "PUT")
    assert put_bytes > 3000 + 200, "the bucket's configuration and the two objects"
    assert per_host == {"host": "localhost", "puts": 3, "bytes": put_bytes}

    # And the way back.
    attached_path = tmp_path / "attached.json"
    attached_path.write_text(json.dumps(attached))
    k8s.flowtap("k8s", "detach", "deployment/velero", "-f", attached_path, "--out", tmp_path / "detach")
    restored = k8s.kubectl_patch(attached_path, tmp_path / "detach" / "patch.json")
    assert k8s.normalise(restored) == k8s.normalise(k8s.kubectl_local(SAMPLES / "velero.yaml"))
