"""What a MAP mask is and how it attaches to a model.

A mask is a ``torch.nn.utils.parametrize`` parametrization on a weight ``W``: it owns real scores
``S`` and returns ``W * M`` with ``M = 1[S > threshold]``. The backward is straight-through, so
``dL/dS = dL/dM = dL/d(W*M) * W``. Parametrization keeps the module's class a subclass of the
original (``ParametrizedConv2d`` is a ``Conv2d``), so torch-pruning and timm still recognise it.

Two granularities are registered: ``element`` (one score per weight, the paper's mask) and
``channel`` (one score per output channel: structured, what torch-pruning can remove). Masks
are addressed by tensor FQN (``"layer1.0.conv1.weight"``). Nothing here trains or computes a loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from .errors import ConfigError, MaskStateError, NoMaskableLayersError, UnknownNameError

__all__ = [
    "MASK_PARAM_NAME",
    "MaskConfig",
    "WeightMask",
    "attach_masks",
    "bake_masks",
    "binary_masks",
    "find_classifier",
    "is_masked",
    "list_granularities",
    "load_mask_state_dict",
    "mask_parameters",
    "mask_state_dict",
    "mask_of",
    "masked_modules",
    "masks_disabled",
    "register_granularity",
    "remove_masks",
    "sparsity_stats",
]

#: The one name token of every mask parameter: ``[n for n, _ in model.named_parameters() if MASK_PARAM_NAME in n]``.
MASK_PARAM_NAME = "map_scores"

_GRANULARITIES: dict[str, Callable[[torch.Size], tuple[int, ...]]] = {}


def register_granularity(name: str):
    """Register a function ``weight_shape -> score_shape`` under ``name`` (the score broadcasts over ``W``).

    Raises:
        ConfigError: ``name`` is already registered.
    """

    def _register(fn: Callable[[torch.Size], tuple[int, ...]]):
        if name in _GRANULARITIES:
            raise ConfigError(f"granularity {name!r} is already registered")
        _GRANULARITIES[name] = fn
        return fn

    return _register


@register_granularity("element")
def _element_shape(shape: torch.Size) -> tuple[int, ...]:
    return tuple(shape)


@register_granularity("channel")
def _channel_shape(shape: torch.Size) -> tuple[int, ...]:
    # One score per output channel: (out, 1, 1, 1) for a conv weight, (out, 1) for a linear weight.
    return (shape[0],) + (1,) * (len(shape) - 1)


def list_granularities() -> list[str]:
    """Names accepted by ``MaskConfig.granularity``."""
    return sorted(_GRANULARITIES)


@dataclass
class MaskConfig:
    """Which weights get masks, and how the mask is binarized.

    Attributes:
        granularity: a registered granularity (``element`` or ``channel``).
        threshold: scores strictly above it keep their weight; in (0, 1).
        init_score: initial score of every entry; above ``threshold`` so the model starts unmasked.
        include_classifier: mask the classifier's weight too (``get_classifier()`` or the last Linear).
        exclude: module names (exact, or prefixes ending in ``.``) that get no mask.
        layer_types: names of module classes whose ``weight`` is masked.
    """

    granularity: str = "element"
    threshold: float = 0.5
    init_score: float = 1.0
    include_classifier: bool = True
    exclude: list[str] = field(default_factory=list)
    layer_types: list[str] = field(default_factory=lambda: ["Conv1d", "Conv2d", "Conv3d", "Linear"])

    def __post_init__(self):
        if self.granularity not in _GRANULARITIES:
            raise UnknownNameError(
                f"granularity={self.granularity!r} is not registered; expected one of {list_granularities()}"
            )
        if not isinstance(self.threshold, int | float) or not 0.0 < float(self.threshold) < 1.0:
            raise ConfigError(f"threshold={self.threshold!r} must be a number strictly between 0 and 1")
        if not float(self.init_score) > float(self.threshold):
            raise ConfigError(
                f"init_score={self.init_score!r} must be above threshold={self.threshold!r}, "
                "or the model would start with every weight pruned"
            )
        if not self.layer_types:
            raise ConfigError("layer_types is empty; expected class names such as ['Conv2d', 'Linear']")


class _BinarizeSTE(torch.autograd.Function):
    """``1[S > t]`` forward, identity backward: the gradient reaching ``M`` passes to ``S`` unchanged."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class WeightMask(nn.Module):
    """Parametrization ``W -> W * 1[S > threshold]`` with straight-through scores ``S``.

    Args:
        weight: the tensor to mask (only its shape, dtype and device are read).
        granularity: a registered granularity name.
        threshold: binarization threshold in (0, 1).
        init_score: initial value of every score.
    """

    def __init__(self, weight: torch.Tensor, granularity: str = "element", threshold: float = 0.5, init_score=1.0):
        super().__init__()
        shape = _GRANULARITIES[granularity](weight.shape)
        self.granularity = granularity
        self.threshold = float(threshold)
        self.enabled = True
        self.map_scores = nn.Parameter(torch.full(shape, float(init_score), dtype=weight.dtype, device=weight.device))

    def mask(self) -> torch.Tensor:
        """The binary mask in the score's shape (broadcasts over the weight), with the STE attached."""
        return _BinarizeSTE.apply(self.map_scores, self.threshold)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return weight * self.mask()

    def extra_repr(self) -> str:
        return f"granularity={self.granularity!r}, threshold={self.threshold}, scores={tuple(self.map_scores.shape)}"


