"""What another local user (``nobody``) and a client without the admin key can do to a server
started by `mmtrt serve`: its guard and Triton's admin APIs refuse them (404 / 403) while
inference stays open; Triton listens only in its own network namespace, and a chunked body does
not reach it as chunks; the
key is in a 0600 file and in no output or log; the request bytes the python backend keeps in
shared memory (a DICOM file with a patient's name) are in the server's own /dev/shm, which that
user cannot read. Also: the key file checks, the redaction of keys, the hidepid detection, the
user-namespace variant (what a non-root operator gets) and the fallback where no namespace is
allowed."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from data.dicom_fixtures import xray_dataset, xray_pixels
from helpers import ServeCommand, needs_server, processes_mentioning

from mmtrt.serving import TritonServer, build_repository
from mmtrt.serving.admin import (
    ADMIN_APIS,
    HEADER,
    KEY_FILE_ENV,
    AdminKey,
    admin_headers,
    proc_hides_command_lines,
    redact,
)
from mmtrt.serving.isolation import Isolation
from mmtrt.serving.processes import python_stub_processes, stub_argvs

ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
as_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="acting as another local user needs root and setpriv (util-linux)",
)
PATIENT = "Quixotic^Zebedee"  # a name found nowhere else
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"  # one nobody may run
# POST 6 MB with Transfer-Encoding: chunked in 1-byte chunks; prints the answer's status line
CHUNKED_POST = """
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with socket.create_connection((host, port), timeout=120) as s:
    s.sendall(f"POST {path} HTTP/1.1\\r\\nHost: {host}\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n".encode())
    s.sendall(b"1\\r\\nA\\r\\n" * (6 << 20) + b"0\\r\\n\\r\\n")
    print(s.recv(200).decode("latin-1").splitlines()[0])
