"""Triton python-backend model shared by every graph model of the CPU flavour: one ONNX file of
a MultiMix export, run on CPU with onnxruntime or OpenVINO.

``build_repository`` copies this one file into each model's version folder ``1/``, beside the
package ``mmtrt_backend``: the modules of the mmtrt that built the repository this model runs
(mmtrt.runtimes.ort and .openvino make its session or compiled model, mmtrt.files hashes,
mmtrt.serving.settings reads its parameters, mmtrt.serving.python_backend answers errors). What
differs between the models lives in their ``config.pbtxt``:

- its parameters, a ``GraphSettings`` (mmtrt/serving/settings.py): ``onnx_file``, the ONNX file in
  the version folder (``multimix.onnx``, ``encoder.onnx``, ...) beside the export's
  ``manifest.json``, whose sha256 must match the manifest or the model refuses to load;
  ``runtime`` (``onnxruntime`` or ``openvino``) and why it was chosen (``runtime_choice``);
  ``precision``: ``fp32``, or ``bf16`` / ``fp16`` when ``onnx_file`` is the export's
  mixed-precision copy (its reduced convolutions typed so in the file; OpenVINO is always
  compiled with precision hint f32, and the file's own types decide; a reduced copy on a host
  without that hardware loads with a warning: OpenVINO emulates it, slowly); onnxruntime's
  intra-op threads (``ort_intra_op_threads``, 0: its default) and OpenVINO's threads, streams and
  compiled-blob cache (``ov_num_threads``, ``ov_num_streams``, ``ov_cache_dir``). A missing or
  invalid parameter stops the load, naming it;
- the ``input`` (one image tensor) and the ``output`` list: each output is the ONNX output of the
  same name, except ``probs`` and ``label``, which apply the calibration the export's manifest
  records (mmtrt/calibration.py: a temperature and a threshold on P(PNEUMONIA); without one,
  ``probs`` is the graph's and ``label`` its argmax): ``probs`` the calibrated probabilities,
  ``label`` the class at the operating point (INT64 [n, 1]).
  The ONNX graph may have more outputs than the config lists (e.g. the encoder's skips): they are
  not computed for the response;
- the image gate inside the graph (mmtrt/ood.py): ``ood_score`` and ``in_distribution`` (BOOL
  [n, 1]: the score at or below the threshold the export fitted). An image out of distribution
  is answered with its score and false, and every other output zeros and its label -1: nothing
  of it can be taken for a result;
- optionally, the input ``accepted`` (BOOL [n, 1], ``optional: true``): the input gate's verdict
  on each image's DICOM header, which ``file_decoder`` gives in the ensemble ``multimix_image``.
  An image given false is not run: its outputs are zeros (``in_distribution`` false, score 0)
  and its label -1. A request without it has every image accepted. With it, ``file_decoder`` also
  gives ``refusal_reason`` and ``source`` (BYTES [n, 1]: what names each file), for the audit
  trail;
- with the parameter ``audit_dir`` (an ``AuditSettings``), one JSON line per image answered or
  refused in ``<audit_dir>/<instance>.jsonl`` (mmtrt/serving/audit.py); every request also moves
  the Prometheus metrics of mmtrt/serving/model_metrics.py.

Every request is validated on its own (dtype, shape, batch size, finite values); the valid
requests of one execution (dynamic batching) run as one batch and are split back, an
invalid one gets its own error response, and so does one whose outputs are not finite (a finite
input far outside [0, 1] can overflow float32 inside the graph). Both are answered as invalid
input (HTTP 400, gRPC INVALID_ARGUMENT); a runtime failure stays an internal error (HTTP 500).

Structure follows the official python-backend examples (initialize / execute / finalize).
"""

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from mmtrt_backend import files, openvino, ort
from mmtrt_backend.audit import AuditLog, new_request_id, source_of_tensor
from mmtrt_backend.calibration import Calibration, CalibrationError
from mmtrt_backend.gate import out_of_distribution
from mmtrt_backend.model_metrics import ModelMetrics
from mmtrt_backend.python_backend import failed, invalid_input, load_error, read_settings
from mmtrt_backend.settings import GraphSettings

