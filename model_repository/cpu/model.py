"""Triton python-backend model shared by every model of the CPU flavour: one ONNX file of a
MultiMix export, run on CPU with onnxruntime or OpenVINO.

``build_repository`` copies this one file into each model's version folder ``1/``; what differs
between the models lives in their ``config.pbtxt``:

- parameter ``onnx_file``: the ONNX file in the version folder (``multimix.onnx``,
  ``encoder.onnx``, ...), beside the export's ``manifest.json``. Its sha256 must match the
  manifest or the model refuses to load;
- parameter ``runtime``: ``onnxruntime`` (the default when absent) or ``openvino``;
- parameter ``ort_intra_op_threads``: onnxruntime's intra-op threads (0: its default);
- parameter ``precision``: ``fp32``, or ``bf16`` / ``fp16`` when ``onnx_file`` is the export's
  mixed-precision copy (its reduced convolutions typed so in the file); OpenVINO is always
  compiled with precision hint f32, since its CPU plugin otherwise runs bf16 by default on bf16
  hardware, and the file's own types decide; a reduced copy on a host without that hardware
  loads with a warning (OpenVINO emulates it, slowly);
- parameters ``ov_num_threads`` (0: OpenVINO's default), ``ov_num_streams`` and ``ov_cache_dir``
  (compiled-blob cache; empty: none) for OpenVINO;
- the ``input`` (one image tensor) and the ``output`` list: each output is the ONNX output of the
  same name, except ``label`` when the graph has none: the argmax of ``probs`` (INT64 [n, 1]).
  The ONNX graph may have more outputs than the config lists (e.g. the encoder's skips): they are
  not computed for the response.

Every request is validated on its own (dtype, shape, batch size, finite values); the valid
requests of one execution (dynamic batching) run as one batch and are split back, an
invalid one gets its own error response, and so does one whose outputs are not finite (a finite
input far outside [0, 1] can overflow float32 inside the graph). Both are answered as invalid
input (``TritonError.INVALID_ARG``: HTTP 400, gRPC INVALID_ARGUMENT); an onnxruntime failure stays
an internal error (HTTP 500).

Structure follows the official python-backend examples (initialize / execute / finalize).
"""

import hashlib
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

LABEL = "label"  # derived output: argmax of PROBS
PROBS = "probs"


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
            f"{manifest_path} is missing: cannot verify {onnx_name}; refusing to load"
        )
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    expected = manifest.get("files", {}).get(onnx_name, {}).get("sha256")
    if not expected:
        raise pb_utils.TritonModelException(
            f"{manifest_path} lists no sha256 for {onnx_name}; refusing to load"
        )
    actual = _sha256(onnx_path)
    if actual.lower() != expected.lower():
        raise pb_utils.TritonModelException(
            f"sha256 mismatch for {onnx_path}: manifest says {expected}, file has {actual}. "
            "The file was modified or corrupted after export (tampered file); refusing to load"
        )
    return onnx_path


def _shape_fits(onnx_shape, batched_dims):
    """Does an ONNX shape ([batch, ...], symbolic dims as str/None) fit the config dims?"""
    if len(onnx_shape) != len(batched_dims):
        return False
    return all(
        not isinstance(have, int) or want == -1 or have == want
        for have, want in zip(onnx_shape, batched_dims)
    )


