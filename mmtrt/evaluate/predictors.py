"""What `mmtrt evaluate` evaluates: a checkpoint run in this process, or a model served by Triton.

Both take the same float32 images [B, 1, 256, 256] in [0, 1] (as mmtrt.data's loaders give them)
and return the same arrays, so the same images give the same numbers either way:

    probs     [B, 2]       the class probabilities (NORMAL, PNEUMONIA) the model answers: softmax
                           of the class logits, calibrated (mmtrt.calibration) when it has a
                           calibration
    label     [B]          the class it answers (0 NORMAL, 1 PNEUMONIA): at its operating point
    mask      [B, H, W]    foreground probability (sigmoid of the mask logits)
    saliency  [B, H, W]    |d logit[argmax] / d image| (the saliency graph)
    answered  [B] bool     the images its image gate (mmtrt.ood) finds in distribution: the others
                           are refused (a served model's outputs for them are zeros)

A checkpoint given a :class:`~mmtrt.calibration.Calibration` (an export's, ``mmtrt evaluate
--calibration``) applies it as the served models do, and also returns ``uncalibrated_probs``, the
softmax before it. A served model answers its own export's calibration (its ``probs`` and
``label`` outputs; the argmax where a model has no ``label``). Likewise for the image gate: a
checkpoint given the export's gate statistics (``ood.npz``) refuses what the served models refuse;
without them it answers every image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmtrt.serving.client import JOINT_MODEL, Servers

__all__ = ["EvaluateError", "CheckpointPredictor", "TritonPredictor"]


class EvaluateError(RuntimeError):
    """Evaluation cannot go on (bad input, unusable model or server); the message says why."""


class CheckpointPredictor:
    """A MultiMix checkpoint in eval mode (fp32, CPU unless told). The decoder gets the saliency
    unless the checkpoint was trained without the bridge (its train_config says
    saliency_bridge=false): then zeros, as in that model's training and validation."""

    kind = "checkpoint"

    def __init__(self, path: Path, name: str | None = None, device: str = "cpu", calibration=None, gate=None):
        import torch

        from mmtrt.checkpoint import CheckpointError, load_checkpoint

        self.path = Path(path)
        try:
            model, meta = load_checkpoint(self.path)
        except CheckpointError as e:
            raise EvaluateError(str(e)) from None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        cfg = meta.get("train_config") or {}
        self.bridge = bool(cfg.get("saliency_bridge", True))
        self.image_size = int(cfg.get("image_size", 256))  # what it was trained (and validated) at
        self.name = name or self.path.stem
        self.source = str(self.path)
        self.calibration = calibration
        if gate is not None:  # the export's image gate (mmtrt.ood statistics)
            self.model.ood.load(gate)

    def describe(self) -> dict:
        out = {
            "kind": self.kind,
            "source": self.source,
            "saliency_bridge": self.bridge,
            "image_size": self.image_size,
            "step": self.meta.get("step"),
            "origin": self.meta.get("origin"),
        }
        if self.calibration is not None:
            out["calibration"] = {
                "temperature": self.calibration.temperature,
                "threshold": self.calibration.threshold,
            }
        return out

    def _answer(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """probs and label as the served models answer them (and the softmax before calibration)."""
        if self.calibration is None:
            return {"probs": probs, "label": np.argmax(probs, 1)}
        return {
            "probs": self.calibration.probabilities(probs),
            "label": self.calibration.labels(probs),
            "uncalibrated_probs": probs,
        }

    def predict(self, images: np.ndarray, need_mask: bool = True) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        enc = self.model.encoder
        with torch.no_grad():  # (the saliency graph is explicit forward ops: no autograd)
            if not need_mask:
                logits, skips = enc(x)
                answered = self.model.ood(skips)[1].reshape(-1).cpu().numpy()
                return {**self._answer(torch.softmax(logits.float(), 1).cpu().numpy()), "answered": answered}
            logits, tape = enc.forward_with_tape(x)
            saliency = enc.input_gradient(logits, tape).abs()
            feed = saliency if self.bridge else torch.zeros_like(x)
            mask = torch.sigmoid(self.model.decoder(tape.skips, x, feed).float())
            answered = self.model.ood(tape.skips)[1].reshape(-1).cpu().numpy()
        return {
            **self._answer(torch.softmax(logits.float(), 1).cpu().numpy()),
            "answered": answered,
            "mask": mask[:, 0].cpu().numpy(),
            "saliency": saliency[:, 0].float().cpu().numpy(),
        }

    def close(self) -> None:
        pass


class TritonPredictor:
    """A MultiMix model on running Triton servers (``mmtrt serve``; one or several of the same
    model, used as one with fail-over: :class:`mmtrt.serving.client.Servers`): the images are
    sent as they are (FP32 [B, 1, 256, 256], in batches of at most the model's max_batch_size);
    the joint model's ``probs``, ``mask`` and ``saliency`` outputs come back. A request that
    fails transiently is sent again, as by every client of mmtrt (a server is given up after
    ``servers.retries`` failures in a row)."""

    kind = "triton"
    image_size = 256  # the exported graphs' input size

    def __init__(self, servers: Servers, model: str = JOINT_MODEL, name: str | None = None):
        from mmtrt.serving.errors import InferError

        self.model = model
        self.where = ", ".join(e.url for e in servers.endpoints) + f" ({servers.protocol})"
        self.name = name or f"triton:{model}"
        self.source = " ".join(f"{servers.protocol}://{e.url}/{model}" for e in servers.endpoints)
        self._servers = servers
        try:
            with self._servers.first_ready() as client:
                info = client.ready_model(model)
        except InferError as e:
            raise EvaluateError(str(e)) from None
        self.max_batch = info.max_batch_size
        missing = [o for o in self.OUTPUTS if o not in info.output_names]
        if missing:
            raise EvaluateError(
                f"model '{model}' at {self.where} has no {missing} output(s) (outputs: "
                f"{info.output_names}); evaluate needs the joint model (mmtrt repo's 'multimix')"
            )
        self.outputs = self.OUTPUTS + tuple(o for o in ("label", "in_distribution") if o in info.output_names)
        self._session = self._servers.session()

    OUTPUTS = ("probs", "mask", "saliency")

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "max_batch_size": self.max_batch}

    def predict(self, images: np.ndarray, need_mask: bool = True) -> dict[str, np.ndarray]:
        from mmtrt.serving.client import image_inputs

        images = np.ascontiguousarray(images, dtype=np.float32)
        step = self.max_batch or len(images)
        parts: list[dict[str, np.ndarray]] = []
        for s in range(0, len(images), step):
            try:
                answer = self._session.send(self.model, image_inputs(images[s : s + step]), self.outputs)
            except Exception as e:  # noqa: BLE001 - rejected, or the server gone for good
                raise EvaluateError(f"inference on {self.where} failed: {e}") from None
            parts.append(answer.outputs)
        probs = np.concatenate([p["probs"] for p in parts]).astype(np.float32)
        mask = np.concatenate([p["mask"] for p in parts])[:, 0].astype(np.float32)
        saliency = np.concatenate([p["saliency"] for p in parts])[:, 0].astype(np.float32)
        if "label" in self.outputs:
            label = np.concatenate([p["label"] for p in parts]).reshape(-1).astype(np.int64)
        else:  # a model without the label output (gpu flavour): serves uncalibrated exports only
            label = np.argmax(probs, 1)
        if "in_distribution" in self.outputs:
            answered = np.concatenate([p["in_distribution"] for p in parts]).reshape(-1).astype(bool)
        else:
            answered = np.ones(len(images), dtype=bool)
        return {"probs": probs, "label": label, "mask": mask, "saliency": saliency, "answered": answered}

    def close(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
