"""The two string-named registries of the data package: domains and suffix transforms.

A *domain builder* is registered under a name with ``@register_domain(name, classes=...)`` on a function
``(split, img_size) -> Dataset``; the function is called lazily, once per split actually asked for. A *domain
transform* is registered under a suffix (``inv``, ``wm``) with ``@register_domain_transform(suffix)`` on a function
mapping images ``[..., 3, H, W]`` in [0, 1] to images of the same shape. Both registries follow timm's
``register_model`` / ``list_models`` / ``is_model`` / ``model_entrypoint`` shape; a duplicate name raises.

This module also holds the table of well-known short names that resolve to Hugging Face Hub datasets, and the
in-process cache hooks that :func:`clear_domain_cache` empties.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, UnknownDomainError, UnknownNameError

__all__ = [
    "HF_ALIASES",
    "SPEC_PREFIXES",
    "DomainBuilder",
    "register_domain",
    "unregister_domain",
    "list_domains",
    "is_domain",
    "get_domain_builder",
    "register_domain_transform",
    "list_domain_transforms",
    "is_domain_transform",
    "get_domain_transform",
    "clear_domain_cache",
    "register_cache_clearer",
]

#: Well-known short names -> (hub repo id, config). They need the Hub reachable, the dataset in the local HF cache,
#: or a local copy under ``$MAP_DATA_DIR/hf/<repo_id>`` (see ``map_plugin.data.hf``).
HF_ALIASES: dict[str, tuple[str, str | None]] = {
    "mnist": ("ylecun/mnist", None),
    "usps": ("flwrlabs/usps", None),
    "svhn": ("ufldl-stanford/svhn", "cropped_digits"),
    "mnist-m": ("Mike0307/MNIST-M", None),
    "cifar10": ("uoft-cs/cifar10", None),
    "stl10": ("tanganke/stl10", None),
}

#: Spec prefixes with an opaque id after them (``hf:<repo_id>[:<config>]``, ``folder:<path>``).
SPEC_PREFIXES: tuple[str, ...] = ("hf", "folder")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SUFFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

SplitLoader = Callable[[str, int], Dataset]
ImageTransform = Callable[[Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class DomainBuilder:
    """What the registry stores for one domain: metadata plus the lazy per-split loader.

    Attributes:
        name: Registered name (``digits``), or the canonical spec for ``hf:`` / ``folder:`` builders.
        classes: Class names, index ``i`` is label ``i``.
        load: ``load(split, img_size) -> Dataset`` of ``(float32 [3, S, S] in [0, 1], int label)`` items. Called only
            for splits that are asked for.
        splits: Split names ``load`` accepts.
        description: One line shown by documentation and error messages.
    """

    name: str
    classes: tuple[str, ...]
    load: SplitLoader
    splits: tuple[str, ...] = ("train", "test")
    description: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


_domains: dict[str, DomainBuilder] = {}
_transforms: dict[str, ImageTransform] = {}
_cache_clearers: list[Callable[[], Any]] = []


def register_cache_clearer(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register a zero-argument callable that :func:`clear_domain_cache` calls (e.g. an ``lru_cache.cache_clear``)."""
    _cache_clearers.append(fn)
    return fn


def clear_domain_cache() -> None:
    """Drop every in-process cache of loaded domain data (splits, parsed files, photos, opened HF datasets).

    Example:
        >>> clear_domain_cache()  # the next load_domain("digits-m") rebuilds its images
    """
    for fn in _cache_clearers:
        fn()


def _check_classes(name: str, classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) == 0:
        raise ConfigError(f"register_domain({name!r}): classes must be a non-empty sequence of str, got {classes!r}")
    return tuple(str(c) for c in classes)