def _invalid_input(message):
    """The error of a request whose own input is at fault: Triton answers it as invalid input
    (HTTP 400, gRPC INVALID_ARGUMENT), not as a server failure (HTTP 500, gRPC INTERNAL), so that
    clients know not to send it again. ``TritonError(message, code)``: the code argument and
    ``TritonError.INVALID_ARG`` are in the stub of Triton 2.51 (r24.10); an older stub takes the
    message alone (then the code stays INTERNAL)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if code is None:  # pragma: no cover - python-backend stubs before code support
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


def _non_finite(parts, arr):
    """A message if an output of one request holds NaN or Inf, else None. Finite inputs can still
    overflow float32 inside the graph (values near 3.4e38); that request gets an error instead of
    NaN probabilities (and a label that would be argmax of NaN)."""
    bad = [
        f"{name} ({int((~np.isfinite(value)).sum())})"
        for name, value in parts
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all()
    ]
    if not bad:
        return None
    return (
        f"the outputs for this input are not finite: non-finite values in {', '.join(bad)}; "
        f"the input's values range from {float(arr.min()):.4g} to {float(arr.max()):.4g}, "
        "images are expected in [0, 1]"
    )


class _OnnxRuntime:
    """An onnxruntime CPU session: input names, output shapes, run(fetch, feed)."""

    def __init__(self, path, params):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_param(params, "ort_intra_op_threads") or 0)  # 0: default
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output_shapes = {o.name: o.shape for o in self.session.get_outputs()}

    def run(self, fetch, feed):
        return self.session.run(fetch, feed)


class _OpenVINO:
    """An OpenVINO CPU compiled model, precision hint f32 (the file's own types decide)."""

    def __init__(self, path, params, model_name):
        import openvino as ov

        core = ov.Core()
        precision = _param(params, "precision") or "fp32"
        capability = {"bf16": "BF16", "fp16": "FP16"}.get(precision)
        if capability and capability not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            pb_utils.Logger.log_warn(
                f"model '{model_name}': {os.path.basename(path)} is a {precision} copy but this host "
                f"has no {precision} hardware ({capability} missing from OpenVINO's "
                "OPTIMIZATION_CAPABILITIES): OpenVINO emulates it, slowly; serve the fp32 graph here"
            )
        cache_dir = _param(params, "ov_cache_dir")
        if cache_dir:
            core.set_property({"CACHE_DIR": cache_dir})
        props = {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": str(int(_param(params, "ov_num_streams") or 1)),
        }
        threads = int(_param(params, "ov_num_threads") or 0)
        if threads:
            props["INFERENCE_NUM_THREADS"] = str(threads)
        model = core.read_model(path)
        self.inputs = [i.get_any_name() for i in model.inputs]
        self.output_shapes = {
            o.get_any_name(): [d.get_length() if d.is_static else None for d in o.get_partial_shape()]
            for o in model.outputs
        }
        self.compiled = core.compile_model(model, "CPU", props)
        self.request = self.compiled.create_infer_request()

    def run(self, fetch, feed):
        results = self.request.infer(feed, share_inputs=False, share_outputs=False)
        by_name = {o.get_any_name(): results[o] for o in self.compiled.outputs}
        return [by_name[name] for name in fetch]


RUNTIMES = ("onnxruntime", "openvino")


def _param(params, key):
    return params.get(key, {}).get("string_value")


class TritonPythonModel:
    """One ONNX graph of a MultiMix export served with onnxruntime or OpenVINO."""

    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.max_batch = int(model_config.get("max_batch_size", 0))
        params = model_config.get("parameters", {})
        onnx_name = params.get("onnx_file", {}).get("string_value")
        if not onnx_name:
            raise pb_utils.TritonModelException(
                f"model '{self.model_name}': config.pbtxt sets no 'onnx_file' parameter"
            )
        self.runtime = _param(params, "runtime") or "onnxruntime"
        if self.runtime not in RUNTIMES:
            raise pb_utils.TritonModelException(
                f"model '{self.model_name}': config.pbtxt parameter runtime is {self.runtime!r}: "
                f"choose from {', '.join(RUNTIMES)}"
            )

        inputs = model_config["input"]
        if len(inputs) != 1:
            raise pb_utils.TritonModelException(
                f"model '{self.model_name}': expected one input in config.pbtxt, "
                f"got {[i['name'] for i in inputs]}"
            )
        self.input_name = inputs[0]["name"]
        self.input_dims = tuple(int(d) for d in inputs[0]["dims"])
        self.input_dtype = pb_utils.triton_string_to_numpy(inputs[0]["data_type"])
        # (name, numpy dtype) of every output, in the config's order
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in model_config["output"]
        ]

        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path = _verified_onnx_path(version_dir, onnx_name)
        if self.runtime == "openvino":
            self.session = _OpenVINO(onnx_path, params, self.model_name)
        else:
            self.session = _OnnxRuntime(onnx_path, params)

        # The graph must have the config's input and every config output (or probs for label).
        have_in = self.session.inputs
        have_out = self.session.output_shapes
        problems = []
        if have_in != [self.input_name]:
            problems.append(f"inputs {have_in}, config.pbtxt expects ['{self.input_name}']")
        batch = [-1] if self.max_batch > 0 else []
        for o in model_config["output"]:
            name, dims = o["name"], batch + [int(d) for d in o["dims"]]
            if name in have_out:
                if not _shape_fits(have_out[name], dims):
                    problems.append(f"output '{name}' has shape {have_out[name]}, config.pbtxt says {dims}")
            elif not (name == LABEL and PROBS in have_out):
                problems.append(f"no output '{name}'")
        if problems:
            raise pb_utils.TritonModelException(
                f"model '{self.model_name}': {onnx_path} does not fit config.pbtxt: " + "; ".join(problems)
            )
        # The ONNX outputs to compute: the config's, plus probs when label derives from it.
        self.fetch = [name for name, _ in self.outputs if name in have_out]
        if (
            any(name == LABEL and LABEL not in have_out for name, _ in self.outputs)
            and PROBS not in self.fetch
        ):
            self.fetch.append(PROBS)

    def _check(self, request):
        """(array, None) for a valid request, (None, message) otherwise."""
        name = self.input_name
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None, f"missing input tensor '{name}'"
        arr = tensor.as_numpy()
        if arr.dtype != self.input_dtype:
            return None, (
                f"input tensor '{name}' has data type {arr.dtype}, expected {np.dtype(self.input_dtype).name}"
            )
        lead = 1 if self.max_batch > 0 else 0
        if (
            arr.ndim != len(self.input_dims) + lead
            or tuple(arr.shape[lead:]) != self.input_dims
            or (lead and arr.shape[0] < 1)
        ):
            want = ", ".join(map(str, self.input_dims))
            return None, (
                f"input tensor '{name}' has shape {list(arr.shape)}, expected "
                + (f"[n, {want}] with n >= 1" if lead else f"[{want}]")
            )
        if self.max_batch and arr.shape[0] > self.max_batch:
            return None, (
                f"input tensor '{name}' has batch size {arr.shape[0]}, above max_batch_size {self.max_batch}"
            )
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(np.isinf(arr).sum())
            return None, (
                f"input tensor '{name}' contains non-finite values "
                f"({n_nan} NaN, {n_inf} Inf); all values must be finite"
            )
        return arr, None

    def execute(self, requests):
        responses = [None] * len(requests)
        valid = []  # (request index, input array)
        for i, request in enumerate(requests):
            arr, problem = self._check(request)
            if problem is None:
                valid.append((i, arr))
            else:
                responses[i] = pb_utils.InferenceResponse(
                    error=_invalid_input(f"model '{self.model_name}': {problem}")
                )
        if not valid:
            return responses

        batch = valid[0][1] if len(valid) == 1 else np.concatenate([a for _, a in valid])
        try:
            results = dict(zip(self.fetch, self.session.run(self.fetch, {self.input_name: batch})))
        except Exception as e:  # runtime failure: every request of the batch gets it
            for i, _ in valid:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"model '{self.model_name}': {self.runtime} failed: {e}")
                )
            return responses
        if LABEL not in results and any(name == LABEL for name, _ in self.outputs):
            results[LABEL] = np.argmax(results[PROBS], axis=1).reshape(-1, 1)
        outputs = [(name, results[name].astype(dtype, copy=False)) for name, dtype in self.outputs]

        start = 0
        for i, arr in valid:
            stop = start + arr.shape[0]
            parts = [(name, value[start:stop]) for name, value in outputs]
            problem = _non_finite(parts, arr)
            if problem:  # never answer NaN: e.g. finite inputs near the float32 maximum
                responses[i] = pb_utils.InferenceResponse(
                    error=_invalid_input(f"model '{self.model_name}': {problem}")
                )
            else:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in parts
                    ]
                )
            start = stop
        return responses

    def finalize(self):
        self.session = None