LABEL = "label"  # derived output: the class of PROBS at the export's operating point
PROBS = "probs"
MASK = "mask"
OOD_SCORE = "ood_score"  # the image gate's outputs, kept for an image out of distribution
IN_DISTRIBUTION = "in_distribution"
ACCEPTED = "accepted"  # optional input: the input gate's verdict per image
REASON = "refusal_reason"  # optional input: why the gate refused an image
SOURCE = "source"  # optional input: what the audit trail names an image's file by (JSON)
OPTIONAL_INPUTS = (ACCEPTED, REASON, SOURCE)  # the ones file_decoder gives in multimix_image
REFUSED_LABEL = -1  # the label of an image not run (refused by the gate)


def _verified_onnx_path(version_dir, onnx_name, model_name):
    """(path of the ONNX file, the manifest beside it), the file's sha256 checked against it."""
    onnx_path = os.path.join(version_dir, onnx_name)
    manifest_path = os.path.join(version_dir, "manifest.json")
    if not os.path.isfile(onnx_path):
        raise load_error(model_name, f"ONNX file {onnx_path} is missing")
    if not os.path.isfile(manifest_path):
        raise load_error(
            model_name, f"{manifest_path} is missing: cannot verify {onnx_name}; refusing to load"
        )
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    expected = manifest.get("files", {}).get(onnx_name, {}).get("sha256")
    if not expected:
        raise load_error(model_name, f"{manifest_path} lists no sha256 for {onnx_name}; refusing to load")
    actual = files.file_sha256(onnx_path)
    if actual.lower() != expected.lower():
        raise load_error(
            model_name,
            f"sha256 mismatch for {onnx_path}: manifest says {expected}, file has {actual}. "
            "The file was modified or corrupted after export (tampered file); refusing to load",
        )
    return onnx_path, manifest


def _runner(path, settings, model_name):
    """The runner of mmtrt.runtimes (ort or openvino) that ``settings`` ask for."""
    if settings.runtime == "onnxruntime":
        return ort.runner(path, threads=settings.onnxruntime.threads)
    if settings.precision != "fp32" and not openvino.host_has(settings.precision):
        pb_utils.Logger.log_warn(
            f"model '{model_name}': {os.path.basename(path)} is a {settings.precision} copy but this "
            f"host has no {settings.precision} hardware (no {' / '.join(openvino.NATIVE_FLAGS[settings.precision])} "
            "CPU flag, not in OpenVINO's OPTIMIZATION_CAPABILITIES): OpenVINO emulates it, slowly; "
            "serve the fp32 graph here"
        )
    ov = settings.openvino
    return openvino.runner(path, threads=ov.threads, streams=ov.streams, cache_dir=ov.cache_dir or None)


def _shape_fits(onnx_shape, batched_dims):
    """Does an ONNX shape ([batch, ...], symbolic dims as str/None) fit the config dims?"""
    if len(onnx_shape) != len(batched_dims):
        return False
    return all(
        not isinstance(have, int) or want == -1 or have == want
        for have, want in zip(onnx_shape, batched_dims)
    )


_SOURCE_KEYS = ("sop_instance_uid", "file_sha256", "request_id")
_MAX_TEXT = 512  # a client can send the optional inputs itself: what it says is bounded


def _named_source(text):
    """What names a file, from file_decoder's ``source`` (JSON); anything else a client sent as
    that input is kept only as a bounded claim, never trusted as a name."""
    try:
        source = json.loads(text)
    except ValueError:
        source = None
    if (
        isinstance(source, dict)
        and source
        and all(k in _SOURCE_KEYS and isinstance(v, str) for k, v in source.items())
    ):
        return {k: v[:_MAX_TEXT] for k, v in source.items()}
    return {"claimed": text[:_MAX_TEXT]}


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


