"""MultiMix: joint chest X-ray classification + lung segmentation with a saliency bridge.

Architecture (Haque et al., ISBI 2021 / MELBA 2021), input 1x256x256 in [0, 1]:

    encoder   5 x double_conv (1->16->32->64->128->256) with MaxPool2d(2) between stages
    head      MaxPool2d(2) -> global average pool -> Linear(256, 2)        (raw class logits)
    saliency  |d logit[predicted class] / d image|                         (1x256x256)
    decoder   bridge = cat(image, saliency) resized to 1/8, then
              cat(up(c5), c4, bridge) -> double_conv(386, 128) -> up, cat c3 -> ... -> Conv1x1(16, 1)
                                                                           (raw mask logits)

The saliency is computed by an explicit *saliency graph* (`Encoder.input_gradient`): the
input-gradient of the predicted-class logit written as forward ops (transposed convolutions with
the conv weights, the instance-norm backward formula, LeakyReLU and max-pool gates). It reuses the
activations of the one encoder pass that also produces the skips, so:
  * a joint forward runs the encoder once (the published code runs it twice plus a backward);
  * the saliency is bit-for-bit tied to that forward pass: a LeakyReLU sign or a max-pool winner
    decided by the forward is the same gate in the backward;
  * it is ordinary differentiable tensor code: training differentiates through it (a double
    backward without `autograd.grad(create_graph=True)`), `torch.compile` compiles it, and it
    exports to ONNX/TensorRT, which cannot export `torch.autograd.grad`.

`reference_saliency` computes the same map with `torch.autograd.grad`; tests hold the two together.

Fixes of the published code: eval mode is deterministic (dropout off), computing a saliency never
writes parameter gradients nor switches module modes, and there is no optimizer inside `forward`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmtrt.ood import OODGate

NUM_CLASSES = 2
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # alphabetical folder order, as in the Kermany dataset
ENCODER_WIDTHS = (16, 32, 64, 128, 256)
LEAKY_SLOPE = 0.2
DROPOUT = 0.25
NORM_EPS = 1e-5
BRIDGE_DOWNSAMPLE = 8  # the saliency bridge enters the decoder at 1/8 of the image size


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W, taken row by row and then over the rows: the same mean, but every
    running sum is one row long. Runtimes that reduce a whole plane into one float32 accumulator
    (onnxruntime's CPU ReduceMean) otherwise lose ~1e-4 of a channel's spread on images with flat
    black borders, enough to flip saliency gates."""
    return x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)


def instance_norm(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance norm without affine parameters (= nn.InstanceNorm2d's defaults), written out so
    that the saliency graph can reuse its exact forward values. Statistics are always taken in
    float32 (reduced-precision variance is a well-known source of wrong results).

    Returns the normalised tensor (at least float32) and the reciprocal standard deviation [B, C, 1, 1].
    """
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    centered = z - spatial_mean(z)
    rstd = torch.rsqrt(spatial_mean(centered * centered) + NORM_EPS)
    return centered * rstd, rstd


def instance_norm_input_gradient(
    grad: torch.Tensor, normed: torch.Tensor, rstd: torch.Tensor
) -> torch.Tensor:
    """Backward of `instance_norm`: dz = rstd * (dy - mean(dy) - y * mean(dy * y))."""
    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
    mean_grad = spatial_mean(grad)
    mean_grad_y = spatial_mean(grad * normed)
    return rstd * (grad - mean_grad - normed * mean_grad_y)


def leaky_relu_input_gradient(grad: torch.Tensor, pre_activation: torch.Tensor) -> torch.Tensor:
    """Backward of LeakyReLU: the slope is 1 where the input was > 0, else LEAKY_SLOPE (as autograd)."""
    # (a multiply by max(0/1 mask, slope) rather than Where: onnxruntime's Where is slow)
    return grad * (pre_activation > 0).to(grad.dtype).clamp_min(LEAKY_SLOPE)


def conv_input_gradient(grad: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Backward of a stride-1 'same' convolution with respect to its input: the transposed
    convolution with the same weights (the bias drops out)."""
    return F.conv2d(grad, conv.weight.flip(2, 3).transpose(0, 1), padding=conv.padding)


def max_pool_input_gradient(grad: torch.Tensor, pool_input: torch.Tensor) -> torch.Tensor:
    """Backward of MaxPool2d(2) without indices (no Scatter/MaxUnpool, so TensorRT can run it).

    Each 2x2 window sends its gradient to one element only: the first maximum in row-major order,
    which is the one PyTorch's max-pool picks. Windows with ties (flat black borders, saturated
    areas) are common in real X-rays, so "every element equal to the max" would be wrong.

    The winner is found by comparing the window's elements with each other, never with the pooled
    output: an equality test against a max computed elsewhere silently drops the gradient as soon
    as a compiler or runtime recomputes either side with different rounding.
    """
    _, c, h, w = grad.shape  # (-1 for the batch keeps shape arithmetic out of exported graphs)
    e0, e1, e2, e3 = (pool_input[:, :, row::2, col::2] for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)))
    # Element k wins if it is greater than every earlier element and not less than any later one.
    ge01, ge02, ge03, ge12, ge13, ge23 = e0 >= e1, e0 >= e2, e0 >= e3, e1 >= e2, e1 >= e3, e2 >= e3
    winners = (ge01 & ge02 & ge03, ~ge01 & ge12 & ge13, ~ge02 & ~ge12 & ge23, ~ge03 & ~ge13 & ~ge23)
    # (a multiply by a 0/1 mask rather than Where: onnxruntime's broadcasting Where is slow)
    shares = torch.stack([grad * wins.to(grad.dtype) for wins in winners], dim=2).reshape(-1, c * 4, h, w)
    # Interleave the four shares back into the full-resolution map: a depthwise stride-2
    # transposed convolution whose 2x2 kernels are one-hot puts share k at window position k
    # (exact: one term per output). Same result as pixel_shuffle, ~3x faster in onnxruntime,
    # whose DepthToSpace is a slow generic transpose.
    interleave = torch.eye(4, dtype=grad.dtype, device=grad.device).reshape(4, 1, 2, 2).repeat(c, 1, 1, 1)
    return F.conv_transpose2d(shares, interleave, stride=2, groups=c)


