"""The MultiMix objective: ``L = w_ce CE + w_dice Dice + w_u L_u + w_kl KL_seg`` (1, 5, 0.25, 0.01).

Every term is computed in float32 whatever the autocast precision of the network.

- ``CE``: cross-entropy of the labelled classification batch.
- ``Dice``: soft Dice on sigmoid probabilities, smoothing 1, per sample, averaged over the batch.
- ``L_u`` (FixMatch): the pseudo-label is the argmax of softmax(weak-view logits), no gradient; it
  is kept where its confidence is >= 0.7; ``CE(strong-view logits, pseudo-label) * mask`` averaged
  over the WHOLE unlabelled batch (masked samples count as zeros, as in the reference/FixMatch).

``KL_seg``, the segmentation consistency term (the reference's is a softmax over one channel, so it
is identically zero). Chosen definition: a Bernoulli KL between the *mean foreground maps* of the
labelled and the unlabelled segmentation batches,

    p_L(x) = mean over the labelled batch of sigmoid(mask logits)(x)       (detached: the target)
    p_U(x) = mean over the unlabelled batch of sigmoid(mask logits)(x)
    KL_seg = mean over pixels x of  p_L log(p_L / p_U) + (1 - p_L) log((1 - p_L) / (1 - p_U))

Why this one:
  * it is what the reference meant -- a consistency between the predictions on labelled and on
    unlabelled segmentation images -- made real (sigmoid/Bernoulli instead of a one-channel softmax);
  * the segmentation streams have no weak/strong views, and the two batches hold different
    images, so a per-image KL between them is meaningless; but frontal chest X-rays are roughly
    aligned, so the *population* of lung masks is the same in both batches: the mean foreground
    map is a location/size prior, and a batch of unlabelled predictions whose lungs are misplaced,
    too large or too small (relative to the labelled batch, whose predictions Dice ties to the
    ground truth) is penalised;
  * it costs nothing: both batches go through the decoder anyway (the reference decoded the
    unlabelled segmentation images and then threw them away). The alternative, a flip
    consistency on unlabelled images, needs a second decoder pass per image;
  * the labelled side is the target (detached), so the term moves only the unlabelled predictions
    and never fights the Dice loss on labelled data.
Limits: it constrains the batch marginal, not each image (opposite errors in two images cancel),
and it is noisy for small batches; hence its small weight (0.01, the reference's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def soft_dice_loss(mask_logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 |P.T| + s) / (|P| + |T| + s) per sample on sigmoid probabilities, averaged."""
    probs = torch.sigmoid(mask_logits.float()).flatten(1)
    target = target.float().flatten(1)
    dice = (2.0 * (probs * target).sum(1) + smooth) / (probs.sum(1) + target.sum(1) + smooth)
    return (1.0 - dice).mean()


def pseudo_label_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's L_u and the fraction of the batch whose pseudo-label passed the threshold."""
    probs = torch.softmax(weak_logits.detach().float(), dim=1)
    confidence, pseudo = probs.max(dim=1)
    mask = (confidence >= threshold).float()
    loss = (F.cross_entropy(strong_logits.float(), pseudo, reduction="none") * mask).mean()
    return loss, mask.mean()


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(Bernoulli(p) || Bernoulli(q)), clamped away from 0 and 1."""
    p, q = p.clamp(EPS, 1 - EPS), q.clamp(EPS, 1 - EPS)
    return p * (p.log() - q.log()) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))


def kl_seg(labelled_mask_logits: torch.Tensor, unlabelled_mask_logits: torch.Tensor) -> torch.Tensor:
    """KL(mean labelled foreground map (detached) || mean unlabelled foreground map), pixel mean."""
    p_l = torch.sigmoid(labelled_mask_logits.detach().float()).mean(dim=0)
    p_u = torch.sigmoid(unlabelled_mask_logits.float()).mean(dim=0)
    return bernoulli_kl(p_l, p_u).mean()
