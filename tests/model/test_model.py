"""The MultiMix architecture and its saliency graph against autograd."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import BATCH_SIZES, IMAGE_KINDS, flat_region_images, random_images, relative_error

from mmtrt.model import count_parameters, instance_norm, max_pool_input_gradient, reference_saliency

# --- architecture -----------------------------------------------------------------------------


def test_parameter_count_matches_the_published_model(model):
    convs = [m for m in model.encoder.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert count_parameters(model) == 1_965_155
    assert sum(count_parameters(c) for c in convs) == 1_178_480
    assert count_parameters(model.encoder.fc) == 514
    assert count_parameters(model.decoder.stages) == 786_144
    assert count_parameters(model.decoder.out) == 17
    assert model.decoder.stages[0].conv1.in_channels == 386  # up(c5) 256 + c4 128 + bridge 2
    assert not any(isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d)) for m in model.modules())


def test_shapes_and_named_outputs(model):
    images = random_images(2, seed=1)
    with torch.no_grad():
        out = model(images)
        enc = model.encoder(images)
    assert set(out) == {"logits", "mask", "saliency"}
    assert out["logits"].shape == (2, 2)
    assert out["mask"].shape == out["saliency"].shape == (2, 1, 256, 256)
    assert enc.logits.shape == (2, 2)
    assert [tuple(s.shape[1:]) for s in enc.skips] == [
        (16, 256, 256),
        (32, 128, 128),
        (64, 64, 64),
        (128, 32, 32),
        (256, 16, 16),
    ]
    assert torch.equal(enc.logits, out["logits"])


@pytest.mark.parametrize("kind", ["random", "flat"])
def test_instance_norm_matches_torch(kind):
    z = IMAGE_KINDS[kind](2, seed=2).repeat(1, 4, 1, 1) * 3 - 1
    normed, rstd = instance_norm(z)
    assert relative_error(normed, F.instance_norm(z, eps=1e-5)) < 1e-5
    assert rstd.shape == (2, 4, 1, 1)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(model):
    images = flat_region_images(2, seed=3)
    with torch.no_grad():
        first, second = model(images), model(images)
        for key in first:
            assert torch.equal(first[key], second[key]), key
        model.train()
        try:
            noisy = model(images)
        finally:
            model.eval()
    assert not torch.equal(noisy["logits"], first["logits"])


def test_saliency_of_an_image_does_not_depend_on_its_batch(model):
    images = torch.cat([flat_region_images(2, seed=4), random_images(3, seed=5)])
    with torch.no_grad():
        together = model.saliency(images)
        for i in range(len(images)):
            alone = model.saliency(images[i : i + 1])
            assert relative_error(together[i : i + 1], alone) < 1e-5


def test_computing_a_saliency_leaves_gradients_and_modes_alone(model):
    images = random_images(2, seed=6)
    modes = {name: m.training for name, m in model.named_modules()}
    reference_saliency(model.encoder, images)
    model.saliency(images)
    model(images)
    assert all(p.grad is None for p in model.parameters())
    assert {name: m.training for name, m in model.named_modules()} == modes


# --- the saliency graph against autograd --------------------------------------------------------


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("kind", sorted(IMAGE_KINDS))
def test_saliency_graph_matches_autograd(model, kind, batch):
    images = IMAGE_KINDS[kind](batch, seed=100 + batch)
    expected = reference_saliency(model.encoder, images)
    with torch.no_grad():
        actual = model.saliency(images)
    assert relative_error(actual, expected) <= 1e-5


def test_saliency_graph_matches_autograd_in_train_mode(model):
    """With dropout on, the graph uses the same masks as the forward pass it shares."""
    images = flat_region_images(3, seed=7)
    model.train()
    try:
        torch.manual_seed(11)
        actual = model.saliency(images)
        torch.manual_seed(11)
        expected = reference_saliency(model.encoder, images)
    finally:
        model.eval()
    assert relative_error(actual, expected) <= 1e-5


def test_max_pool_gradient_goes_to_the_element_pytorch_picks():
    # Integer values in 0..2: most 2x2 windows hold tied maxima.
    x = torch.randint(0, 3, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    grad = torch.randn(2, 3, 4, 4)
    x_leaf = x.clone().requires_grad_(True)
    pooled = F.max_pool2d(x_leaf, 2)
    (expected,) = torch.autograd.grad(pooled, x_leaf, grad)
    actual = max_pool_input_gradient(grad, x)
    assert torch.equal(actual, expected)
    # Sending the gradient to every tied maximum would be a different (wrong) answer here.
    every_max = (x == F.interpolate(pooled.detach(), scale_factor=2)).float() * grad.repeat_interleave(
        2, 2
    ).repeat_interleave(2, 3)
    assert not torch.equal(every_max, expected)


def test_saliency_graph_parameter_gradients_match_double_backward(model):
    """Training differentiates through the saliency: the graph's gradients must equal
    autograd's double backward (create_graph=True)."""
    images = torch.cat([flat_region_images(1, seed=8), random_images(1, seed=9)])
    weights = torch.rand(images.shape, generator=torch.Generator().manual_seed(10))

    def weight_gradients(saliency_fn) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        (saliency_fn(images) * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.encoder.named_parameters() if n.endswith("weight")}
        model.zero_grad(set_to_none=True)
        return grads

    actual = weight_gradients(model.saliency)
    expected = weight_gradients(lambda x: reference_saliency(model.encoder, x, create_graph=True))
    assert (
        relative_error(
            torch.cat([g.flatten() for g in actual.values()]),
            torch.cat([g.flatten() for g in expected.values()]),
        )
        <= 1e-4
    )
    for name in expected:
        assert relative_error(actual[name], expected[name]) <= 1e-4, name
    # (Conv biases get no true gradient through the saliency: instance norm removes them.)