class TritonPythonModel:
    """One ONNX graph of a MultiMix export served with onnxruntime or OpenVINO."""

    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.max_batch = int(model_config.get("max_batch_size", 0))
        settings = read_settings(GraphSettings, model_config, self.model_name)
        self.runtime = settings.runtime

        inputs = [i for i in model_config["input"] if not i.get("optional")]
        optional = [i["name"] for i in model_config["input"] if i.get("optional")]
        if len(inputs) != 1 or not set(optional) <= set(OPTIONAL_INPUTS):
            raise load_error(
                self.model_name,
                f"expected one input in config.pbtxt (and optionally {', '.join(OPTIONAL_INPUTS)}), got "
                f"{[i['name'] for i in model_config['input']]}",
            )
        self.input_name = inputs[0]["name"]
        self.input_dims = tuple(int(d) for d in inputs[0]["dims"])
        self.input_dtype = pb_utils.triton_string_to_numpy(inputs[0]["data_type"])
        # (name, numpy dtype) of every output, in the config's order
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in model_config["output"]
        ]
        self.output_dims = {o["name"]: [int(d) for d in o["dims"]] for o in model_config["output"]}

        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path, manifest = _verified_onnx_path(version_dir, settings.onnx_file, self.model_name)
        try:
            self.calibration = Calibration.from_manifest(manifest)
        except CalibrationError as e:
            raise load_error(self.model_name, f"{version_dir}/manifest.json: {e}") from None
        self.runner = _runner(onnx_path, settings, self.model_name)
        validation = (manifest.get("calibration") or {}).get("validation") or {}
        baseline = validation if "mean_pneumonia_probability" in validation else None
        self.metrics = ModelMetrics(self.model_name, args["model_version"], baseline)
        self.version = args["model_version"]
        self.checkpoint_sha256 = (manifest.get("checkpoint") or {}).get("sha256")
        self.ood_threshold = (manifest.get("ood") or {}).get("threshold")  # for the audit's reasons
        audit = settings.audit
        self.audit = (
            AuditLog(audit.folder, args["model_instance_name"], audit.max_mib * 2**20, audit.backups)
            if audit.folder
            else None
        )

        # The graph must have the config's input and every config output (or probs for label).
        have_in = self.runner.inputs
        have_out = self.runner.output_shapes
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
            raise load_error(
                self.model_name, f"{onnx_path} does not fit config.pbtxt: " + "; ".join(problems)
            )
        # The ONNX outputs to compute: the config's, plus probs when label derives from it, plus
        # the image gate's verdict, which decides what is answered.
        self.fetch = [name for name, _ in self.outputs if name in have_out]
        if (
            any(name == LABEL and LABEL not in have_out for name, _ in self.outputs)
            and PROBS not in self.fetch
        ):
            self.fetch.append(PROBS)
        if IN_DISTRIBUTION in have_out and IN_DISTRIBUTION not in self.fetch:
            self.fetch.append(IN_DISTRIBUTION)

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

    def _accepted(self, request, n):
        """(the images of a request the gate accepted: bool [n], None), or (None, problem)."""
        tensor = pb_utils.get_input_tensor_by_name(request, ACCEPTED)
        if tensor is None:
            return np.ones(n, dtype=bool), None
        accepted = tensor.as_numpy()
        if accepted.dtype != np.bool_ or accepted.size != n:
            return None, (
                f"input tensor '{ACCEPTED}' has data type {accepted.dtype} and {accepted.size} values, "
                f"expected bool, one per image ({n})"
            )
        return accepted.reshape(n), None

    def _run(self, batch, accepted):
        """(the config's outputs for ``batch``, the images answered: bool [n]). The graph runs on
        the accepted images; the answered ones are those it also finds in distribution. Every
        other image's outputs are zeros (label -1), except the image gate's own for an image it
        ran on."""
        results = {}
        answered = accepted.copy()
        if accepted.any():
            images = batch if accepted.all() else batch[accepted]  # (a mask copies)
            results = self.runner({self.input_name: images}, outputs=self.fetch)
            if PROBS in results:  # the label from the graph's probabilities, then the calibrated ones
                if any(name == LABEL for name, _ in self.outputs):
                    results[LABEL] = self.calibration.labels(results[PROBS]).reshape(-1, 1)
                results[PROBS] = self.calibration.probabilities(results[PROBS])
            if IN_DISTRIBUTION in results:
                answered[accepted] = results[IN_DISTRIBUTION].reshape(-1)
        outputs = []
        for name, dtype in self.outputs:
            if answered.all():
                outputs.append((name, results[name].astype(dtype, copy=False)))
                continue
            value = np.full(
                [len(batch), *self.output_dims[name]], REFUSED_LABEL if name == LABEL else 0, dtype=dtype
            )
            if name in results and name in (OOD_SCORE, IN_DISTRIBUTION):
                value[accepted] = results[name]
            elif name in results:  # (none when no image of the batch was run)
                value[answered] = results[name][answered[accepted]]
            outputs.append((name, value))
        return outputs, answered

    def _strings(self, request, name, n):
        """The optional BYTES input ``name`` of a request as n strings (None when absent)."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        values = tensor.as_numpy().reshape(-1)
        if values.size != n:
            return None
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]

    def _audit(self, request, arr, ok, scored, parts, started):
        """One audit line per image of an answered request (answered or refused by a gate)."""
        n = arr.shape[0]
        sources = self._strings(request, SOURCE, n)
        reasons = self._strings(request, REASON, n) or [""] * n
        answer = dict(parts)
        for k in np.flatnonzero(scored & ~ok):  # run, and refused by the image gate
            reasons[k] = out_of_distribution(float(answer[OOD_SCORE][k].reshape(-1)[0]), self.ood_threshold)
        request_id = request.request_id()
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        for k in range(n):
            source = _named_source(sources[k]) if sources else source_of_tensor(arr[k])
            request_id = request_id or source.pop("request_id", "") or new_request_id()
            source.pop("request_id", None)
            line = {
                "request_id": request_id,
                "model": self.model_name,
                "version": self.version,
                "checkpoint_sha256": self.checkpoint_sha256,
                "image": k,
                "source": source,
                "outcome": "answered" if ok[k] else "refused",
                "gate": {"accepted": bool(ok[k]), "reason": reasons[k][:_MAX_TEXT]},
                "latency_ms": latency_ms,
            }
            if scored[k] and OOD_SCORE in answer:
                line["ood_score"] = round(float(answer[OOD_SCORE][k].reshape(-1)[0]), 6)
            if ok[k] and LABEL in answer:
                line["label"] = int(answer[LABEL][k].reshape(-1)[0])
            if ok[k] and PROBS in answer:
                line["p_pneumonia"] = round(float(answer[PROBS][k][1]), 6)
            self.audit.write(**line)

    def execute(self, requests):
        started = time.perf_counter()
        responses = [None] * len(requests)
        valid = []  # (request index, input array, accepted per image)
        for i, request in enumerate(requests):
            arr, problem = self._check(request)
            if problem is None:
                accepted, problem = self._accepted(request, arr.shape[0])
            if problem is None:
                valid.append((i, arr, accepted))
            else:
                responses[i] = invalid_input(self.model_name, problem)
                self.metrics.request("invalid")
        if not valid:
            return responses

        batch = valid[0][1] if len(valid) == 1 else np.concatenate([a for _, a, _ in valid])
        accepted = np.concatenate([ok for _, _, ok in valid])
        try:
            outputs, answered = self._run(batch, accepted)
        except Exception as e:  # runtime failure: every request of the batch gets it
            for i, _, _ in valid:
                responses[i] = failed(self.model_name, f"{self.runtime} failed: {e}")
                self.metrics.request("failed")
            return responses

        start = 0
        for i, arr, _ in valid:
            stop = start + arr.shape[0]
            ok = answered[start:stop]
            parts = [(name, value[start:stop]) for name, value in outputs]
            problem = _non_finite(parts, arr)
            if problem:  # never answer NaN: e.g. finite inputs near the float32 maximum
                responses[i] = invalid_input(self.model_name, problem)
                self.metrics.request("invalid")
            else:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in parts
                    ]
                )
                mine = {name: value for name, value in parts if name in (PROBS, LABEL, MASK, OOD_SCORE)}
                scored = accepted[start:stop]  # the images the graph ran on have a score
                self.metrics.images_answered(
                    ok,
                    *(mine[n][ok] if n in mine else None for n in (PROBS, LABEL, MASK)),
                    ood_scores=mine[OOD_SCORE][scored] if OOD_SCORE in mine else None,
                )
                if self.audit is not None:
                    try:
                        self._audit(requests[i], arr, ok, scored, parts, started)
                    except Exception as e:  # noqa: BLE001 - the answer stands; the log says what is missing
                        pb_utils.Logger.log_error(f"model '{self.model_name}': audit line not written: {e}")
            start = stop
        return responses

    def finalize(self):
        if self.audit is not None:
            self.audit.close()
        self.runner = self.metrics = self.audit = None
