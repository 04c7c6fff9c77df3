"""file_decoder's queue policy in the real Triton server: slow (large, legal) files hold only the
instance they decode on, so a valid file sent meanwhile is answered before them; the queue is
bounded in length (a request beyond it is refused at once as UNAVAILABLE, a retryable status,
not invalid input) and in time (a request that waited too long is refused the same way); the
server answers the valid file again afterwards.

One server for the module: two decoder instances, a queue of 2 requests waiting at most 1 s.
A slow request is 8 files of 6000 x 6000 16-bit pixels (PNGs of ~0.3 MB: a gradient), each
about a second of decoding on a busy 2-core machine.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import client_for, encoded, needs_server

from mmtrt.data import synth_xray
from mmtrt.serving import build_repository
from mmtrt.serving.client import IMAGE_MODEL, file_inputs
from mmtrt.serving.config import parse_config
from mmtrt.serving.errors import RequestError
from mmtrt.serving.faults import INVALID, classify
from mmtrt.serving.settings import DecoderQueue

pytestmark = needs_server
QUEUE = DecoderQueue(instances=2, max_queue_size=2, queue_timeout_s=1)
SLOW_FILES = 8


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    return build_repository(
        export_dir,
        tmp_path_factory.mktemp("built") / "repo",
        models=("multimix_image",),
        ort_threads=1,
        decoder_queue=QUEUE,
    )


@pytest.fixture(scope="module")
def slow() -> list[bytes]:
    big = (np.add.outer(np.arange(6000), np.arange(6000)) % 4096 * 16).astype(np.uint16)
    return [encoded(big)] * SLOW_FILES


@pytest.fixture(scope="module")
def valid() -> bytes:
    return encoded(synth_xray(3, label=1, size=300)[0])


class Sent(threading.Thread):
    """One request of ``files`` in its own thread: its answer or error, and when it ended."""

    def __init__(self, server, files, protocol="http"):
        super().__init__()
        self.server, self.files, self.protocol = server, files, protocol
        self.result = None
        self.ended = 0.0
        self.start()

    def run(self):
        try:
            with client_for(self.protocol, self.server) as client:
                self.result = client.infer(IMAGE_MODEL, file_inputs(self.files), ("probs", "original_size"))
        except RequestError as e:
            self.result = e
        self.ended = time.monotonic()


def test_repository_renders_the_queue_policy(repo):
    config = parse_config((repo / "file_decoder" / "config.pbtxt").read_text())
    policy = config.dynamic_batching.default_queue_policy
    assert config.instance_group[0].count == 2
    assert policy.max_queue_size == 2 and policy.default_timeout_microseconds == 1_000_000
    assert policy.timeout_action == policy.REJECT
    multimix = parse_config((repo / "multimix" / "config.pbtxt").read_text())
    assert not multimix.dynamic_batching.HasField("default_queue_policy")


def test_a_slow_file_holds_one_instance_only(server, slow, valid):
    """A valid file sent while a slow request decodes is answered before the slow one ends."""
    slow_request = Sent(server, slow)
    time.sleep(1.0)  # the slow request is decoding on one instance
    started = time.monotonic()
    answer = Sent(server, [valid], "grpc")
    answer.join(120)
    slow_request.join(300)
    assert isinstance(answer.result, dict), answer.result
    assert isinstance(slow_request.result, dict), slow_request.result
    assert answer.ended < slow_request.ended, (
        f"the valid file waited {answer.ended - started:.1f} s, until the slow request ended"
    )


def test_the_queue_is_bounded_in_length_and_time(server, slow, valid):
    """Two slow requests occupy both instances; of the next ones, two may wait: a fifth is
    refused at once; those that waited more than 1 s are refused too; each refusal is
    UNAVAILABLE (retry later), not invalid input; afterwards a valid file is answered."""
    running = [Sent(server, slow, protocol) for protocol in ("http", "grpc")]
    time.sleep(1.0)
    waiting = [Sent(server, [valid], protocol) for protocol in ("http", "grpc", "http")]
    for request in running + waiting:
        request.join(300)
    assert all(isinstance(r.result, dict) for r in running), [r.result for r in running]
    refused = [r.result for r in waiting if isinstance(r.result, RequestError)]
    assert len(refused) == len(waiting), [r.result for r in waiting]
    for error in refused:
        print(f"\n{error.status}: {error}")
        assert classify(error) != INVALID
        assert error.status in ("503", "StatusCode.UNAVAILABLE"), error
        assert "queue" in str(error).lower() or "timeout" in str(error).lower(), error
    with client_for("http", server) as client:
        assert client.infer(IMAGE_MODEL, file_inputs([valid]), ("probs",))["probs"].shape == (1, 2)
