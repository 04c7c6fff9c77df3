"""Triton python-backend model ``file_decoder`` of the CPU flavour: image files -> the network's
input images. The first step of the ensemble ``multimix_image`` (file_decoder -> multimix).

- input ``file``: BYTES ``[n, 1]``, each element the bytes of one PNG, JPEG, TIFF, 16-bit PNG or
  DICOM file. An element made only of base64 characters (``A-Z a-z 0-9 + / =`` and white space)
  is the base64 text of the file: KServe v2's JSON carries BYTES as text, and no image file is
  made of those characters alone (PNG, JPEG, TIFF, GIF and DICOM begin with bytes outside them);
- outputs ``image`` (FP32 ``[n, 1, size, size]`` in [0, 1], the size from config.pbtxt),
  ``original_size`` (INT32 ``[n, 2]``: the file's rows and columns), ``accepted`` (BOOL
  ``[n, 1]``) and ``refusal_reason`` (BYTES ``[n, 1]``, UTF-8, empty when accepted): the input
  gate's verdict on the file's DICOM header (mmtrt/data/gate.py: body part, view, modality;
  other formats carry no such header and are accepted). A file is decoded first (one that is no
  usable image is an error, below, refused or not); a refused file's image is then zeros and its
  size 0 x 0, and ``multimix`` (the next step of the ensemble) does not run it; and ``source``
  (BYTES ``[n, 1]``, JSON: the file's SOP Instance UID, else its sha256, and the request id),
  what ``multimix``'s audit trail names the file by.

Decoding is mmtrt's one decoder, ``read_image`` of mmtrt/data/images.py (with dicom.py and
decoded.py), which ``mmtrt repo`` copies into this version folder with the other mmtrt modules
the served models run, as the package ``mmtrt_backend``: the server decodes with the code of the
mmtrt that built the repository, as training, evaluation and ``mmtrt infer`` do, and imports none
of the rest of mmtrt (no torch). It needs numpy, Pillow and pydicom (and pydicom's plugins for
compressed DICOM) in the server's Python.

Limits (its parameters, an ``ImageLimits`` of mmtrt/serving/settings.py): ``max_image_bytes`` per
file; ``max_image_pixels`` per image, set as Pillow's ``Image.MAX_IMAGE_PIXELS``, which the decoder
applies to every format, DICOM Rows x Columns included (a possible decompression bomb above it);
``gate_allow``, the gate's rules relaxed (comma-separated; empty: every rule applies).

Every request is decoded on its own, in one of several instances behind a bounded queue
(``mmtrt repo --decoder-instances / --decoder-queue-size / --decoder-queue-timeout-s``). A
request with a file that is empty, too large, not an image, a decompression bomb, corrupt or
without contrast gets its own error naming the image and the problem, answered as invalid input
(``TritonError.INVALID_ARG``: HTTP 400, gRPC INVALID_ARGUMENT); the other requests of the
execution are answered. Structure follows the
official python-backend examples (initialize / execute / finalize).
"""

import base64
import hashlib
import io
import json
import time
import warnings

import numpy as np
import triton_python_backend_utils as pb_utils
from mmtrt_backend.model_metrics import ModelMetrics
from mmtrt_backend.python_backend import failed, invalid_input, load_error, read_settings
from mmtrt_backend.settings import ImageLimits

INPUT = "file"
IMAGE = "image"
SIZE = "original_size"
ACCEPTED = "accepted"
REASON = "refusal_reason"
SOURCE = "source"
OUTPUTS = (IMAGE, SIZE, ACCEPTED, REASON, SOURCE)
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=" + b" \t\r\n"


def _mib(n):
    return f"{n / 2**20:.1f} MiB"