def find_classifier(model: nn.Module) -> nn.Module | None:
    """The classification head: `model.get_classifier()` when it has weights, else the last Linear."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        head = getter()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _excluded(name: str, patterns: list[str]) -> bool:
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in patterns)


def mask_of(module) -> WeightMask | None:
    """The ``WeightMask`` on ``module.weight``, or None (also for anything that is not a module)."""
    if not isinstance(module, nn.Module) or not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, WeightMask)), None)


def masked_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, WeightMask]]:
    """Yield ``(module_name, module, mask)`` for every masked module, in ``named_modules`` order."""
    for name, module in model.named_modules():
        mask = mask_of(module)
        if mask is not None:
            yield name, module, mask


def is_masked(model: nn.Module) -> bool:
    """True if any module of ``model`` carries a MAP mask."""
    return next(masked_modules(model), None) is not None


def attach_masks(model: nn.Module, config: MaskConfig | None = None) -> nn.Module:
    """Freeze ``model`` and attach a trainable mask to every selected weight, in place.

    Every existing parameter gets ``requires_grad=False`` and the model is put in eval mode, so
    BatchNorm statistics and dropout stay frozen; only the mask scores are trainable.

    Args:
        model: any ``nn.Module`` (timm, torchvision, or plain PyTorch).
        config: which weights to mask and how; defaults to ``MaskConfig()``.

    Returns:
        The same ``model``, masked.

    Raises:
        MaskStateError: the model already carries masks (call ``bake_masks`` or ``remove_masks`` first).
        NoMaskableLayersError: no weight matched ``config``.

    Example:
        >>> model = attach_masks(create_model("small_cnn", num_classes=10))
        >>> optimizer = torch.optim.Adam(mask_parameters(model), lr=1e-2)
    """
    config = config or MaskConfig()
    if is_masked(model):
        raise MaskStateError("the model already carries MAP masks; call bake_masks(model) or remove_masks(model) first")
    head = None if config.include_classifier else find_classifier(model)
    targets = []
    for name, module in model.named_modules():
        if type(module).__name__.removeprefix("Parametrized") not in config.layer_types:
            continue
        if module is head or _excluded(name, config.exclude):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue
        targets.append(module)
    if not targets:
        raise NoMaskableLayersError(
            f"no weight of {type(model).__name__} matches layer_types={config.layer_types} "
            f"(exclude={config.exclude}, include_classifier={config.include_classifier})"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    for module in targets:
        mask = WeightMask(module.weight, config.granularity, config.threshold, config.init_score)
        parametrize.register_parametrization(module, "weight", mask)
    return model


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable score tensors of every mask (what the optimizer should see)."""
    return [mask.map_scores for _, _, mask in masked_modules(model)]


