"""Triton python-backend model "multimix": the fused MultiMix graph on onnxruntime (CPU).

Input  image    FP32 [n, 1, 256, 256], values in [0, 1]
Output probs    FP32 [n, 2]            softmax class probabilities (0 NORMAL, 1 PNEUMONIA)
       label    INT64 [n, 1]           argmax of probs
       mask     FP32 [n, 1, 256, 256]  lung-mask probabilities
       saliency FP32 [n, 1, 256, 256]

The ONNX file (config parameter "onnx_file") lies in this version folder beside the export's
manifest.json; its sha256 must match the manifest or the model refuses to load. Each request is
validated on its own; the valid ones of one execution (dynamic batching) run as one batch, an
invalid one gets its own error response.

Structure follows the official python-backend examples (initialize / execute / finalize).
"""

import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT = "image"
IMAGE_SHAPE = (1, 256, 256)
ONNX_OUTPUTS = ["probs", "mask", "saliency"]  # outputs of multimix.onnx, in this order


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified_onnx_path(version_dir, onnx_name):
    """Path of the ONNX file after checking its sha256 against the manifest beside it."""
    onnx_path = os.path.join(version_dir, onnx_name)
    manifest_path = os.path.join(version_dir, "manifest.json")
    if not os.path.isfile(onnx_path):
        raise pb_utils.TritonModelException(f"ONNX file {onnx_path} is missing")
    if not os.path.isfile(manifest_path):
        raise pb_utils.TritonModelException(
            f"{manifest_path} is missing: cannot verify {onnx_name}; refusing to load")
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    expected = manifest.get("files", {}).get(onnx_name, {}).get("sha256")
    if not expected:
        raise pb_utils.TritonModelException(
            f"{manifest_path} lists no sha256 for {onnx_name}; refusing to load")
    actual = _sha256(onnx_path)
    if actual.lower() != expected.lower():
        raise pb_utils.TritonModelException(
            f"sha256 mismatch for {onnx_path}: manifest says {expected}, file has {actual}. "
            "The file was modified or corrupted after export (tampered file); refusing to load")
    return onnx_path


def _check_image(request, max_batch):
    """(array, None) for a valid request, (None, message) otherwise."""
    tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
    if tensor is None:
        return None, f"missing input tensor '{INPUT}'"
    arr = tensor.as_numpy()
    if arr.dtype != np.float32:
        return None, (f"input tensor '{INPUT}' has data type {arr.dtype}, "
                      "expected float32 (TYPE_FP32)")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != IMAGE_SHAPE or arr.shape[0] < 1:
        return None, (f"input tensor '{INPUT}' has shape {list(arr.shape)}, expected "
                      f"[n, {', '.join(map(str, IMAGE_SHAPE))}] with n >= 1")
    if max_batch and arr.shape[0] > max_batch:
        return None, (f"input tensor '{INPUT}' has batch size {arr.shape[0]}, "
                      f"above max_batch_size {max_batch}")
    if not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        return None, (f"input tensor '{INPUT}' contains non-finite values "
                      f"({n_nan} NaN, {n_inf} Inf); all values must be finite")
    return arr, None


class TritonPythonModel:
    """MultiMix fused graph served with onnxruntime."""

    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.max_batch = int(self.model_config.get("max_batch_size", 0))
        params = self.model_config.get("parameters", {})
        onnx_name = params.get("onnx_file", {}).get("string_value") or "multimix.onnx"
        threads = int(params.get("ort_intra_op_threads", {}).get("string_value") or 0)

        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path = _verified_onnx_path(version_dir, onnx_name)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, sess_options=options,
                                            providers=["CPUExecutionProvider"])
        have_in = [i.name for i in self.session.get_inputs()]
        have_out = [o.name for o in self.session.get_outputs()]
        if have_in != [INPUT] or not set(ONNX_OUTPUTS) <= set(have_out):
            raise pb_utils.TritonModelException(
                f"{onnx_path} has inputs {have_in} and outputs {have_out}; expected input "
                f"['{INPUT}'] and outputs {ONNX_OUTPUTS}")

    def execute(self, requests):
        responses = [None] * len(requests)
        valid = []  # (request index, image array)
        for i, request in enumerate(requests):
            arr, problem = _check_image(request, self.max_batch)
            if problem is None:
                valid.append((i, arr))
            else:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"model '{self.model_name}': {problem}"))
        if not valid:
            return responses

        batch = valid[0][1] if len(valid) == 1 else np.concatenate([a for _, a in valid])
        try:
            probs, mask, saliency = self.session.run(ONNX_OUTPUTS, {INPUT: batch})
        except Exception as e:  # onnxruntime failure: every request of the batch gets it
            for i, _ in valid:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"model '{self.model_name}': onnxruntime failed: {e}"))
            return responses
        probs = probs.astype(np.float32, copy=False)
        label = np.argmax(probs, axis=1).astype(np.int64).reshape(-1, 1)

        start = 0
        for i, arr in valid:
            stop = start + arr.shape[0]
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("probs", np.ascontiguousarray(probs[start:stop])),
                pb_utils.Tensor("label", np.ascontiguousarray(label[start:stop])),
                pb_utils.Tensor("mask", np.ascontiguousarray(mask[start:stop])),
                pb_utils.Tensor("saliency", np.ascontiguousarray(saliency[start:stop])),
            ])
            start = stop
        return responses

    def finalize(self):
        self.session = None