def test_saliency_under_bf16_autocast_runs_and_differentiates(model):
    images = flat_region_images(1, seed=12)
    with torch.no_grad():
        exact = model.saliency(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    saliency = out["saliency"].float()
    assert torch.isfinite(saliency).all()
    cosine = F.cosine_similarity(saliency.flatten(1), exact.flatten(1)).min()
    assert cosine > 0.5  # bf16 moves the saliency by tens of percent; it must still be the same map
    (out["mask"].float().mean() + saliency.mean()).backward()
    grads = [p.grad for n, p in model.encoder.named_parameters() if "conv" in n and n.endswith("weight")]
    model.zero_grad(set_to_none=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
def test_saliency_graph_compiles_without_graph_breaks_and_differentiates(model):
    """fullgraph=True makes any graph break an error. The comparison runs in float64, where the
    compiler's activations agree with eager to ~1e-13. On random images that makes the saliency
    agree to the same order; on images with exact plateaus, a tie between two equal values in
    eager can become a 1-ulp difference when compiled, which hands a max-pool window's gradient
    to its neighbour: the map then moves by a fraction of a percent, and only there."""
    model64 = copy.deepcopy(model).double()
    weights = torch.rand(2, 1, 256, 256, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(model64.saliency, fullgraph=True)

    def saliency_and_grad(fn, images):
        model64.zero_grad(set_to_none=True)
        saliency = fn(images)
        (saliency * weights).sum().backward()
        grad = model64.encoder.blocks[2].conv1.weight.grad.clone()
        model64.zero_grad(set_to_none=True)
        return saliency.detach(), grad

    images = random_images(2, seed=13).double()
    eager_saliency, eager_grad = saliency_and_grad(model64.saliency, images)
    compiled_saliency, compiled_grad = saliency_and_grad(compiled, images)
    assert relative_error(compiled_saliency, eager_saliency) <= 1e-9
    assert relative_error(compiled_grad, eager_grad) <= 1e-9

    images = flat_region_images(2, seed=13).double()
    eager_saliency, _ = saliency_and_grad(model64.saliency, images)
    compiled_saliency, _ = saliency_and_grad(compiled, images)
    assert relative_error(compiled_saliency, eager_saliency) <= 1e-2
    assert F.cosine_similarity(compiled_saliency.flatten(1), eager_saliency.flatten(1)).min() >= 0.9999