class BlockTape(NamedTuple):
    """What a ConvBlock's forward leaves for its input-gradient: the normalised pre-activations
    (their signs are the LeakyReLU gates), the instance-norm scales, and the dropout multiplier."""

    normed1: torch.Tensor
    rstd1: torch.Tensor
    normed2: torch.Tensor
    rstd2: torch.Tensor
    dropout_scale: torch.Tensor | None


class ConvBlock(nn.Module):
    """double_conv: (Conv3x3 -> InstanceNorm -> LeakyReLU(0.2)) x 2 -> element-wise Dropout(0.25)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = DROPOUT):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, tape: list[BlockTape] | None = None) -> torch.Tensor:
        normed1, rstd1 = instance_norm(self.conv1(x))
        normed2, rstd2 = instance_norm(self.conv2(F.leaky_relu(normed1, LEAKY_SLOPE)))
        out = F.leaky_relu(normed2, LEAKY_SLOPE)
        dropout_scale = None
        if self.training and self.dropout > 0:
            # An explicit mask rather than F.dropout: the saliency graph needs the same mask.
            keep = torch.rand_like(out) >= self.dropout
            dropout_scale = keep.to(out.dtype) / (1.0 - self.dropout)
            out = out * dropout_scale
        if tape is not None:
            tape.append(BlockTape(normed1, rstd1, normed2, rstd2, dropout_scale))
        return out

    def input_gradient(self, grad: torch.Tensor, tape: BlockTape) -> torch.Tensor:
        if tape.dropout_scale is not None:
            grad = grad * tape.dropout_scale
        grad = leaky_relu_input_gradient(grad, tape.normed2)
        grad = conv_input_gradient(instance_norm_input_gradient(grad, tape.normed2, tape.rstd2), self.conv2)
        grad = leaky_relu_input_gradient(grad, tape.normed1)
        return conv_input_gradient(instance_norm_input_gradient(grad, tape.normed1, tape.rstd1), self.conv1)


class EncoderOutput(NamedTuple):
    logits: torch.Tensor  # [B, 2] raw class logits
    skips: tuple[torch.Tensor, ...]  # c1..c5: [B,16,H,W], [B,32,H/2,W/2], ..., [B,256,H/16,W/16]


class EncoderTape(NamedTuple):
    """Everything the saliency graph needs from one encoder forward pass."""

    blocks: list[BlockTape]
    skips: tuple[torch.Tensor, ...]


class Encoder(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] = ENCODER_WIDTHS,
        num_classes: int = NUM_CLASSES,
        dropout: float = DROPOUT,
    ):
        super().__init__()
        channels = (in_channels, *widths)
        self.blocks = nn.ModuleList(
            ConvBlock(cin, cout, dropout) for cin, cout in zip(channels[:-1], channels[1:])
        )
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        logits, tape = self.forward_with_tape(images)
        return EncoderOutput(logits, tape.skips)

    def forward_with_tape(self, images: torch.Tensor) -> tuple[torch.Tensor, EncoderTape]:
        block_tapes: list[BlockTape] = []
        skips = []
        x = images
        for block in self.blocks:
            skips.append(block(x, block_tapes))
            x = F.max_pool2d(skips[-1], 2)  # between stages, and the head's after the last one
        logits = self.fc(x.mean(dim=(2, 3)))
        return logits, EncoderTape(block_tapes, tuple(skips))

    def input_gradient(self, logits: torch.Tensor, tape: EncoderTape) -> torch.Tensor:
        """d logit[predicted class] / d image, from the tape of the forward pass that made `logits`.

        Samples are independent (instance norm is per sample), so one backward of the summed
        predicted-class logits gives each sample its own gradient.
        """
        # The predicted class as a one-hot mask (argmax picks the first maximum, like autograd's
        # reference); a multiply rather than a gather keeps Scatter/Gather out of exported graphs.
        classes = torch.arange(logits.shape[1], device=logits.device)
        one_hot = (logits.argmax(dim=1, keepdim=True) == classes).to(self.fc.weight.dtype)
        grad = one_hot @ self.fc.weight  # [B, C5], through the linear layer
        pooled_h, pooled_w = tape.skips[-1].shape[2] // 2, tape.skips[-1].shape[3] // 2
        grad = (grad[:, :, None, None] / (pooled_h * pooled_w)).expand(
            -1, -1, pooled_h, pooled_w
        )  # global avg pool
        for i in reversed(range(len(self.blocks))):
            grad = max_pool_input_gradient(grad, tape.skips[i])
            grad = self.blocks[i].input_gradient(grad, tape.blocks[i])
        return grad


class Decoder(nn.Module):
    """Skips + image + saliency -> mask logits [B, 1, H, W]."""

    def __init__(
        self, widths: tuple[int, ...] = ENCODER_WIDTHS, bridge_channels: int = 2, dropout: float = DROPOUT
    ):
        super().__init__()
        deepest, *shallower = reversed(widths)  # 256, then 128, 64, 32, 16
        stages = []
        cin = deepest + shallower[0] + bridge_channels  # the 386-channel first stage
        for i, cout in enumerate(shallower):
            stages.append(ConvBlock(cin, cout, dropout))
            cin = cout + (shallower[i + 1] if i + 1 < len(shallower) else 0)
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv2d(shallower[-1], 1, 1)

    def forward(
        self,
        skips: tuple[torch.Tensor, ...] | list[torch.Tensor],
        image: torch.Tensor,
        saliency: torch.Tensor,
    ) -> torch.Tensor:
        *shallow, x = skips
        bridge = torch.cat([image, saliency], dim=1)
        bridge = F.interpolate(bridge, size=shallow[-1].shape[2:], mode="bilinear", align_corners=True)
        for i, (stage, skip) in enumerate(zip(self.stages, reversed(shallow))):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            parts = [x, skip, bridge] if i == 0 else [x, skip]
            x = stage(torch.cat(parts, dim=1))
        return self.out(x)


class MultiMix(nn.Module):
    """`model(images)` -> {"logits": [B,2], "mask": [B,1,H,W] mask logits, "saliency": [B,1,H,W]}.

    `detach_saliency=True` stops gradients at the saliency map (the published behaviour); by
    default a training loss differentiates through it.

    In training mode the saliency is the input-gradient of the same (dropout-on) pass that makes
    the logits and skips, not of a separate dropout-off pass as in the published code: one
    encoder pass per image instead of two, at the price of a saliency as noisy as the features.
    In eval mode (inference, export) the two definitions coincide.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] = ENCODER_WIDTHS,
        num_classes: int = NUM_CLASSES,
        dropout: float = DROPOUT,
    ):
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "widths": list(widths),
            "num_classes": num_classes,
            "dropout": dropout,
        }
        self.encoder = Encoder(in_channels, widths, num_classes, dropout)
        self.decoder = Decoder(widths, bridge_channels=in_channels + 1, dropout=dropout)
        # the image gate of the exported graphs (mmtrt.ood): fitted by `mmtrt export`, not trained
        self.ood = OODGate(widths, num_classes)

    def forward(self, images: torch.Tensor, detach_saliency: bool = False) -> dict[str, torch.Tensor]:
        logits, tape = self.encoder.forward_with_tape(images)
        saliency = self.encoder.input_gradient(logits, tape).abs()
        if detach_saliency:
            saliency = saliency.detach()
        mask = self.decoder(tape.skips, images, saliency)
        return {"logits": logits, "mask": mask, "saliency": saliency}

    def saliency(self, images: torch.Tensor) -> torch.Tensor:
        logits, tape = self.encoder.forward_with_tape(images)
        return self.encoder.input_gradient(logits, tape).abs()


def reference_saliency(encoder: nn.Module, images: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """|d logit[predicted class] / d image| by autograd: the definition the saliency graph must match.

    Runs the encoder in whatever mode it is in and writes no parameter gradients (only the
    gradient with respect to the images is asked for). With `create_graph=True` the result can
    be differentiated again (a double backward through autograd's own backward).
    """
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        logits = encoder(x).logits
        classes = torch.arange(logits.shape[1], device=logits.device)
        one_hot = (logits.argmax(dim=1, keepdim=True) == classes).to(logits.dtype)
        (grad,) = torch.autograd.grad((logits * one_hot).sum(), x, create_graph=create_graph)
    return grad.abs()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
