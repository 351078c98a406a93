"""MAPPruner: torch-pruning's ``BasePruner`` with the MAP mask lifecycle, and pruned-model I/O.

torch-pruning removes channels but has no learnable masks, traces an empty graph once a model is
frozen, and cannot prune a parametrized module. ``MAPPruner`` owns the order that works:

1. trace the dependency graph while the model is still trainable;
2. attach one channel mask per dependency group (the model is frozen; only scores train);
3. ``fit()`` trains the masks with ``map_plugin.trainer.train_masks``;
4. ``step()`` snapshots the scores, bakes every mask into the weights, and lets torch-pruning cut
   the channels out: a physically smaller, frozen model whose ``pruning_history()`` replays.

**Channel masks and BatchNorm.** Zeroing a conv's output channel does not zero what follows it:
BatchNorm still adds ``beta - mean * gamma / sqrt(var + eps)``. So the channel mask of a group is
applied to every layer that *produces* the group's channels: the root conv's weight (the trained
``WeightMask``) and, through ``ChannelGate`` parametrizations that read the same scores, the weight
and bias of every coupled conv/linear, the bias of the root, and the affine weight and bias of every
coupled BatchNorm/LayerNorm/GroupNorm. A masked channel is then exactly zero wherever it is
produced, residual branches and depthwise convs included, so removing it changes nothing: the
masked model and the pruned model compute the same function on BatchNorm networks. (A LayerNorm or
GroupNorm that normalises across channels still sees the zero channel in its statistics, so there
the equality is approximate.) In the default ``pruning_ratio=None`` mode, ``step()`` removes
exactly the channels that are zero in every producer after baking; with a ``pruning_ratio`` it is
torch-pruning's ratio pruning ranked by ``MAPImportance``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.utils.parametrize as parametrize
import torch_pruning as tp
from torch import nn
from torch.utils.data import Dataset

from ._io import load_tensors, read_json, save_tensors, write_json
from .errors import ArtifactError, ConfigError, MaskStateError
from .importance import MAPImportance
from .masks import (
    MaskConfig,
    WeightMask,
    attach_masks,
    bake_masks,
    find_classifier,
    is_masked,
    mask_parameters,
    masked_modules,
)

__all__ = [
    "ChannelGate",
    "MAPPruner",
    "count_macs_params",
    "fix_attention",
    "load_pruned",
    "save_pruned",
]

_logger = logging.getLogger(__name__)

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


# ----------------------------------------------------------------------------- channel gate
class ChannelGate(nn.Module):
    """Parametrization that multiplies a tensor by another layer's channel mask (a coupled producer).

    The scores stay in the leader's ``WeightMask`` (held by reference, not registered here, so they
    appear once in ``named_parameters`` and ``mask_parameters``); disabling the leader disables the gate.

    Args:
        leader: the group root's channel ``WeightMask``.
        index: for each channel of the gated tensor, the leader channel it follows (-1: none, kept).
        dim: the channel dimension of the gated tensor.
    """

    def __init__(self, leader: WeightMask, index: torch.Tensor, dim: int = 0):
        super().__init__()
        self._leader = (leader,)
        self.dim = dim
        self.register_buffer("index", index.clone(), persistent=False)

    @property
    def leader(self) -> WeightMask:
        return self._leader[0]

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        leader = self.leader
        if not leader.enabled:
            return tensor
        mask = leader.mask().reshape(-1)
        mask = torch.cat([mask, mask.new_ones(1)])[self.index]  # index -1 picks the trailing 1
        shape = [1] * tensor.dim()
        shape[self.dim] = -1
        return tensor * mask.reshape(shape).to(tensor.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, channels={self.index.numel()}"


def _has_parametrizations(model: nn.Module) -> str | None:
    """Name of the first parametrized module of ``model``, or None."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            return name or type(module).__name__
    return None


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm-style attention blocks: a fused ``qkv`` Linear with ``num_heads`` and ``head_dim``."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
        and hasattr(m, "head_dim")
    ]