"""


def as_nobody(*cmd: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *cmd], input=stdin, capture_output=True, timeout=120)


def curl_as_nobody(
    method: str, url: str, body: bytes = b"", headers: dict | None = None
) -> tuple[int, bytes]:
    """(HTTP status, body) of a request sent by user nobody with curl."""
    cmd = ["curl", "-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--data-binary", "@-"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    r = as_nobody(*cmd, url, stdin=body)
    out, _, status = r.stdout.rpartition(b"\n")
    assert r.returncode == 0, r.stderr
    return int(status), out


def dicom_with_patient_name() -> bytes:
    ds = xray_dataset(xray_pixels(3, (256, 256)).astype(np.uint16) * 16, PatientName=PATIENT)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def mount_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def processes_in(namespace: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.readlink(f"/proc/{name}/ns/mnt") == namespace:
                pids.append(int(name))
        except OSError:
            pass
    return pids


# --------------------------------------------------------------------------- no server


def test_admin_key_file_flags_headers_and_redaction(tmp_path, monkeypatch):
    key = AdminKey.create()
    try:
        assert stat.S_IMODE(key.folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
        secret = key.secret()
        other = AdminKey.create()
        assert len(secret) >= 40 and other.secret() != secret  # random each run
        other.remove()
        args = key.tritonserver_args()
        apis = ",".join(ADMIN_APIS)
        assert args == [
            f"--http-restricted-api={apis}:mmtrt-admin-key={secret}",
            f"--grpc-restricted-protocol={apis}:mmtrt-admin-key={secret}",
        ]
        shown = redact(["tritonserver", *args, "--grpc-restricted-protocol", f"logging:k={secret}"])
        assert secret not in " ".join(shown)
        assert (
            shown[1] == f"--http-restricted-api={apis}:mmtrt-admin-key=***" and shown[-1] == "logging:k=***"
        )
        assert key.headers("http") == {"mmtrt-admin-key": secret}
        assert key.headers("grpc") == {"triton-grpc-protocol-mmtrt-admin-key": secret}
        # the operator's own restriction of an API takes it out of ours, per protocol
        mine = key.tritonserver_args(["--http-restricted-api=logging,statistics:their-key=x"])
        assert mine[0].startswith("--http-restricted-api=shared-memory,model-repository,model-config,trace:")
        assert mine[1].startswith(f"--grpc-restricted-protocol={apis}:")
        # mmtrt's tools: the file named by the environment, or nothing
        monkeypatch.delenv(KEY_FILE_ENV, raising=False)
        assert admin_headers("http") == {}
        monkeypatch.setenv(KEY_FILE_ENV, str(key.path))
        assert admin_headers("grpc") == key.headers("grpc")
    finally:
        key.remove()
    assert not key.folder.exists()


def test_an_operator_key_file_must_be_private_and_well_formed(tmp_path):
    good = tmp_path / "key"
    good.write_text("0123456789abcdef-/+=\n")
    good.chmod(0o600)
    assert AdminKey.load(good).secret() == "0123456789abcdef-/+="
    good.chmod(0o640)
    with pytest.raises(ValueError, match=r"readable by other users \(mode 0640\): `chmod 600"):
        AdminKey.load(good)
    short = tmp_path / "short"
    short.write_text("abc")
    short.chmod(0o600)
    with pytest.raises(ValueError, match="16 to 512 characters"):
        AdminKey.load(short)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(ValueError, match="admin key file .*link"):
        AdminKey.load(link)
    with pytest.raises(ValueError, match="No such file"):
        AdminKey.load(tmp_path / "nope")
    good.chmod(0o600)
    with pytest.raises(ValueError, match="not a regular file"):
        AdminKey.load(Path("/dev/null"))


@as_root
def test_hidepid_is_detected():
    """/proc here has no hidepid (the warning's case); a /proc mounted with hidepid=invisible
    (in a mount namespace of its own) is seen as hiding other users' command lines."""
    assert not proc_hides_command_lines()
    code = "from mmtrt.serving.admin import proc_hides_command_lines as f; print(f())"
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t proc -o hidepid=invisible proc /proc && exec "$@"', "sh", sys.executable, "-c", code],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )  # fmt: skip
    assert r.stdout.strip() == "True", r.stderr


@as_root
def test_an_unprivileged_user_gets_a_private_shm_through_a_user_namespace():
    """As nobody (not root): the probe picks a user namespace, and in it /dev/shm is a 0700 tmpfs
    of nobody's own: a file written there is not in the host's /dev/shm."""
    code = (
        "import os, subprocess\n"
        "from mmtrt.serving.isolation import private_shm, private_shm_preexec\n"
        "shm = private_shm(); print(shm.kind)\n"
        "subprocess.run(['sh', '-c', 'stat -c %a:%U /dev/shm; echo x > /dev/shm/mmtrt-probe-$PPID; "
        "ls /dev/shm'], preexec_fn=private_shm_preexec(shm.kind), check=True)\n"
        "print(os.path.exists(f'/dev/shm/mmtrt-probe-{os.getpid()}'))\n"
    )
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    r = as_nobody("env", f"PYTHONPATH={ROOT}", python, "-c", code)
    lines = r.stdout.decode().split()
    assert r.returncode == 0, r.stderr
    assert lines[0:2] == ["user", "namespace"] and lines[2] == "700:nobody", lines
    assert lines[3].startswith("mmtrt-probe-") and lines[-1] == "False", lines


# --------------------------------------------------------------------------- mmtrt serve


@needs_server
@as_root
def test_serve_restricts_admin_apis_and_keeps_request_bytes_private(export_dir, tmp_path, monkeypatch):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repo = build_repository(export_dir, tmp_path / "repo", ort_threads=1)
    log = tmp_path / "logs" / "triton.log"
    serve = ServeCommand(
        str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log-file", str(log)
    )
    try:
        pid = int(serve.wait_for(r"^ready in .* \(pid (\d+)\)").group(1))
        text = "\n".join(serve.lines)
        http, grpc = serve.endpoints()
        key_file = Path(re.search(rf"{KEY_FILE_ENV}=(\S+)$", text, re.M).group(1))
        secret = key_file.read_text().strip()
        # the key: a 0600 file in a 0700 folder, in no output and no log
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert secret not in text and secret not in log.read_text()
        assert "mmtrt-admin-key=***" in log.read_text()  # the logged command line
        assert ("warning: /proc is mounted without hidepid" in text) == (not proc_hides_command_lines())
        assert "no private /dev/shm" not in text
        assert as_nobody("cat", str(key_file)).returncode != 0

        # another local user: the admin APIs refuse, inference works. Without a key the guard
        # passes none of them on but the model configuration, which Triton refuses; with a wrong
        # key the guard passes each on and Triton refuses it.
        stub_pid, stub_argv = stub_argvs(pid)[0]
        region = stub_argv[2]  # a stub's own shared-memory region (in its command line)
        register = json.dumps({"key": region, "offset": 0, "byte_size": 1 << 20}).encode()
        base = f"http://{http}/v2"
        admin_calls = {
            "register": ("POST", f"{base}/systemsharedmemory/region/{region}/register", register),
            "log settings": ("POST", f"{base}/logging", b'{"log_file": "/tmp/mmtrt-pwned.log"}'),
            "log verbosity": ("POST", f"{base}/logging", b'{"log_verbose_level": 1}'),
            "trace settings": ("POST", f"{base}/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}'),
            "model config": ("GET", f"{base}/models/multimix/config", b""),
            "statistics": ("GET", f"{base}/models/stats", b""),
            "repository index": ("POST", f"{base}/repository/index", b"{}"),
        }
        for what, call in admin_calls.items():
            status, body = curl_as_nobody(*call)
            assert status == (403 if what == "model config" else 404), (what, status, body)
            status, body = curl_as_nobody(*call, headers={HEADER: "not-the-key-" + "x" * 20})
            assert status == 403 and b"restricted" in body, (what, status, body)
        # Triton listens only in its own network namespace, where no other process can connect;
        # a chunked body (6 MB in 1-byte chunks: it aborts Triton 2.51 wherever Triton parses
        # it) reaches it only as one body with a Content-Length, and it keeps running
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert not [c for c in psutil.net_connections("tcp") if c.pid == pid]
        host, port = http.rsplit(":", 1)
        for path in ("/v2/models/classifier/infer", "/v2/logging"):
            sent = as_nobody(SYSTEM_PYTHON, "-c", CHUNKED_POST, host, port, path)
            assert sent.stdout.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404")), (path, sent)
        time.sleep(0.5)
        assert psutil.pid_exists(pid), "tritonserver was aborted (the watchdog would start a new one)"
        x = np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)
        request = {
            "inputs": [
                {"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
        status, body = curl_as_nobody("POST", f"{base}/models/classifier/infer", json.dumps(request).encode())
        assert status == 200, body
        probs = next(o for o in json.loads(body)["outputs"] if o["name"] == "probs")["data"]

        # gRPC too; and with the key (what mmtrt's tools send, from MMTRT_ADMIN_KEY_FILE) all is open
        client = grpcclient.InferenceServerClient(grpc)
        try:
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_model_config("multimix")
            with pytest.raises(InferenceServerException, match="not served through the proxy"):
                client.update_log_settings({"log_verbose_level": 1})  # (the guard's answer)
            headers = admin_headers("grpc", key_file)
            assert client.get_model_config("multimix", headers=headers).config.max_batch_size == 8
            assert client.get_inference_statistics("classifier", headers=headers).model_stats
        finally:
            client.close()
        client = httpclient.InferenceServerClient(http)
        try:
            headers = admin_headers("http", key_file)
            assert len(client.get_model_repository_index(headers=headers)) == 4
            stats = client.get_inference_statistics("classifier", headers=headers)["model_stats"][0]
            assert stats["inference_stats"]["success"]["count"] >= 1  # (nobody's request among them)
            assert (
                client.update_log_settings({"log_verbose_level": 0}, headers=headers)["log_verbose_level"]
                == 0
            )
            inp = httpclient.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_allclose(
                client.infer("classifier", [inp]).as_numpy("probs")[0], probs, rtol=1e-5
            )

            # a DICOM file with a patient's name: its bytes stay in the server's own /dev/shm
            dicom = httpclient.InferInput("file", [1, 1], "BYTES")
            dicom.set_data_from_numpy(np.array([[dicom_with_patient_name()]], dtype=object))
            assert client.infer("multimix_image", [dicom]).as_numpy("probs").shape == (1, 2)
            places = ["/dev/shm", f"/proc/{pid}/root/dev/shm", f"/proc/{stub_pid}/root/dev/shm"]
            seen_by_root = subprocess.run(["grep", "-rl", PATIENT, *places], capture_output=True, text=True)
            assert f"/proc/{pid}/root/dev/shm/" in seen_by_root.stdout  # they are there: the test can fail
            assert "\n/dev/shm/" not in "\n" + seen_by_root.stdout
            seen_by_nobody = as_nobody("grep", "-rl", PATIENT, *places)
            assert seen_by_nobody.stdout == b"", seen_by_nobody.stdout
            assert b"Permission denied" in seen_by_nobody.stderr  # the server's /dev/shm is closed to it
            assert not (Path("/dev/shm") / region).exists()
            assert client.is_model_ready("multimix_image")  # still serving
        finally:
            client.close()

        # mmtrt's client: an inference client without the key does without the configuration
        # (max_batch_size unknown); mmtrt's tools given the key file read it
        from mmtrt.serving.client import TritonClient

        for protocol, url in (("http", http), ("grpc", grpc)):
            monkeypatch.delenv(KEY_FILE_ENV, raising=False)
            with TritonClient(url, protocol) as c:
                info = c.ready_model("multimix")
                assert (info.max_batch_size, info.config) == (0, {}) and "probs" in info.output_names
            monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
            with TritonClient(url, protocol) as c:
                assert c.ready_model("multimix").max_batch_size == 8
                assert len(c.models()) == 4

        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish() == 0, "\n".join(serve.lines)
    finally:
        serve.stop()
    assert not key_file.parent.exists(), "the per-run key is removed at the end"
    assert not processes_mentioning(str(repo))


@needs_server
@as_root
def test_serve_refuses_a_readable_key_file_and_a_symlinked_log(export_dir, tmp_path):
    from click.testing import CliRunner

    from mmtrt.cli import main

    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    key = tmp_path / "key"
    key.write_text("0123456789abcdefghij\n")
    key.chmod(0o644)
    r = CliRunner().invoke(main, ["serve", str(repo), "--admin-key-file", str(key)])
    assert r.exit_code == 1 and "is readable by other users (mode 0644)" in r.output, r.output
    victim = tmp_path / "victim.txt"
    victim.write_text("unrelated\n")
    (tmp_path / "triton.log").symlink_to(victim)
    key.chmod(0o600)
    args = ["serve", str(repo), "--admin-key-file", str(key), "--http-port", "0", "--grpc-port", "0"]
    r = CliRunner().invoke(main, [*args, "--metrics-port", "0", "--log-file", str(tmp_path / "triton.log")])
    assert r.exit_code == 1 and "triton.log: is a symbolic link" in r.output, r.output
    assert victim.read_text() == "unrelated\n"
    assert key.exists(), "the operator's key file is left alone"


@needs_server
def test_a_server_in_a_user_namespace_serves_and_is_watched(export_dir, tmp_path):
    """The variant a non-root operator gets (here forced as root): the server and its stubs run
    in a user namespace of their own with a private /dev/shm; inference works, the stubs are
    found (the watchdog's view), and stopping it leaves no process of that namespace."""
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    srv = TritonServer(repo, log_file=tmp_path / "triton.log")
    srv.private_shm = Isolation("user namespace")
    with srv:
        assert os.readlink(f"/proc/{srv.pid}/ns/user") != os.readlink("/proc/self/ns/user")
        assert [m for _, m, _ in python_stub_processes(srv.pid)] == ["classifier"]
        mounts = Path(f"/proc/{srv.pid}/mountinfo").read_text().splitlines()
        assert "mode=700" in [m for m in mounts if " /dev/shm " in m][-1]
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(srv.http_url)
        try:
            inp = httpclient.InferInput("image", [1, 1, 256, 256], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 1, 256, 256), np.float32))
            assert client.infer("classifier", [inp]).as_numpy("probs").shape == (1, 2)
        finally:
            client.close()
        namespace = mount_namespace(srv.pid)
    assert processes_in(namespace) == []


@needs_server
@as_root
def test_without_namespaces_serve_warns_and_removes_a_killed_servers_shm(export_dir, tmp_path):
    """Where no namespace is allowed (here: a user namespace without CAP_SYS_ADMIN whose limit
    of nested user namespaces is 0) `mmtrt serve` says so and serves from the host's /dev/shm;
    the shared-memory files a killed server leaves there are removed when it is restarted."""
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    confined = [
        "unshare", "--user", "--map-root-user", "sh", "-c",
        'echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --bounding-set=-sys_admin "$@"', "sh",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*confined, sys.executable, "-c", "from mmtrt.cli import main; main()", "serve", str(repo),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        pid = None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if m := re.match(r"^ready in .* \(pid (\d+)\)", line):
                pid = int(m.group(1))
                break
        assert pid, "\n".join(lines)
        text = "\n".join(lines)
        assert re.search(
            r"^warning: no private /dev/shm for the server \(mount namespace: .*; user namespace: ",
            text,
            re.M,
        ), text
        regions = [Path("/dev/shm") / argv[2] for _, argv in stub_argvs(pid)]
        assert regions and all(r.exists() for r in regions)
        os.killpg(pid, signal.SIGKILL)
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("serving again after"):
                break
        assert lines[-1].startswith("serving again after"), "\n".join(lines)
        assert not [r for r in regions if r.exists()], "the killed server's shared memory is removed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        print("\n".join(lines))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not processes_mentioning(str(repo))
