"""`mmtrt serve --tls-cert --tls-key --tls-ca`: gRPC with mutual TLS (held by the guard in front
of tritonserver), HTTP plaintext on loopback only (for a TLS proxy). With a CA made here: `mmtrt infer`
given the CA and its client certificate (--tls-ca / --tls-cert / --tls-key) is answered exactly as
over plaintext HTTP; a plaintext client, a client that trusts another CA and a client without a
certificate are refused; a key file other users can read is refused before the server starts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import ServeCommand, encoded, make_pki, needs_server

from mmtrt.cli import main
from mmtrt.data import synth_xray
from mmtrt.serving import build_repository
from mmtrt.serving.client import Tls, TritonClient, image_inputs
from mmtrt.serving.errors import RequestError

pytestmark = needs_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def serving(export_dir, pki, tmp_path_factory):
    repo = build_repository(
        export_dir, tmp_path_factory.mktemp("built") / "repo", models=("multimix",), ort_threads=1
    )
    (cert, key), (ca, _) = pki["server"], pki["ca"]
    serve = ServeCommand(
        str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca),
    )  # fmt: skip
    try:
        serve.wait_for(r"^gRPC with TLS \(client certificates signed by .*hospital-ca\.pem\); HTTP plaintext")
        yield serve.endpoints()
    finally:
        serve.stop()


def test_a_client_with_the_ca_and_its_certificate_is_answered_as_over_plaintext(serving, pki, tmp_path):
    http, grpc = serving
    images = tmp_path / "in"
    images.mkdir()
    for i in range(3):
        (images / f"x{i}.png").write_bytes(encoded(synth_xray(i, label=i % 2, size=300)[0]))
    (client_cert, client_key), (ca, _) = pki["client"], pki["ca"]
    runs = {
        "tls": ["--protocol", "grpc", "--url", grpc, "--tls-ca", ca, "--tls-cert", client_cert, "--tls-key", client_key],
        "plaintext": ["--protocol", "http", "--url", http],
    }  # fmt: skip
    answers = {}
    for run, args in runs.items():
        result = CliRunner().invoke(
            main, ["infer", *map(str, args), "--retries", "0", "--out", str(tmp_path / run), str(images)]
        )
        assert result.exit_code == 0, result.output
        answers[run] = [json.loads((tmp_path / run / f"x{i}.json").read_text()) for i in range(3)]
    for tls, plain in zip(answers["tls"], answers["plaintext"]):
        assert tls["label"] == plain["label"]
        np.testing.assert_array_equal(
            list(tls["probabilities"].values()), list(plain["probabilities"].values())
        )


@pytest.mark.parametrize(
    "who",
    ["plaintext", "trusts another CA", "no client certificate", "certificate of another CA"],
)
def test_clients_that_do_not_fit_are_refused(serving, pki, who, tmp_path):
    _, grpc = serving
    (ca, _), (cert, key) = pki["ca"], pki["client"]
    other_ca, other_key = pki["other_ca"]
    tls = {
        "plaintext": None,
        "trusts another CA": Tls(str(other_ca), str(cert), str(key)),
        "no client certificate": Tls(str(ca)),
        "certificate of another CA": Tls(str(ca), str(other_ca), str(other_key)),
    }[who]
    with TritonClient(grpc, "grpc", tls=tls, connect_timeout_s=10.0, timeout_s=10.0) as client:
        # refused in the handshake, or (no or a foreign client certificate) by the guard: 400
        with pytest.raises(RequestError, match="UNAVAILABLE|status: 400"):
            client.infer("multimix", image_inputs(np.zeros((1, 1, 256, 256), np.float32)), ("probs",))


def test_http_stays_on_loopback_and_a_readable_key_is_refused(serving, pki, export_dir, tmp_path):
    http, _ = serving
    assert http.startswith("127.0.0.1:")
    cert, key = pki["server"]
    readable = tmp_path / "server.key"
    shutil.copy(key, readable)
    os.chmod(readable, 0o644)
    result = CliRunner().invoke(
        main, ["serve", str(tmp_path), "--tls-cert", str(cert), "--tls-key", str(readable)]
    )
    assert result.exit_code == 2, result.output
    assert f"TLS key file {readable} is readable by other users (mode 0644)" in result.output
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--tls-cert", str(cert)])
    assert result.exit_code == 2 and "TLS needs --tls-cert and --tls-key" in result.output, result.output