@contextlib.contextmanager
def _traceable(model: nn.Module):
    """Make ``model`` traceable by torch-pruning for the block, then restore it.

    A frozen model has no autograd graph to trace (torch-pruning then finds no groups and prunes
    nothing, silently), and timm's fused attention hides the head reshapes from the tracer.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    fused = [(m, m.fused_attn) for _, m in _attention_modules(model) if hasattr(m, "fused_attn")]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        for m, _ in fused:
            m.fused_attn = False
        with torch.enable_grad():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, flag in fused:
            m.fused_attn = flag


def fix_attention(model: nn.Module, num_heads: Mapping[Any, int] | None = None) -> dict[str, int]:
    """Set ``num_heads``/``head_dim``/``attn_dim`` of timm attention blocks from their pruned ``qkv``.

    Call it after any torch-pruning step on a timm ViT (``MAPPruner`` and ``load_pruned`` do).
    The softmax scale stays ``1/sqrt(original head_dim)`` (what the model was trained with), so a
    block whose head_dim shrank falls back to timm's unfused path, which uses ``attn.scale``;
    ``scaled_dot_product_attention`` would rescale by the new head_dim.

    Args:
        model: the pruned model.
        num_heads: heads per block after pruning, keyed by the block's ``qkv`` Linear (torch-pruning's
            ``pruner.num_heads``) or by the block's module name; blocks not named keep their count.

    Returns:
        ``{module_name: num_heads}`` after the fix.
    """
    heads_after = {}
    for name, attn in _attention_modules(model):
        table = num_heads or {}
        heads = int(table.get(name, table.get(attn.qkv, attn.num_heads)))
        head_dim = attn.qkv.out_features // (3 * heads)
        if head_dim != attn.head_dim and hasattr(attn, "fused_attn"):
            attn.fused_attn = False
        attn.num_heads, attn.head_dim = heads, head_dim
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = heads * head_dim
        heads_after[name] = heads
    return heads_after


def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_macs_params(model: nn.Module, example_inputs) -> tuple[int, int]:
    """``(MACs, parameters)`` of ``model`` on ``example_inputs`` (``tp.utils.count_ops_and_params``)."""
    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(macs), int(params)


# ----------------------------------------------------------------------------- zero channels
def _zero_rows(node, idxs: list[int]) -> torch.Tensor | None:
    """Which of output channels ``idxs`` of a graph node are exactly zero for every input.

    None when the node produces nothing by itself (activations, adds, reshapes, PReLU: zero in, zero out).
    """
    target = node.module
    n = len(idxs)
    if isinstance(target, nn.Parameter):
        rows = target.detach().movedim(node.pruning_dim, 0)[idxs]
        return (rows.reshape(n, -1) == 0).all(1)
    if not isinstance(target, nn.Module):
        return None
    if isinstance(target, _WEIGHTED):
        if getattr(target, "transposed", False) and target.groups > 1:
            return torch.zeros(n, dtype=torch.bool)
        w = target.weight.detach().movedim(1 if getattr(target, "transposed", False) else 0, 0)
        zero = (w[idxs].flatten(1) == 0).all(1)
        if target.bias is not None:
            zero &= target.bias.detach()[idxs] == 0
        return zero
    if isinstance(target, _NORMS):
        w, b = getattr(target, "weight", None), getattr(target, "bias", None)
        if w is None or w.dim() != 1:
            return torch.zeros(n, dtype=torch.bool)  # a non-affine norm outputs -mean/std, not zero
        zero = w.detach()[idxs] == 0
        if b is not None:
            zero &= b.detach()[idxs] == 0
        return zero
    if isinstance(target, nn.PReLU) or not any(True for _ in target.parameters(recurse=False)):
        return None
    return torch.zeros(n, dtype=torch.bool)  # an unknown layer with parameters: assume it produces


def _dead_channels(graph, group) -> torch.Tensor | None:
    """Root channels of ``group`` that every producing layer outputs as exactly zero (removable as is)."""
    root_len = len(group[0].idxs)
    alive = torch.zeros(root_len, dtype=torch.uint8)
    seen = torch.zeros(root_len, dtype=torch.bool)
    for i, (dep, idxs) in enumerate(group):
        root_idxs = group[i].root_idxs
        if root_idxs is None or any(r is None for r in root_idxs) or not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        zero = _zero_rows(dep.target, list(idxs))
        if zero is None:
            continue
        r = torch.as_tensor(list(root_idxs), dtype=torch.long)
        seen[r] = True
        alive.scatter_reduce_(0, r, (~zero).to(torch.uint8), reduce="amax")
    if not bool(seen.any()):
        return None
    return seen & (alive == 0)


class _GuardedGroup(tp.dependency.Group):
    """A torch-pruning group that refuses to prune while MAP masks are attached."""

    _map_pruner: weakref.ReferenceType | None = None

    def prune(self, idxs=None, record_history=True):
        pruner = self._map_pruner() if self._map_pruner is not None else None
        if pruner is not None:
            pruner._check_plain("group.prune()")
        forgotten = []
        if idxs is None and pruner is not None and isinstance(pruner.importance, MAPImportance):
            forgotten = [
                (dep.target.module, list(i))
                for dep, i in self._group
                if isinstance(dep.target.module, nn.Module) and self._DG.is_out_channel_pruning_fn(dep.handler)
            ]
        super().prune(idxs=idxs, record_history=record_history)
        for module, i in forgotten:
            pruner.importance.forget_channels(module, i)


# ----------------------------------------------------------------------------- the pruner
class MAPPruner(tp.pruner.BasePruner):
    """torch-pruning pruner whose channels are chosen by trained MAP masks.

    Args:
        model: a trained classifier, without MAP masks. It is traced as it is, then frozen.
        example_inputs: a batch for tracing, e.g. ``torch.zeros(1, 3, 32, 32)``.
        importance: group importance for ratio mode (default ``MAPImportance()``).
        pruning_ratio: ``None`` (default) removes exactly the channels the trained masks removed;
            a float is torch-pruning's ratio pruning, ranked by ``importance``.
        ignored_layers: layers never pruned; the classifier is added automatically.
        mask_config: which weights get masks; default ``MaskConfig(granularity="channel")``.
            Channel masks are attached per dependency group (see the module docstring); ``element``
            masks are attached to every selected weight as ``attach_masks`` does.
        granularity: shortcut for ``mask_config.granularity`` (not both).
        threshold: shortcut for ``mask_config.threshold`` (not both).
        train_config: the ``TrainConfig`` ``fit()`` uses when it is given none.
        **kwargs: every other ``tp.pruner.BasePruner`` argument (``global_pruning``,
            ``iterative_steps``, ``round_to``, ``max_pruning_ratio``, ``num_heads``, ...).

    Raises:
        MaskStateError: ``model`` already carries masks or other parametrizations.
        ConfigError: conflicting or out-of-range options.

    Example:
        >>> pruner = MAPPruner(model, torch.zeros(1, 3, 32, 32))
        >>> pruner.fit(source, target, TrainConfig(budget_weight=2.0, budget_kept=0.7))
        >>> pruner.step()  # model is now physically smaller
        >>> save_pruned(model, pruner, "out/", {"model": "resnet18", "num_classes": 10})
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: tp.importance.Importance | None = None,
        pruning_ratio: float | None = None,
        ignored_layers: Sequence[nn.Module] | None = None,
        *,
        mask_config: MaskConfig | None = None,
        granularity: str | None = None,
        threshold: float | None = None,
        train_config=None,
        **kwargs,
    ):
        from .trainer import TrainConfig

        name = _has_parametrizations(model)
        if name is not None:
            raise MaskStateError(
                f"model: {name!r} is already parametrized (MAP masks?); build MAPPruner on the plain model, "
                "or call bake_masks(model) / remove_masks(model) first"
            )
        if mask_config is not None and not isinstance(mask_config, MaskConfig):
            raise ConfigError(f"mask_config must be a MaskConfig, got {type(mask_config).__name__}")
        if mask_config is not None and (granularity is not None or threshold is not None):
            raise ConfigError("pass either mask_config or the granularity/threshold shortcuts, not both")
        if mask_config is None:
            mask_config = MaskConfig(
                granularity=granularity or "channel", threshold=0.5 if threshold is None else threshold
            )
        if train_config is not None and not isinstance(train_config, TrainConfig):
            raise ConfigError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
        if pruning_ratio is not None and not (
            isinstance(pruning_ratio, int | float) and not isinstance(pruning_ratio, bool) and 0 <= pruning_ratio < 1
        ):
            raise ConfigError(f"pruning_ratio={pruning_ratio!r} must be None (mask mode) or a fraction in [0, 1)")
        self.mode = "ratio" if pruning_ratio is not None or kwargs.get("pruning_ratio_dict") else "mask"
        if self.mode == "mask" and kwargs.get("iterative_steps", 1) != 1:
            raise ConfigError(
                f"iterative_steps={kwargs['iterative_steps']!r} needs a pruning_ratio: with pruning_ratio=None "
                "one step() removes every channel the masks removed"
            )
        if importance is not None and not callable(importance):
            raise ConfigError(f"importance must be a torch-pruning Importance, got {type(importance).__name__}")

        ignored = list(ignored_layers or [])
        head = find_classifier(model)
        if head is not None and not any(head is m for m in ignored):
            ignored.append(head)
        # torch-pruning's BasePruner mutates these dict defaults (shared by every instance): pass fresh ones.
        for key in ("in_channel_groups", "out_channel_groups", "num_heads"):
            kwargs[key] = dict(kwargs.get(key) or {})
        if not kwargs["num_heads"]:
            kwargs["num_heads"] = {m.qkv: m.num_heads for _, m in _attention_modules(model)}

        self.mask_config = mask_config
        self.train_config = train_config
        self.train_result = None
        self._gates: list[tuple[nn.Module, str]] = []
        with _traceable(model):
            super().__init__(
                model,
                example_inputs,
                importance=importance if importance is not None else MAPImportance(),
                pruning_ratio=0.0 if pruning_ratio is None else float(pruning_ratio),
                ignored_layers=ignored,
                **kwargs,
            )
        self.example_inputs = example_inputs
        self._guard_graph()
        self._attach()
        self._state = "masked"

    # ------------------------------------------------------------------ masks
    @property
    def state(self) -> str:
        """``"masked"`` (masks attached, trainable), ``"baked"`` or ``"pruned"``."""
        return self._state

    def _guard_graph(self) -> None:
        original = self.DG.get_pruning_group
        ref = weakref.ref(self)

        def get_pruning_group(module, pruning_fn, idxs):
            group = original(module, pruning_fn, idxs)
            group.__class__ = _GuardedGroup
            group._map_pruner = ref
            return group

        self.DG.get_pruning_group = get_pruning_group

    def _all_groups(self) -> Iterator:
        return self.DG.get_all_groups(ignored_layers=self.ignored_layers, root_module_types=self.root_module_types)

    def _attach(self) -> None:
        config = self.mask_config
        if config.granularity != "channel":
            attach_masks(self.model, config)
            return
        # One mask per dependency group, on its root; every other producer follows through a ChannelGate.
        groups = {}
        for group in self._all_groups():
            root = group[0].dep.target.module
            if isinstance(root, _WEIGHTED) and not getattr(root, "transposed", False):
                groups[root] = group
        others = [
            name
            for name, m in self.model.named_modules()
            if type(m).__name__ in config.layer_types and m not in groups and name
        ]
        attach_masks(self.model, replace(config, include_classifier=True, exclude=list(config.exclude) + others))
        for _, module, leader in masked_modules(self.model):
            if module in groups:
                self._attach_gates(module, leader, groups[module])
        _logger.info("MAPPruner: %d group channel masks, %d gates", len(groups), len(self._gates))

    def _attach_gates(self, root: nn.Module, leader: WeightMask, group) -> None:
        if getattr(root, "bias", None) is not None:
            self._gate(root, "bias", leader, torch.arange(root.bias.numel()), 0)
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            root_idxs = group[i].root_idxs
            if i == 0 or layer is root or not isinstance(layer, _WEIGHTED + _NORMS):
                continue
            if root_idxs is None or any(r is None for r in root_idxs):
                continue
            if not self.DG.is_out_channel_pruning_fn(dep.handler):
                continue
            dim = 1 if getattr(layer, "transposed", False) else 0
            for tensor_name in ("weight", "bias"):
                tensor = getattr(layer, tensor_name, None)
                if not isinstance(tensor, torch.Tensor) or (isinstance(layer, _NORMS) and tensor.dim() != 1):
                    continue
                index = torch.full((tensor.shape[dim],), -1, dtype=torch.long)
                index[torch.as_tensor(list(idxs), dtype=torch.long)] = torch.as_tensor(list(root_idxs))
                self._gate(layer, tensor_name, leader, index, dim if tensor_name == "weight" else 0)

    def _gate(self, module: nn.Module, name: str, leader: WeightMask, index: torch.Tensor, dim: int) -> None:
        if parametrize.is_parametrized(module, name):
            return  # already follows another group's root: keep the first
        parametrize.register_parametrization(module, name, ChannelGate(leader, index, dim))
        self._gates.append((module, name))

    def mask_parameters(self) -> list[nn.Parameter]:
        """The trainable mask scores (what an optimizer should see).

        Raises:
            MaskStateError: the masks were already baked.
        """
        self._require_masked("mask_parameters()")
        return mask_parameters(self.model)

    def _require_masked(self, call: str) -> None:
        if self._state != "masked":
            raise MaskStateError(
                f"{call} needs the masks, but step() or bake() already baked them into the weights; "
                "build a new MAPPruner on the pruned model to train masks again"
            )

    def _check_plain(self, call: str) -> None:
        name = _has_parametrizations(self.model)
        if name is None:
            return
        if self._state == "masked":
            raise MaskStateError(
                f"{call} needs plain weights, but {name!r} still carries MAP masks; call pruner.bake() first "
                "(pruner.step() bakes them for you)"
            )
        raise MaskStateError(
            f"{call} needs plain weights, but {name!r} carries masks attached after this pruner baked its own; "
            "call bake_masks(model) or remove_masks(model) first"
        )

    # ------------------------------------------------------------------ lifecycle
    def fit(
        self,
        source: Dataset,
        target: Dataset,
        train_config=None,
        accelerator=None,
        eval_sets: Mapping[str, Dataset] | None = None,
        progress: bool = True,
    ):
        """Train the masks with ``map_plugin.trainer.train_masks`` (source kept, target suppressed).

        Args:
            source: ``(image, label)`` dataset of the authorized domain (or pseudo-source).
            target: ``(image, label)`` dataset of the unauthorized domain.
            train_config: a ``TrainConfig``; defaults to the constructor's, else ``TrainConfig()``.
                ``budget_weight``/``budget_kept`` push the kept fraction down (what gets removed).
            accelerator: an ``accelerate.Accelerator`` (default: one process on CPU or GPU).
            eval_sets: named datasets evaluated during training.
            progress: show a progress bar.

        Returns:
            The trainer's ``TrainResult`` (also kept as ``pruner.train_result``).

        Raises:
            MaskStateError: the masks were already baked by ``bake()``/``step()``.
        """
        from .trainer import train_masks

        self._require_masked("fit()")
        config = train_config or self.train_config
        self.train_result = train_masks(
            self.model, source, target, config, accelerator=accelerator, eval_sets=eval_sets, progress=progress
        )
        return self.train_result

    def bake(self) -> nn.Module:
        """Snapshot the scores into the importance, write ``W * M`` into every weight and remove the masks.

        Returns:
            The model, with plain (baked) weights and its original module classes.

        Raises:
            MaskStateError: already baked.
        """
        self._require_masked("bake()")
        if isinstance(self.importance, MAPImportance):
            self.importance.snapshot(self.model)
        with torch.no_grad():
            for module, name in self._gates:
                if parametrize.is_parametrized(module, name):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        if is_masked(self.model):
            bake_masks(self.model)
        self._gates = []
        _freeze(self.model)
        self._state = "baked"
        return self.model

    def step(self, interactive: bool = False) -> Iterator | None:
        """Bake the masks if they are still attached, then prune one step (torch-pruning semantics).

        Args:
            interactive: return a generator of groups to ``group.prune()`` yourself; the model is
                re-frozen and timm attention fixed once the generator is exhausted.

        Raises:
            MaskStateError: the model carries masks this pruner did not attach.
        """
        if self._state == "masked":
            self.bake()
        self._check_plain("step()")
        if interactive:
            return self._finish_after(super().step(interactive=True))
        super().step(interactive=False)
        self._finish()
        return None

    def _finish_after(self, groups: Iterator) -> Iterator:
        yield from groups
        self._finish()

    def _finish(self) -> None:
        # Pruning re-creates parameters with requires_grad=True; the protected model stays frozen.
        _freeze(self.model)
        self.attention_heads = fix_attention(self.model, self.num_heads)
        self.model.eval()
        self._state = "pruned"

    @torch.no_grad()
    def _prune(self) -> Iterator:
        if self.mode == "ratio":
            yield from super()._prune()
            return
        plans = []
        for group in self._all_groups():
            if not self._check_pruning_ratio(group):
                continue
            if self._is_atten_group(group)[0]:
                group = self._downstream_node_as_root_if_attention(group)
                if group is None:
                    continue
            dead = _dead_channels(self.DG, group)
            if dead is None or not bool(dead.any()):
                continue
            ch_groups = self._get_channel_groups(group)
            if ch_groups > 1 and dead.numel() % ch_groups == 0:
                dead = dead.view(ch_groups, -1).all(0)  # a dim goes only if it is dead in every head/group
            else:
                ch_groups = 1
            size = dead.numel()
            idx = dead.nonzero().view(-1)
            limit = min(size - 1, int(size * self.max_pruning_ratio))
            if self.round_to:
                # Round the kept count *up*: every extra kept channel is zero, so the result stays exact.
                kept = min(size, math.ceil((size - len(idx)) / self.round_to) * self.round_to)
                limit = min(limit, size - kept)
            idx = idx[: max(limit, 0)]
            if len(idx) == 0:
                continue
            full = torch.cat([idx + g * size for g in range(ch_groups)]).tolist()
            plans.append((group[0].dep.target.module, group[0].dep.handler, full))
        for module, fn, idxs in plans:
            group = self.DG.get_pruning_group(module, fn, idxs)
            if self.DG.check_pruning_group(group):
                yield group


