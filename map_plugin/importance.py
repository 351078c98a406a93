"""MAPImportance: learned MAP mask scores turned into torch-pruning group importance.

torch-pruning ranks the coupled channels of a dependency group by one 1-D importance vector
(one entry per channel of the group root, ``len(group[0].idxs)``). ``MAPImportance`` builds that
vector from the masks ``map_plugin.masks`` attaches: each masked Conv/Linear in the group gives one
value per output channel (its channel score, or for element masks the mean score or the kept
fraction of the channel's weights), scattered to the group root through ``group[i].root_idxs``
and reduced across the group (``max`` by default: a coupled channel lives while any of its
producers keeps it). Nothing here changes a model.

torch-pruning cannot prune a parametrized module, so masks must be baked before ``step()``:
``snapshot(model)`` records the per-channel values first, and the importance keeps answering from
the snapshot once the masks are gone.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn

from .errors import ConfigError
from .masks import mask_of, masked_modules

__all__ = ["GROUP_REDUCTIONS", "MEASURES", "NORMALIZERS", "MAPImportance", "channel_values"]

#: What one masked layer contributes per output channel.
MEASURES = ("score", "kept")
#: torch-pruning's ``group_reduction`` names that apply to mask values (plus ``min``).
GROUP_REDUCTIONS = ("max", "min", "mean", "sum", "prod", "first", "gate")
#: torch-pruning's ``normalizer`` names (a callable is accepted too).
NORMALIZERS = (None, "mean", "max", "sum", "standarization", "gaussian")

_SCATTER = {"max": "amax", "min": "amin", "mean": "mean", "sum": "sum", "prod": "prod"}


def _out_dim(module: nn.Module) -> int:
    # A transposed conv stores its weight as (in, out / groups, k, k): output channels are dim 1.
    return 1 if getattr(module, "transposed", False) else 0


def channel_values(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """Per-output-channel values of ``module``'s live MAP mask, or None when it carries none.

    Returns:
        ``{"score": mean score per output channel, "kept": kept fraction per output channel}``, float32
        vectors of length ``out_channels``. For a channel mask both are that channel's score and its
        0/1 mask; for an element mask, the mean over the channel's weights.
    """
    mask = mask_of(module)
    if mask is None:
        return None
    scores = mask.map_scores.detach().float()
    dim = _out_dim(module)
    weight_shape = module.parametrizations.weight.original.shape
    if scores.shape[dim] != weight_shape[dim]:
        return None  # a per-input-channel score (channel mask on a transposed conv): no output value
    scores = scores.movedim(dim, 0).flatten(1)
    return {"score": scores.mean(1), "kept": (scores > mask.threshold).float().mean(1)}


class MAPImportance(tp.importance.Importance):
    """Group importance from MAP mask scores, for any torch-pruning pruner.

    Args:
        measure: ``"score"`` (mean learned score per channel; continuous, ranks channels within the
            kept ones) or ``"kept"`` (fraction of the channel's weights the binary mask keeps).
        group_reduction: how the values of coupled layers are combined per root channel, in
            torch-pruning's names: ``max`` (default), ``min``, ``mean``, ``sum``, ``prod``,
            ``first`` (the first masked layer of the group), ``gate`` (the last).
        normalizer: torch-pruning's names, ``None`` (default: raw values), ``mean``, ``max``, ``sum``,
            ``standarization``, ``gaussian``, or a callable on the reduced vector.

    Root channels that no masked layer of the group reaches (e.g. half of a concatenation) get the
    group's highest value, so they rank as kept. A group with no masked layer returns ``None``,
    which every torch-pruning pruner reads as "skip this group".

    Raises:
        ConfigError: an option name is not one of the choices above.

    Example:
        >>> imp = MAPImportance()
        >>> pruner = tp.pruner.BasePruner(model, x, importance=imp, pruning_ratio=0.3, ignored_layers=[model.fc])
        >>> attach_masks(model, MaskConfig(granularity="channel")); train_masks(model, src, tgt)
        >>> imp.snapshot(model); bake_masks(model); pruner.step()
    """

    def __init__(
        self,
        measure: str = "score",
        group_reduction: str = "max",
        normalizer: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if measure not in MEASURES:
            raise ConfigError(f"measure={measure!r}; expected one of {list(MEASURES)}")
        if group_reduction not in GROUP_REDUCTIONS:
            raise ConfigError(f"group_reduction={group_reduction!r}; expected one of {list(GROUP_REDUCTIONS)}")
        if not callable(normalizer) and normalizer not in NORMALIZERS:
            raise ConfigError(f"normalizer={normalizer!r}; expected a callable or one of {list(NORMALIZERS)}")
        self.measure = measure
        self.group_reduction = group_reduction
        self.normalizer = normalizer
        # Keyed by module object and dropped with it: the importance never keeps a model alive.
        self._snapshot: weakref.WeakKeyDictionary[nn.Module, dict[str, torch.Tensor]] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return (
            f"MAPImportance(measure={self.measure!r}, group_reduction={self.group_reduction!r}, "
            f"normalizer={self.normalizer!r}, snapshot={len(self._snapshot)} layers)"
        )

    # ----------------------------------------------------------------- snapshot
    def snapshot(self, model: nn.Module) -> int:
        """Record the per-channel values of every mask of ``model`` (call before baking).

        Returns:
            The number of layers recorded.
        """
        count = 0
        for _, module, _ in masked_modules(model):
            values = channel_values(module)
            if values is not None:
                self._snapshot[module] = {k: v.clone() for k, v in values.items()}
                count += 1
        return count

    def clear_snapshot(self) -> None:
        """Forget every recorded layer."""
        self._snapshot.clear()

    def forget_channels(self, module: nn.Module, idxs: Iterable[int]) -> None:
        """Drop the recorded entries of output channels ``idxs`` of ``module`` (after they were pruned)."""
        values = self._snapshot.get(module)
        if values is None:
            return
        removed = set(int(i) for i in idxs)
        n = next(iter(values.values())).numel()
        keep = torch.tensor([i for i in range(n) if i not in removed], dtype=torch.long)
        self._snapshot[module] = {k: v[keep] for k, v in values.items()}

    def _values(self, module) -> torch.Tensor | None:
        if not isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            return None
        values = channel_values(module)
        if values is None:
            values = self._snapshot.get(module)
            n_out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            if values is None or values[self.measure].numel() != n_out:
                return None  # never masked, or the snapshot is stale
        return values[self.measure]

    # --------------------------------------------------------------- importance
    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        root_len = len(group[0].idxs)
        graph = getattr(group, "_DG", None)
        contributions: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            if not isinstance(layer, nn.Module) or not _prunes_outputs(graph, dep, layer):
                continue
            values = self._values(layer)
            root_idxs = group[i].root_idxs
            if values is None or root_idxs is None or any(r is None for r in root_idxs):
                continue
            idx = torch.as_tensor(list(idxs), dtype=torch.long)
            if idx.numel() == 0 or int(idx.max()) >= values.numel():
                continue
            contributions.append((values[idx], torch.as_tensor(list(root_idxs), dtype=torch.long)))
        if not contributions:
            return None
        if self.group_reduction == "first":
            contributions = contributions[:1]
        elif self.group_reduction == "gate":
            contributions = contributions[-1:]
        src = torch.cat([v for v, _ in contributions]).float()
        index = torch.cat([r for _, r in contributions]).to(src.device)
        reduce = _SCATTER.get(self.group_reduction, "amax")
        reduced = torch.zeros(root_len, dtype=src.dtype, device=src.device)
        reduced = reduced.scatter_reduce(0, index, src, reduce=reduce, include_self=False)
        reached = torch.bincount(index, minlength=root_len) > 0
        if not bool(reached.all()):
            reduced[~reached] = reduced[reached].max()
        return _normalize(reduced, self.normalizer)


def _prunes_outputs(graph, dep, layer: nn.Module) -> bool:
    """True when ``dep`` removes output channels of ``layer`` (depthwise convs: inputs are outputs)."""
    if graph is not None:
        return graph.is_out_channel_pruning_fn(dep.handler)
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == layer.out_channels == layer.in_channels:
        return True
    return getattr(dep.handler, "__name__", "") == "prune_out_channels"


def _normalize(imp: torch.Tensor, normalizer) -> torch.Tensor:
    # Divisions are guarded: an all-zero group (every channel pruned by its masks) stays all zero
    # instead of turning into NaN, which would poison a global ranking.
    eps = 1e-12
    if normalizer is None:
        return imp
    if callable(normalizer):
        return normalizer(imp)
    if normalizer == "mean":
        return imp / imp.mean().clamp_min(eps)
    if normalizer == "max":
        return imp / imp.max().clamp_min(eps)
    if normalizer == "sum":
        return imp / imp.sum().clamp_min(eps)
    if normalizer == "standarization":
        return (imp - imp.min()) / (imp.max() - imp.min() + 1e-8)
    return (imp - imp.mean()) / (imp.std(unbiased=False) + 1e-8)  # gaussian
