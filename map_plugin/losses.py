"""MAP's loss terms as pure functions of logits (and, for the budget, of the masks).

``L = keep - lam * suppress + budget_weight * budget``

- keep: ``T^2 * KL(p_orig || p_masked)`` at temperature ``T``, plus ``ce_weight * CE`` where labels exist;
- suppress: ``mean_i min(beta, CE(masked(x_i), y_i))`` on target samples; the clamp stops one sample from
  dominating once it is already wrong, and bounds the objective from below;
- budget: ``relu(kept_fraction - budget_kept)``, only when a pruned fraction is asked for;
- suppress level: the suppress term without the target samples labelled with the class the masked model
  gives most; not a loss, the measure that ``TrainConfig.suppress_target`` holds a run to.

A KL between the masked and the original model is zero with zero gradient at the start (the masks
are all ones), so it cannot drive suppression: the suppress term is a clamped cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .masks import masked_modules

__all__ = ["budget_loss", "keep_loss", "kept_fraction", "suppress_level", "suppress_loss"]


def keep_loss(
    masked_logits: torch.Tensor,
    original_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    ce_weight: float = 1.0,
) -> torch.Tensor:
    """Keep the masked model's source behaviour close to the original's.

    Args:
        masked_logits: ``[B, C]`` logits of the masked model.
        original_logits: ``[B, C]`` logits of the frozen, unmasked model (no gradient needed).
        labels: ``[B]`` class indices, or None when the source batch is unlabelled.
        temperature: distillation temperature ``T``; the KL is scaled by ``T^2`` so its gradient keeps its size.
        ce_weight: weight of the cross-entropy on ``labels``.

    Returns:
        A scalar tensor.
    """
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(masked_logits / t, dim=1),
        F.log_softmax(original_logits.detach() / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
    if labels is None or ce_weight == 0:
        return kl
    return kl + ce_weight * F.cross_entropy(masked_logits, labels)


def _clamped_ce(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.clamp(F.cross_entropy(logits, labels, reduction="none"), max=float(beta))


def suppress_loss(masked_logits: torch.Tensor, labels: torch.Tensor, beta: float = 5.0) -> torch.Tensor:
    """Mean per-sample cross-entropy on target samples, each clamped at ``beta`` (to be maximised).

    With 10 classes chance-level CE is ``ln 10 = 2.3``; ``beta = 5`` lets a sample be pushed well past
    chance (probability ``e^-5 = 0.7%`` on its label) before it stops contributing.

    Args:
        masked_logits: ``[B, C]`` logits of the masked model on target images.
        labels: ``[B]`` true target labels, or the original model's predictions when unlabelled.
        beta: per-sample clamp.

    Returns:
        A scalar tensor in ``[0, beta]``.
    """
    return _clamped_ce(masked_logits, labels, beta).mean()


def suppress_level(masked_logits: torch.Tensor, labels: torch.Tensor, beta: float = 5.0) -> torch.Tensor:
    """The suppress term over the target samples whose label is not the class the masked model gives most.

    Suppression tends to send the whole target to one class. The samples that the original already put
    in that class then keep their label whatever the mask does, and hold ``suppress_loss`` down by an
    amount that depends on which class the target fell into, not on how far suppression got; this level
    leaves them out. It is the measure ``TrainConfig.suppress_target`` holds a run to.
    """
    per_sample = _clamped_ce(masked_logits, labels, beta)
    dominant = torch.bincount(masked_logits.argmax(1), minlength=masked_logits.shape[1]).argmax()
    movable = (labels != dominant).float()
    # Branch-free (no host sync on a GPU, where it runs every step): the plain mean when nothing is movable.
    level = (per_sample * movable).sum() / movable.sum().clamp(min=1.0)
    return torch.where(movable.sum() > 0, level, per_sample.mean())


def kept_fraction(model: nn.Module) -> torch.Tensor:
    """Differentiable fraction of masked weights kept (straight-through), counted in weights."""
    kept, total = None, 0
    for _, module, mask in masked_modules(model):
        numel = module.parametrizations.weight.original.numel()
        m = mask.mask()
        # A channel score stands for every weight of its channel: weight it by the channel's size.
        term = m.sum() * (numel / m.numel())
        kept = term if kept is None else kept + term
        total += numel
    if kept is None:
        raise ValueError("model carries no MAP masks; call attach_masks(model) first")
    return kept / total


def budget_loss(model: nn.Module, budget_kept: float) -> torch.Tensor:
    """``relu(kept_fraction - budget_kept)``: zero once at most ``budget_kept`` of the weights are kept."""
    return torch.relu(kept_fraction(model) - float(budget_kept))