# ----------------------------------------------------------------------------- save / load
_WEIGHTS, _HISTORY, _CONFIG = "model.safetensors", "pruning_history.json", "config.json"


def _history_of(pruner_or_history) -> list:
    history = pruner_or_history
    if hasattr(pruner_or_history, "pruning_history"):
        history = pruner_or_history.pruning_history()
    if not isinstance(history, list | tuple):
        raise ConfigError(
            f"pruner_or_history must be a torch-pruning pruner or its pruning_history() list, "
            f"got {type(pruner_or_history).__name__}"
        )
    out = []
    for entry in history:
        if not (isinstance(entry, list | tuple) and len(entry) == 3 and isinstance(entry[0], str)):
            raise ConfigError(f"pruning history entry {entry!r} is not [module_name, is_out_channel, indices]")
        out.append([entry[0], bool(entry[1]), [int(i) for i in entry[2]]])
    return out


def save_pruned(model: nn.Module, pruner_or_history, directory: str | Path, config: Mapping[str, Any]) -> Path:
    """Save a structurally pruned model: weights, pruning history and the config that rebuilds it.

    Writes ``model.safetensors`` (the state dict), ``pruning_history.json`` (torch-pruning's
    ``pruning_history()``, replayable with ``DependencyGraph.load_pruning_history``) and
    ``config.json`` (``config`` plus the attention head counts), each atomically. Nothing is pickled.

    Args:
        model: the pruned model, masks baked.
        pruner_or_history: the pruner that pruned it (any torch-pruning pruner), or its history list.
        directory: output folder (created).
        config: at least ``{"model": <create_model name>, "num_classes": int}``; optional ``in_chans``,
            ``img_size``; any other JSON-serialisable keys are kept.

    Returns:
        The directory.

    Raises:
        MaskStateError: the model still carries masks.
        ConfigError: ``config`` does not name a buildable architecture, or the history is malformed.

    Example:
        >>> save_pruned(model, pruner, "out/pruned", {"model": "resnet18", "num_classes": 10})
        >>> model = load_pruned("out/pruned")
    """
    from .models import is_known_model

    name = _has_parametrizations(model)
    if name is not None:
        raise MaskStateError(
            f"save_pruned() exports plain weights, but {name!r} still carries masks; call pruner.step() "
            "(or pruner.bake() / bake_masks(model)) first"
        )
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), str):
        raise ConfigError(f"config must be a mapping with a 'model' architecture name, got {config!r}")
    if not is_known_model(config["model"]):
        raise ConfigError(f"config['model']={config['model']!r} is not an architecture create_model can build")
    if not isinstance(config.get("num_classes"), int):
        raise ConfigError(f"config['num_classes'] must be an int, got {config.get('num_classes')!r}")
    history = _history_of(pruner_or_history)
    heads = {n: int(m.num_heads) for n, m in _attention_modules(model)}
    full = dict(config) | {"pruning": {"format": "torch-pruning-history", "attention_heads": heads}}
    directory = Path(directory)
    save_tensors(directory / _WEIGHTS, model.state_dict(), metadata={"format": "pt"})
    write_json(directory / _HISTORY, history)
    write_json(directory / _CONFIG, full)
    return directory