class TritonPythonModel:
    """Files (BYTES) -> images and their native sizes, with mmtrt's decoder."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.max_batch = int(config.get("max_batch_size", 0))
        limits = read_settings(ImageLimits, config, self.model_name)
        self.max_bytes = limits.max_bytes
        outputs = {o["name"]: o for o in config["output"]}
        if [i["name"] for i in config["input"]] != [INPUT] or set(outputs) != set(OUTPUTS):
            raise load_error(
                self.model_name,
                f"config.pbtxt must have the input '{INPUT}' and the outputs {', '.join(OUTPUTS)}",
            )
        self.size = int(outputs[IMAGE]["dims"][-1])
        self.metrics = ModelMetrics(self.model_name, args["model_version"])
        try:  # the version folder is on the stub's sys.path; mmtrt repo copied the package there
            import pydicom  # noqa: F401 - the decoder imports it when it meets a DICOM file
            from mmtrt_backend import gate, images
            from PIL import Image
        except ImportError as e:
            raise load_error(
                self.model_name,
                "cannot import the image decoder (mmtrt_backend of its version folder, and numpy, "
                f"Pillow, pydicom from the server's Python): {e}. Rebuild the repository with `mmtrt "
                "repo`, and install what is missing into the Python the server runs (pip install "
                "numpy Pillow pydicom)",
            ) from None
        self.images = images
        self.gate = gate
        try:
            self.relaxed = gate.relaxed_rules(limits.allow)
        except ValueError as e:
            raise load_error(self.model_name, f"config.pbtxt parameter gate_allow: {e}") from None
        # the decoder refuses any image above this size (DICOM Rows x Columns too)
        Image.MAX_IMAGE_PIXELS = limits.max_pixels
        # decode one small image now, so that the first request pays no set-up
        buf = io.BytesIO()
        Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(buf, format="PNG")
        self._decode(buf.getvalue(), "the load-time check image")

    def _decode(self, data, where):
        """(pixels [size, size], (rows, columns), what the audit trail names the file by) of one
        file's bytes; DataError names ``where``."""
        with warnings.catch_warnings():  # e.g. a DICOM Modality other than CR/DX: accepted
            warnings.simplefilter("ignore")
            decoded = self.images.read_image(self.images.EncodedFile(data, where), self.size)
        uid = decoded.meta.sop_instance_uid
        source = {"sop_instance_uid": uid} if uid else {"file_sha256": hashlib.sha256(data).hexdigest()}
        return decoded.pixels, (decoded.meta.rows, decoded.meta.columns), source

    def _payload(self, data, where):
        """(the file's bytes, None), or (None, what is wrong with them)."""
        if len(data) == 0:
            return None, f"{where}: empty payload (0 bytes): send the bytes of an image file"
        text = not data.translate(None, _BASE64)
        size = len(data) * 3 // 4 if text else len(data)
        if size > self.max_bytes:
            return None, (
                f"{where}: payload {_mib(size)} > limit {_mib(self.max_bytes)} "
                "(config.pbtxt parameter max_image_bytes)"
            )
        if text:
            try:
                data = base64.b64decode(data.translate(None, b" \t\r\n"), validate=True)
            except ValueError as e:
                return None, (
                    f"{where}: not an image file, nor the base64 text of one ({e}): "
                    f"{len(data)} bytes beginning {data[:16]!r}"
                )
        return data, None

    def _request(self, request):
        """((images [k, 1, size, size], sizes [k, 2], accepted [k, 1], reasons [k, 1]), None)
        for a request, or (None, problem)."""
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
        if tensor is None:
            return None, f"missing input tensor '{INPUT}'"
        files = tensor.as_numpy().reshape(-1)  # Triton checked BYTES and [n, 1] against the config
        if not files.size:
            return None, f"input tensor '{INPUT}' holds no file"
        if self.max_batch and files.size > self.max_batch:
            return (
                None,
                f"input tensor '{INPUT}' holds {files.size} files, above max_batch_size {self.max_batch}",
            )
        rid = request.request_id()
        pixels, sizes, verdicts, sources = [], [], [], []
        for k, element in enumerate(files):
            where = f"image {k}" + (f" of request '{rid}'" if rid else "")
            data, problem = self._payload(bytes(element), where)
            if problem:
                return None, problem
            try:  # a file that is no usable image is an error, refused or not
                t0 = time.perf_counter()
                image, size, source = self._decode(data, where)
                self.metrics.decode_seconds.observe(time.perf_counter() - t0)
            except self.images.DataError as e:
                return None, str(e)
            verdict = self.gate.judge_file(self.images.EncodedFile(data, where), self.relaxed)
            if not verdict.accepted:  # answered as refused: zeros, which the next step does not run
                image, size = np.zeros_like(image), (0, 0)
            pixels.append(image)
            sizes.append(size)
            verdicts.append(verdict)
            sources.append([json.dumps({**source, "request_id": rid}).encode()])
        accepted = np.array([[v.accepted] for v in verdicts], dtype=bool)
        reasons = np.array([[v.reason.encode()] for v in verdicts], dtype=np.object_)
        sources = np.array(sources, dtype=np.object_)
        return (
            np.stack(pixels)[:, None],
            np.asarray(sizes, dtype=np.int32),
            accepted,
            reasons,
            sources,
        ), None

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                result, problem = self._request(request)
            except Exception as e:  # noqa: BLE001 - the decoder failing, not the request: HTTP 500
                responses.append(failed(self.model_name, f"decoding failed ({type(e).__name__}: {e})"))
                self.metrics.request("failed")
                continue
            if problem:
                responses.append(invalid_input(self.model_name, problem))
                self.metrics.request("invalid")
                continue
            self.metrics.images_answered(result[2].reshape(-1))
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, value) for name, value in zip(OUTPUTS, result)]
                )
            )
        return responses

    def finalize(self):
        self.images = self.gate = self.metrics = None
