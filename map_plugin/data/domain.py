"""The :class:`Domain` object and :func:`load_domain`, the one factory from spec string to labelled splits.

A domain's splits are built lazily: ``load_domain`` validates the spec and reads only metadata; a split's images are
read the first time :meth:`Domain.split` asks for it, then cached on the domain and, per ``(builder, img_size,
split)``, in the process (:func:`clear_domain_cache` empties that cache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from torch.utils.data import Dataset

from ..errors import ConfigError
from .hf import folder_domain_builder, hf_domain_builder
from .image_dataset import TransformedDataset
from .registry import DomainBuilder, get_domain_builder, get_domain_transform, register_cache_clearer
from .spec import DomainSpec, parse_domain_spec

__all__ = ["Domain", "load_domain", "MIN_IMG_SIZE"]

_logger = logging.getLogger(__name__)

#: Smallest accepted image side (the trigger is 6 pixels; 8x8 is the native digits size).
MIN_IMG_SIZE = 8


@dataclass(eq=False)
class Domain:
    """A named data domain with lazily built labelled splits.

    Items of every split are ``(image, label)``: ``image`` a float32 tensor ``[3, img_size, img_size]`` in [0, 1],
    ``label`` an int in ``[0, num_classes)``.

    Attributes:
        name: The spec string as given to :func:`load_domain` (``"digits-m:inv"``).
        num_classes: Number of classes.
        classes: Class names; ``classes[i]`` is label ``i``.
        img_size: Side of the square images.
        in_chans: Always 3 (grey images are converted to RGB).
        splits: Split names :meth:`split` accepts.
        loader: ``loader(split) -> Dataset``, called once per split on first use.
        spec: The parsed spec (None for domains built with :meth:`from_datasets`).

    Example:
        >>> d = load_domain("digits")
        >>> image, label = d.test[0]
        >>> image.shape, d.num_classes
        (torch.Size([3, 32, 32]), 10)
    """

    name: str
    num_classes: int
    classes: tuple[str, ...]
    img_size: int
    in_chans: int = 3
    splits: tuple[str, ...] = ("train", "test")
    loader: Callable[[str], Dataset] | None = field(default=None, repr=False)
    spec: DomainSpec | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._built: dict[str, Dataset] = {}  # not a dataclass field: asdict(domain) must not copy datasets
        self.classes = tuple(self.classes)
        self.splits = tuple(self.splits)
        if self.num_classes != len(self.classes):
            raise ConfigError(f"Domain {self.name!r}: num_classes={self.num_classes} but {len(self.classes)} classes")
        if self.in_chans != 3:
            raise ConfigError(
                f"Domain {self.name!r}: in_chans must be 3 (grey is converted to RGB), got {self.in_chans}"
            )

    @classmethod
    def from_datasets(cls, name: str, classes: Sequence[str], img_size: int, **splits: Dataset) -> Domain:
        """A domain over datasets already built (synthetic pseudo-source, test fixtures).

        Example:
            >>> Domain.from_datasets("tiny", ("a", "b"), 32, train=ds, test=ds).split("test") is ds
            True
        """
        if not splits:
            raise ConfigError(f"Domain.from_datasets({name!r}): give at least one split, e.g. train=..., test=...")
        domain = cls(name, len(classes), tuple(classes), img_size, splits=tuple(splits))
        domain._built.update(splits)
        return domain

    def split(self, name: str) -> Dataset:
        """The dataset of split ``name``, built on first call and cached.

        Raises:
            ConfigError: ``name`` is not one of :attr:`splits`.
        """
        if not isinstance(name, str) or name not in self.splits:
            raise ConfigError(f"domain {self.name!r}: unknown split {name!r}; expected one of {list(self.splits)}")
        if name in self._built:
            return self._built[name]
        if self.loader is None:
            raise ConfigError(f"domain {self.name!r}: split {name!r} has no loader")
        dataset = self.loader(name)
        self._built[name] = dataset
        return dataset

    @property
    def train(self) -> Dataset:
        """``self.split("train")``."""
        return self.split("train")

    @property
    def test(self) -> Dataset:
        """``self.split("test")``."""
        return self.split("test")


@lru_cache(maxsize=16)
def _build_split(builder: DomainBuilder, img_size: int, split: str) -> Dataset:
    t0 = time.perf_counter()
    dataset = builder.load(split, img_size)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise ConfigError(f"domain {builder.name!r}: builder returned {type(dataset).__name__}, not a sized Dataset")
    _logger.info(
        "domain %s: built %s split (%d items, %dx%d) in %.2fs",
        builder.name,
        split,
        len(dataset),
        img_size,
        img_size,
        time.perf_counter() - t0,
    )
    return dataset


register_cache_clearer(_build_split.cache_clear)


def _resolve_builder(spec: DomainSpec) -> DomainBuilder:
    if spec.kind == "builtin":
        return get_domain_builder(spec.name)
    if spec.kind == "hf":
        return hf_domain_builder(spec.name, spec.config)
    return folder_domain_builder(spec.name)


def load_domain(spec: str, img_size: int = 32) -> Domain:
    """Load a domain from its spec string; splits are built lazily on first access.

    The spec is validated before anything is loaded. See ``docs/domains.md`` for the spec syntax.

    Args:
        spec: ``digits``, ``digits-m``, ``fashion``, ``fashion-m``, a hub alias (``mnist``, ``svhn``, ...),
            ``hf:<repo_id>[:<config>]`` or ``folder:<path>``, each optionally followed by suffixes (``:inv``, ``:wm``).
        img_size: Side of the square output images (at least ``MIN_IMG_SIZE``).

    Returns:
        The :class:`Domain`, with ``name`` equal to ``spec``.

    Raises:
        TypeError: ``spec`` is not a str.
        ConfigError: empty spec or bad ``img_size``; for ``hf:``/``folder:``, no usable image or label column.
        UnknownDomainError: unknown name or a bare path (the message lists the registered names).
        UnknownNameError: unknown suffix (the message lists the registered suffixes).
        DataNotFoundError: a ``folder:`` path does not exist, or a ``hf:`` dataset cannot be loaded.

    Example:
        >>> target = load_domain("digits-m:wm", img_size=32)
        >>> len(target.test)
        360
    """
    parsed = parse_domain_spec(spec)
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < MIN_IMG_SIZE:
        raise ConfigError(f"load_domain({spec!r}): img_size must be an int >= {MIN_IMG_SIZE}, got {img_size!r}")
    transforms = tuple(get_domain_transform(s) for s in parsed.suffixes)
    builder = _resolve_builder(parsed)

    def loader(split: str) -> Dataset:
        dataset = _build_split(builder, img_size, split)
        return TransformedDataset(dataset, transforms, parsed.suffixes) if transforms else dataset

    _logger.info("domain %s: %d classes, splits %s", spec, builder.num_classes, list(builder.splits))
    return Domain(
        name=spec,
        num_classes=builder.num_classes,
        classes=builder.classes,
        img_size=img_size,
        splits=builder.splits,
        loader=loader,
        spec=parsed,
    )