def _detach(model: nn.Module, leave_parametrized: bool) -> nn.Module:
    modules = list(masked_modules(model))
    if not modules:
        raise MaskStateError("the model carries no MAP masks; call attach_masks(model) first")
    for _, module, _ in modules:
        weight = module.parametrizations.weight
        others = [p for p in weight if not isinstance(p, WeightMask)]
        if others:
            raise MaskStateError(
                f"{type(module).__name__} carries other parametrizations besides the MAP mask; remove them first"
            )
        with torch.no_grad():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=leave_parametrized)
    return model


def bake_masks(model: nn.Module) -> nn.Module:
    """Write ``W * M`` into every masked weight and remove the masks, in place.

    Pruned entries become exactly ``0.0``; the original values are gone from the model, so a
    state dict saved afterwards does not carry them. Module classes are restored (``nn.Conv2d``).

    Raises:
        MaskStateError: the model carries no masks.
    """
    return _detach(model, leave_parametrized=True)


def remove_masks(model: nn.Module) -> nn.Module:
    """Remove every mask without touching the weights (the model is the original again), in place.

    Raises:
        MaskStateError: the model carries no masks.
    """
    return _detach(model, leave_parametrized=False)


@contextlib.contextmanager
def masks_disabled(model: nn.Module):
    """Run the original, unmasked model inside the block (for "before" metrics and teacher logits)."""
    masks = [mask for _, _, mask in masked_modules(model)]
    previous = [m.enabled for m in masks]
    for m in masks:
        m.enabled = False
    try:
        yield model
    finally:
        for m, e in zip(masks, previous, strict=True):
            m.enabled = e


def binary_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{tensor_fqn: bool mask}`` in each weight's full shape (channel masks are expanded)."""
    out = {}
    for name, module, mask in masked_modules(model):
        original = module.parametrizations.weight.original
        out[_fqn(name)] = (mask.map_scores.detach() > mask.threshold).expand_as(original).clone()
    return out


def _fqn(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def mask_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The mask scores keyed by tensor FQN, e.g. ``{"features.0.weight": scores}`` (detached copies)."""
    return {_fqn(name): mask.map_scores.detach().clone() for name, _, mask in masked_modules(model)}


def load_mask_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy scores from ``state_dict`` (as made by ``mask_state_dict``) into the attached masks.

    Raises:
        MaskStateError: the model carries no masks, or with ``strict`` the keys differ.
        ConfigError: a score tensor has the wrong shape.
    """
    masks = {_fqn(name): mask for name, _, mask in masked_modules(model)}
    if not masks:
        raise MaskStateError("the model carries no MAP masks; call attach_masks(model, config) first")
    missing, unexpected = sorted(set(masks) - set(state_dict)), sorted(set(state_dict) - set(masks))
    if strict and (missing or unexpected):
        raise MaskStateError(f"mask state dict does not match the model: missing={missing} unexpected={unexpected}")
    with torch.no_grad():
        for key, scores in state_dict.items():
            if key not in masks:
                continue
            target = masks[key].map_scores
            if target.shape != scores.shape:
                raise ConfigError(
                    f"mask {key!r}: scores of shape {tuple(scores.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(scores)


def sparsity_stats(model: nn.Module) -> dict:
    """Kept fraction of masked weights, overall and per module (1.0 = nothing pruned).

    Returns:
        ``{"kept_fraction": float, "kept_per_layer": {module_name: float}, "masked_weights": int}``.
        The overall fraction counts weights, so large layers weigh more.
    """
    per_layer, kept, total = {}, 0, 0
    for name, fqn_mask in ((n, m) for n, m in binary_masks(model).items()):
        k, t = int(fqn_mask.sum()), fqn_mask.numel()
        per_layer[name.removesuffix(".weight")] = k / t
        kept, total = kept + k, total + t
    return {"kept_fraction": kept / total if total else 1.0, "kept_per_layer": per_layer, "masked_weights": total}