def register_domain(
    name: str,
    *,
    classes: Sequence[str],
    splits: Sequence[str] = ("train", "test"),
    description: str = "",
) -> Callable[[SplitLoader], SplitLoader]:
    """Decorator registering a domain builder ``fn(split: str, img_size: int) -> Dataset`` under ``name``.

    The builder is called lazily by :meth:`Domain.split`, once per split actually requested, so a split that is never
    asked for is never read. Its dataset yields ``(image, label)`` with ``image`` a float32 tensor
    ``[3, img_size, img_size]`` in [0, 1] and ``label`` an int in ``[0, len(classes))``.

    Args:
        name: Lower-case name without ``:`` or ``/`` (``[a-z0-9][a-z0-9_.-]*``), not a spec prefix or hub alias.
        classes: Class names; ``num_classes`` is their count.
        splits: Split names the builder accepts.
        description: One line for docs and listings.

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ConfigError: ``name`` is malformed, reserved or already registered, or ``classes``/``splits`` are empty.

    Example:
        >>> @register_domain("tiny", classes=("a", "b"))
        ... def _tiny(split, img_size):
        ...     return ImageTensorDataset(torch.zeros(4, 3, img_size, img_size), torch.tensor([0, 1, 0, 1]))
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"register_domain: name must match {_NAME_RE.pattern!r} (no ':' or '/'), got {name!r}")
    if name in SPEC_PREFIXES or name in HF_ALIASES:
        raise ConfigError(f"register_domain: {name!r} is reserved (spec prefix or hub alias); pick another name")
    if name in _domains:
        raise ConfigError(
            f"register_domain: domain {name!r} is already registered; pick another name or call "
            f"unregister_domain({name!r}) first"
        )
    classes_t = _check_classes(name, classes)
    splits_t = tuple(str(s) for s in splits)
    if not splits_t:
        raise ConfigError(f"register_domain({name!r}): splits must not be empty")

    def decorator(fn: SplitLoader) -> SplitLoader:
        if not callable(fn):
            raise ConfigError(f"register_domain({name!r}) must decorate a callable (split, img_size) -> Dataset")
        if name in _domains:  # registered between the call and the decoration
            raise ConfigError(f"register_domain: domain {name!r} is already registered")
        _domains[name] = DomainBuilder(name, classes_t, fn, splits_t, description or (fn.__doc__ or "").strip())
        return fn

    return decorator


def unregister_domain(name: str) -> None:
    """Remove a registered domain and drop the in-process caches (for tests and notebooks).

    Raises:
        UnknownDomainError: ``name`` is not registered.
    """
    if name not in _domains:
        raise UnknownDomainError(f"cannot unregister {name!r}: not a registered domain; registered: {list_domains()}")
    del _domains[name]
    clear_domain_cache()


def list_domains(pattern: str = "") -> list[str]:
    """Sorted names of the registered (built-in) domains, optionally filtered by a shell pattern.

    Hub aliases (``mnist``, ...) are in ``HF_ALIASES``; ``hf:`` and ``folder:`` specs are open-ended.

    Example:
        >>> list_domains("digits*")
        ['digits', 'digits-m']
    """
    names = sorted(_domains)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def is_domain(spec: str) -> bool:
    """Whether ``spec`` is a domain spec that :func:`parse_domain_spec` accepts.

    True for a registered name, a hub alias, any ``hf:``/``folder:`` spec, each with registered suffixes. Paths and
    hub repos are not checked for existence here.

    Example:
        >>> is_domain("digits:inv"), is_domain("nope")
        (True, False)
    """
    from .spec import parse_domain_spec

    try:
        parse_domain_spec(spec)
    except (ValueError, TypeError):
        return False
    return True


def get_domain_builder(name: str) -> DomainBuilder:
    """The registered :class:`DomainBuilder` for ``name``.

    Raises:
        UnknownDomainError: ``name`` is not registered; the message lists the registered names.
    """
    try:
        return _domains[name]
    except (KeyError, TypeError):
        raise UnknownDomainError(f"unknown domain {name!r}; registered domains: {list_domains()}") from None


def register_domain_transform(suffix: str) -> Callable[[ImageTransform], ImageTransform]:
    """Decorator registering an image transform applied by the spec suffix ``:<suffix>`` (``digits:inv``).

    The function maps a float image tensor ``[..., 3, H, W]`` in [0, 1] (one image or a batch) to a new tensor of the
    same shape, without modifying its input. Suffixes chain left to right: ``digits:inv:wm`` inverts, then stamps.

    Args:
        suffix: Lower-case name (``[a-z0-9][a-z0-9_-]*``).

    Raises:
        ConfigError: malformed or already registered suffix.

    Example:
        >>> @register_domain_transform("grey")
        ... def _grey(x):
        ...     return x.mean(dim=-3, keepdim=True).expand_as(x).clone()
    """
    if not isinstance(suffix, str) or not _SUFFIX_RE.match(suffix):
        raise ConfigError(f"register_domain_transform: suffix must match {_SUFFIX_RE.pattern!r}, got {suffix!r}")
    if suffix in _transforms:
        raise ConfigError(f"register_domain_transform: suffix {suffix!r} is already registered")

    def decorator(fn: ImageTransform) -> ImageTransform:
        if not callable(fn):
            raise ConfigError(f"register_domain_transform({suffix!r}) must decorate a callable")
        _transforms[suffix] = fn
        return fn

    return decorator


def list_domain_transforms() -> list[str]:
    """Sorted registered suffixes (``['inv', 'wm']`` by default)."""
    return sorted(_transforms)


def is_domain_transform(suffix: str) -> bool:
    """Whether ``suffix`` is a registered domain transform."""
    return isinstance(suffix, str) and suffix in _transforms


def get_domain_transform(suffix: str) -> ImageTransform:
    """The transform registered under ``suffix``.

    Raises:
        UnknownNameError: unknown suffix; the message lists the registered ones.
    """
    try:
        return _transforms[suffix]
    except (KeyError, TypeError):
        raise UnknownNameError(
            f"unknown domain suffix {suffix!r}; registered suffixes: {list_domain_transforms()}"
        ) from None