def load_pruned(directory: str | Path) -> nn.Module:
    """Rebuild a model saved by ``save_pruned``: architecture, replayed pruning, weights (strict).

    Returns:
        The pruned model in eval mode.

    Raises:
        ArtifactError: a file is missing or corrupted, or the weights do not fit the replayed model.

    Example:
        >>> model = load_pruned("out/pruned")
    """
    from .models import create_model

    directory = Path(directory)
    config = read_json(directory / _CONFIG)
    history = read_json(directory / _HISTORY)
    state = load_tensors(directory / _WEIGHTS)
    if not isinstance(config, dict) or "model" not in config or "num_classes" not in config:
        raise ArtifactError(f"{str(directory / _CONFIG)!r} lacks 'model' or 'num_classes'")
    in_chans, img_size = int(config.get("in_chans", 3)), int(config.get("img_size", 32))
    model = create_model(config["model"], num_classes=int(config["num_classes"]), in_chans=in_chans, img_size=img_size)
    try:
        history = _history_of(history)
    except ConfigError as e:
        raise ArtifactError(f"{str(directory / _HISTORY)!r}: {e}") from e
    with _traceable(model):
        graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, in_chans, img_size, img_size))
    try:
        graph.load_pruning_history(history)
    except (AttributeError, IndexError, KeyError, ValueError, RuntimeError) as e:
        raise ArtifactError(
            f"{str(directory)!r}: the pruning history does not replay on {config['model']!r} ({e})"
        ) from e
    fix_attention(model, (config.get("pruning") or {}).get("attention_heads"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{str(directory / _WEIGHTS)!r} does not fit the replayed model: {e}") from e
    return model.eval()
