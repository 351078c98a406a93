"""The pruning-method table: a name -> pruner factory registry, in the style of torch-pruning's benchmark.

torch-pruning has no registry of its own; its ``reproduce/main.py`` picks ``(importance, pruner)``
from a table keyed by method name. This module is that table, with MAP in it:

    pruner = get_pruner("map", model, example_inputs)            # MAPPruner
    pruner = get_pruner("l1", model, example_inputs, pruning_ratio=0.3)

Every factory takes ``(model, example_inputs, **kwargs)``, forwards torch-pruning's keyword
arguments, ignores the classifier, and traces the model even when it is frozen. Add a method with
``@register_pruner("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch_pruning as tp
from torch import nn

from .errors import ConfigError, UnknownNameError
from .importance import MAPImportance
from .masks import find_classifier
from .pruner import MAPPruner, _attention_modules, _traceable, fix_attention

__all__ = ["get_pruner", "is_pruner", "list_pruners", "register_pruner"]

PrunerFactory = Callable[..., tp.pruner.BasePruner]
_PRUNERS: dict[str, PrunerFactory] = {}


def register_pruner(name: str) -> Callable[[PrunerFactory], PrunerFactory]:
    """Register ``factory(model, example_inputs, **kwargs) -> pruner`` under ``name``.

    Raises:
        ConfigError: ``name`` is empty or already registered.

    Example:
        >>> @register_pruner("my_l1")
        ... def _my_l1(model, example_inputs, **kwargs):
        ...     return tp.pruner.BasePruner(model, example_inputs, tp.importance.MagnitudeImportance(p=1), **kwargs)
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"pruner name must be a non-empty string, got {name!r}")

    def decorator(factory: PrunerFactory) -> PrunerFactory:
        if name in _PRUNERS:
            raise ConfigError(f"pruning method {name!r} is already registered; pick another name")
        _PRUNERS[name] = factory
        return factory

    return decorator


def list_pruners() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_PRUNERS)


def is_pruner(name: str) -> bool:
    """True if ``name`` is a registered method."""
    return name in _PRUNERS


def get_pruner(name: str, model: nn.Module, example_inputs: Any, **kwargs) -> tp.pruner.BasePruner:
    """Build the pruner registered as ``name`` for ``model``.

    Args:
        name: a registered method (``list_pruners()``).
        model: the model to prune.
        example_inputs: a batch for tracing.
        **kwargs: the method's options; torch-pruning's (``pruning_ratio``, ``ignored_layers``,
            ``global_pruning``, ``round_to``, ...) for every method, MAP's for ``"map"``.

    Returns:
        A ``tp.pruner.BasePruner``; call ``step()`` on it.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the names).

    Example:
        >>> pruner = get_pruner("map", model, torch.zeros(1, 3, 32, 32))
    """
    if name not in _PRUNERS:
        raise UnknownNameError(f"pruning method {name!r} is not registered; expected one of {list_pruners()}")
    return _PRUNERS[name](model, example_inputs, **kwargs)


class _TorchPruner(tp.pruner.BasePruner):
    """torch-pruning's BasePruner that also keeps timm attention blocks consistent after each step."""

    def step(self, interactive: bool = False):
        if interactive:
            return self._fixed_after(super().step(interactive=True))
        super().step(interactive=False)
        fix_attention(self.model, self.num_heads)
        return None

    def _fixed_after(self, groups):
        yield from groups
        fix_attention(self.model, self.num_heads)


def _build(pruner_cls, importance, model: nn.Module, example_inputs: Any, **kwargs) -> tp.pruner.BasePruner:
    ignored = list(kwargs.pop("ignored_layers", None) or [])
    head = find_classifier(model)
    if head is not None and not any(head is m for m in ignored):
        ignored.append(head)
    # BasePruner mutates these dict defaults, shared by every instance: always pass fresh ones.
    for key in ("in_channel_groups", "out_channel_groups", "num_heads"):
        kwargs[key] = dict(kwargs.get(key) or {})
    if not kwargs["num_heads"]:
        kwargs["num_heads"] = {m.qkv: m.num_heads for _, m in _attention_modules(model)}
    with _traceable(model):
        return pruner_cls(model, example_inputs, importance=importance, ignored_layers=ignored, **kwargs)


@register_pruner("map")
def _map(model: nn.Module, example_inputs: Any, **kwargs) -> MAPPruner:
    return MAPPruner(model, example_inputs, **kwargs)


@register_pruner("map_importance")
def _map_importance(model: nn.Module, example_inputs: Any, **kwargs) -> tp.pruner.BasePruner:
    # For masks attached with map_plugin.masks: snapshot, bake, then step() (see MAPImportance).
    return _build(_TorchPruner, MAPImportance(), model, example_inputs, **kwargs)


@register_pruner("l1")
def _l1(model: nn.Module, example_inputs: Any, **kwargs) -> tp.pruner.BasePruner:
    return _build(_TorchPruner, tp.importance.GroupMagnitudeImportance(p=1), model, example_inputs, **kwargs)


@register_pruner("magnitude")
def _l2(model: nn.Module, example_inputs: Any, **kwargs) -> tp.pruner.BasePruner:
    return _build(_TorchPruner, tp.importance.GroupMagnitudeImportance(p=2), model, example_inputs, **kwargs)


@register_pruner("random")
def _random(model: nn.Module, example_inputs: Any, **kwargs) -> tp.pruner.BasePruner:
    return _build(_TorchPruner, tp.importance.RandomImportance(), model, example_inputs, **kwargs)


@register_pruner("taylor")
def _taylor(model: nn.Module, example_inputs: Any, **kwargs) -> tp.pruner.BasePruner:
    # Needs gradients: run loss.backward() on a few batches before step().
    return _build(_TorchPruner, tp.importance.GroupTaylorImportance(), model, example_inputs, **kwargs)
