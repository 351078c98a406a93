"""Structured MAP: a model both protected and physically smaller (``protect_and_compress``).

Channel masks alone are coarse: a channel is all or nothing, so masks strong enough to block the
target also cost source accuracy. Two mask stages therefore share the trainer: channel masks
(``MAPPruner``), trained to keep the source behaviour and cut in rounds down to a MACs budget,
decide what is removed; the paper's element masks, trained on what remains, carry the protection.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.utils.parametrize as parametrize
import torch_pruning as tp
from torch import nn
from torch.utils.data import Dataset

from .errors import ConfigError, MaskStateError
from .masks import MaskConfig, attach_masks, bake_masks, mask_of, masked_modules, sparsity_stats
from .pruner import (
    MAPPruner,
    _attention_modules,
    _freeze,
    _has_parametrizations,
    _history_of,
    count_macs_params,
)

__all__ = ["CompressConfig", "meet_macs_target", "protect_and_compress"]

_logger = logging.getLogger(__name__)

ORDERS = ("compress_first", "protect_first")


@dataclass(frozen=True)
class CompressConfig:
    """How ``protect_and_compress`` shrinks the model (the recipes' ``--granularity channel``).

    Attributes:
        macs_reduction: fraction of the MACs to remove, in [0, 1).
        order: ``"compress_first"`` (cut channels, then protect the smaller model) or
            ``"protect_first"`` (protect, then cut channels of the protected model).
        rounds: rounds of the structure stage; each of the first ``rounds - 1`` cuts a share.
        steps: mask-training steps of the whole structure stage; ``None``: the protection's steps.
        lam: suppress weight of the structure stage; 0 chooses channels for the source alone.
    """

    macs_reduction: float = 0.25
    order: str = "compress_first"
    rounds: int = 8
    steps: int | None = None
    lam: float = 0.0

    def __post_init__(self):
        if isinstance(self.macs_reduction, bool) or not (
            isinstance(self.macs_reduction, int | float) and 0 <= self.macs_reduction < 1
        ):
            raise ConfigError(f"macs_reduction={self.macs_reduction!r} must be a fraction in [0, 1)")
        if self.order not in ORDERS:
            raise ConfigError(f"order={self.order!r}; expected one of {ORDERS}")
        if isinstance(self.rounds, bool) or not (isinstance(self.rounds, int) and self.rounds >= 1):
            raise ConfigError(f"rounds={self.rounds!r} must be a positive integer")
        bad_steps = isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        if self.steps is not None and bad_steps:
            raise ConfigError(f"steps={self.steps!r} must be a positive integer or None")
        if not self.lam >= 0:
            raise ConfigError(f"lam={self.lam!r} must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def _baked_copy(model: nn.Module, threshold: float) -> nn.Module:
    """A plain deep copy of a masked model with every mask baked in at ``threshold``; ``model`` is untouched.

    The copy is made by hand: a deep copy of a parametrized module shares its injected
    ``Parametrized*`` class with the original, and ``remove_parametrizations`` on the copy would
    delete the property from that shared class, breaking the original.
    """
    masks = [mask for _, _, mask in masked_modules(model)]
    previous = [m.threshold for m in masks]
    values = {}
    try:
        for m in masks:
            m.threshold = float(threshold)
        with torch.no_grad():
            for name, module in model.named_modules():
                if parametrize.is_parametrized(module):
                    for tensor_name in module.parametrizations:
                        values[name, tensor_name] = getattr(module, tensor_name).detach().clone()
    finally:
        for m, t in zip(masks, previous, strict=True):
            m.threshold = t
    clone = copy.deepcopy(model)
    for name, module in list(clone.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        tensor_names = list(module.parametrizations)
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]
        for tensor_name in tensor_names:
            module.register_parameter(tensor_name, nn.Parameter(values[name, tensor_name], requires_grad=False))
    return clone


def _macs_at(pruner: MAPPruner, threshold: float) -> int:
    """MACs of the model ``pruner.step()`` would produce if channel scores were binarized at ``threshold``."""
    clone = _baked_copy(pruner.model, threshold)
    names = {id(m): n for n, m in pruner.model.named_modules()}
    by_name = dict(clone.named_modules())
    ignored = [by_name[names[id(m)]] for m in pruner.ignored_layers if id(m) in names]
    trial = MAPPruner(clone, pruner.example_inputs, ignored_layers=ignored, round_to=pruner.round_to)
    trial.step()
    return count_macs_params(clone, pruner.example_inputs)[0]


class _MacsEstimate:
    """MACs after mask-mode pruning at a threshold, from per-layer MACs and group channel counts.

    A conv/linear layer costs ``MACs * kept_out / out * kept_in / in``; the kept channels of a group
    are those whose root score is above the threshold. Exact for plain and grouped convs; a group
    that a parameter keeps alive (a ViT position embedding) is counted as prunable, which is why
    ``meet_macs_target`` checks its final choice by pruning a copy.
    """

    def __init__(self, pruner: MAPPruner):
        plain = _baked_copy(pruner.model, 0.5)
        total, _, layer_macs, _ = tp.utils.count_ops_and_params(plain, pruner.example_inputs, layer_wise=True)
        by_name = dict(plain.named_modules())
        self.fixed = float(total)
        self.layers: dict[nn.Module, float] = {}
        for name, module in pruner.model.named_modules():
            twin = by_name.get(name)
            if twin is None or next(twin.children(), None) is not None or not layer_macs.get(twin):
                continue
            self.layers[module] = float(layer_macs[twin])
            self.fixed -= float(layer_macs[twin])
        self.groups = []  # (root scores, [(layer, is_out, idxs, root_idxs, channels)])
        for group in pruner._all_groups():
            mask = mask_of(group[0].dep.target.module)
            if mask is None:
                continue
            members = []
            for i, (dep, _) in enumerate(group):
                layer, root_idxs = dep.target.module, group[i].root_idxs
                if layer not in self.layers or root_idxs is None or any(r is None for r in root_idxs):
                    continue
                is_out = pruner.DG.is_out_channel_pruning_fn(dep.handler)
                channels = pruner.DG.get_out_channels(layer) if is_out else pruner.DG.get_in_channels(layer)
                if channels:
                    members.append((layer, is_out, torch.as_tensor(list(root_idxs)), channels))
            self.groups.append((mask.map_scores.detach().flatten(), members))

    def __call__(self, threshold: float) -> float:
        kept = {}
        for scores, members in self.groups:
            alive = scores > threshold
            for layer, is_out, root_idxs, channels in members:
                factor = float(alive[root_idxs].sum()) / channels
                kept[layer, is_out] = kept.get((layer, is_out), 1.0) * factor
        return self.fixed + sum(
            macs * kept.get((m, True), 1.0) * kept.get((m, False), 1.0) for m, macs in self.layers.items()
        )


def meet_macs_target(pruner: MAPPruner, max_macs: int, exact: bool = True, lower: bool = False) -> float:
    """Raise the channel-mask threshold just enough that ``pruner.step()`` gives at most ``max_macs``.

    Channels are taken in order of their learned score (lowest first), so the masks' ranking decides
    what goes beyond what they removed themselves. The threshold is found on a per-layer MACs
    estimate, then (``exact=True``) checked, and raised if needed, by pruning a copy. With
    ``lower=True`` the threshold may also go down: when the masks removed more than the budget
    asks, the best-scored of their channels come back until the budget is used.

    Returns:
        The threshold now set on every channel mask (unchanged when the masks already meet the target).

    Raises:
        MaskStateError: the pruner's masks were already baked.
        ConfigError: the masks are not channel masks, or the target is out of reach.
    """
    pruner._require_masked("meet_macs_target()")
    if pruner.mask_config.granularity != "channel":
        raise ConfigError("meet_macs_target() needs channel masks (MaskConfig(granularity='channel'))")
    masks = [mask for _, _, mask in masked_modules(pruner.model)]
    base = masks[0].threshold
    estimate = _MacsEstimate(pruner)
    scores = torch.cat([m.map_scores.detach().flatten() for m in masks])
    floor = float(scores.min()) - 1.0 if lower else base  # a threshold below every score keeps everything
    candidates = [floor] + torch.unique(scores[scores > floor]).tolist()

    def smallest(fits, lo: int, hi: int) -> int:  # smallest index in [lo, hi] that fits; hi if none
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(candidates[mid]) else (mid + 1, hi)
        return lo

    last = len(candidates) - 1
    lo = smallest(lambda t: estimate(t) <= max_macs, 0, last)
    if exact:
        # The estimate is within a few percent: search exactly between a looser estimate and a stride up.
        fits = lambda t: _macs_at(pruner, t) <= max_macs  # noqa: E731
        hi, stride = lo, 1
        while not fits(candidates[hi]):
            if hi == last:
                raise ConfigError(f"no channel threshold reaches {max_macs} MACs; lower macs_reduction")
            hi, stride = min(last, hi + stride), stride * 2
        lo = smallest(fits, smallest(lambda t: estimate(t) <= 1.05 * max_macs, 0, last), hi)
    for m in masks:
        m.threshold = float(candidates[lo])
    if lo:
        _logger.info("channel threshold raised from %.4f to %.4f to meet %d MACs", base, candidates[lo], max_macs)
    return float(candidates[lo])


def _commit_cut(pruner: MAPPruner, threshold: float) -> None:
    """Push the scores of switched-off channels far below ``threshold``, so later rounds cannot revive them.

    Without this, a round's training lifts the channels it misses just above the threshold, and
    the next cut, which takes the lowest scores first, removes exactly those.
    """
    with torch.no_grad():
        for _, _, mask in masked_modules(pruner.model):
            scores = mask.map_scores
            scores[scores <= threshold] = threshold - 1.0


def protect_and_compress(
    model: nn.Module,
    example_inputs: Any,
    source: Dataset,
    target: Dataset,
    *,
    train_config=None,
    compress_config: CompressConfig | None = None,
    mask_config: MaskConfig | None = None,
    accelerator=None,
    eval_sets: Mapping[str, Dataset] | None = None,
    progress: bool = True,
    **pruner_kwargs,
) -> tuple[nn.Module, dict]:
    """Structured MAP: a model both protected (target near chance) and physically smaller.

    The **structure** stage trains one channel mask per dependency group (``MAPPruner``) in
    ``compress_config.rounds`` rounds; after each of the first ``rounds - 1`` rounds the
    lowest-scored channels are switched off until the MACs are down by the next share of
    ``macs_reduction`` (``meet_macs_target``), so later rounds learn with those channels gone
    (gradual pruning: a budget term alone moves every score at Adam's rate and switches most channels
    off in the same step). ``MAPPruner.step()`` then cuts the switched-off channels out. The
    **protection** stage trains the paper's element masks (``train_config``) and bakes them.
    ``order="compress_first"`` runs structure then protection; ``"protect_first"`` protects the full
    model, then compresses the protected one (its structure stage keeps the protected model's
    behaviour, so the protection survives the cut).

    Args:
        model: the trained source classifier, without masks. Modified in place and returned.
        example_inputs: a batch for tracing and MAC counting, e.g. ``torch.zeros(1, 3, 32, 32)``.
        source: labelled (or pseudo-) source dataset.
        target: target dataset.
        train_config: ``TrainConfig`` of the protection stage (default ``TrainConfig()``). The
            structure stage uses it too, with ``compress_config.steps`` and ``compress_config.lam``.
        compress_config: MACs budget, order and rounds (default ``CompressConfig()``).
        mask_config: element masks of the protection stage (default ``MaskConfig()``).
        accelerator: passed to the trainer.
        eval_sets: named datasets the trainer evaluates.
        progress: show progress bars.
        **pruner_kwargs: torch-pruning options for ``MAPPruner`` (``ignored_layers``, ``round_to``, ...).

    Returns:
        ``(model, info)``: the pruned, protected, frozen model and a dict with ``macs`` and ``params``
        (``{"before", "after"}``), ``macs_reduction``, ``pruning_history`` (for ``save_pruned``),
        ``kept_fraction`` and ``kept_per_layer`` of the element masks, ``channel_threshold`` and the
        training histories (``history["structure"]``: one list per round; ``history["protect"]``).

    Raises:
        ConfigError: an argument is out of range or of the wrong type.
        MaskStateError: ``model`` already carries masks.

    Example:
        >>> model, info = protect_and_compress(model, torch.zeros(1, 3, 32, 32), src.train, tgt.train)
        >>> save_pruned(model, info["pruning_history"], "out/", {"model": "resnet18", "num_classes": 10})
    """
    from .trainer import TrainConfig, train_masks

    for arg, value, kind in (
        ("train_config", train_config, TrainConfig),
        ("compress_config", compress_config, CompressConfig),
        ("mask_config", mask_config, MaskConfig),
    ):
        if value is not None and not isinstance(value, kind):
            raise ConfigError(f"{arg} must be a {kind.__name__}, got {type(value).__name__}")
    mask_config = mask_config or MaskConfig()
    if mask_config.granularity != "element":
        raise ConfigError(f"mask_config.granularity={mask_config.granularity!r}: the protection stage is element-wise")
    name = _has_parametrizations(model)
    if name is not None:
        raise MaskStateError(f"model: {name!r} already carries masks; call bake_masks(model) or remove_masks(model)")
    train_config = train_config or TrainConfig()
    compress_config = compress_config or CompressConfig()
    rounds = compress_config.rounds
    structure_config = replace(train_config, steps=compress_config.steps or train_config.steps, lam=compress_config.lam)
    macs_before, params_before = count_macs_params(model, example_inputs)
    info: dict[str, Any] = {"order": compress_config.order, "history": {"structure": [], "protect": []}}

    def protect() -> None:
        attach_masks(model, mask_config)
        result = train_masks(model, source, target, train_config, accelerator, eval_sets, progress)
        stats = sparsity_stats(model)
        info["kept_fraction"], info["kept_per_layer"] = stats["kept_fraction"], stats["kept_per_layer"]
        info["history"]["protect"].append(result.history)
        bake_masks(model)
        _freeze(model)

    def compress() -> MAPPruner:
        pruner = MAPPruner(model, example_inputs, **pruner_kwargs)
        steps = max(1, structure_config.steps // rounds)
        cuts = max(1, rounds - 1)  # with 2+ rounds the last one only re-learns, it cuts nothing new
        for r in range(1, rounds + 1):
            # A fresh seed per round: the trainer's batch order is a function of the seed.
            config = replace(structure_config, steps=steps, seed=structure_config.seed + r - 1)
            pruner.fit(source, target, config, accelerator=accelerator, eval_sets=eval_sets, progress=progress)
            info["history"]["structure"].append(pruner.train_result.history)
            budget = int(macs_before * (1.0 - compress_config.macs_reduction * min(r, cuts) / cuts))
            info["channel_threshold"] = threshold = meet_macs_target(pruner, budget, lower=True)
            _commit_cut(pruner, threshold)
        pruner.step()
        return pruner

    if compress_config.order == "protect_first":
        protect()
        pruner = compress()
    else:
        pruner = compress()
        protect()
    macs_after, params_after = count_macs_params(model, example_inputs)
    info |= {
        "macs": {"before": macs_before, "after": macs_after},
        "params": {"before": params_before, "after": params_after},
        "macs_reduction": 1.0 - macs_after / macs_before,
        "pruning_history": _history_of(pruner),
        "attention_heads": {n: int(m.num_heads) for n, m in _attention_modules(model)},
    }
    return model.eval(), info
