"""Domain registry: built-in domains, Hugging Face datasets, image folders, suffix transforms.

A domain is named by a spec string (``digits``, ``digits-m:wm``, ``hf:uoft-cs/cifar10``, ``folder:/data/x:inv``) and
yields lazily built labelled splits of ``(float32 [3, S, S] in [0, 1], int)`` items. See ``docs/domains.md``.

Example:
    >>> from map_plugin.data import load_domain
    >>> source, target = load_domain("digits"), load_domain("digits-m")
    >>> len(source.train), len(target.test)
    (1437, 360)
"""

from __future__ import annotations

from . import digits as digits
from . import fashion as fashion
from . import transforms as transforms
from .composite import composite_on_photos as composite_on_photos
from .domain import MIN_IMG_SIZE as MIN_IMG_SIZE
from .domain import Domain as Domain
from .domain import load_domain as load_domain
from .image_dataset import ImageTensorDataset as ImageTensorDataset
from .image_dataset import TransformedDataset as TransformedDataset
from .registry import HF_ALIASES as HF_ALIASES
from .registry import DomainBuilder as DomainBuilder
from .registry import clear_domain_cache as clear_domain_cache
from .registry import get_domain_builder as get_domain_builder
from .registry import get_domain_transform as get_domain_transform
from .registry import is_domain as is_domain
from .registry import is_domain_transform as is_domain_transform
from .registry import list_domain_transforms as list_domain_transforms
from .registry import list_domains as list_domains
from .registry import register_domain as register_domain
from .registry import register_domain_transform as register_domain_transform
from .registry import unregister_domain as unregister_domain
from .spec import DomainSpec as DomainSpec
from .spec import parse_domain_spec as parse_domain_spec
from .trigger import TRIGGER_SIZE as TRIGGER_SIZE
from .trigger import apply_trigger as apply_trigger
from .trigger import trigger_pattern as trigger_pattern

__all__ = [
    "Domain",
    "DomainBuilder",
    "DomainSpec",
    "HF_ALIASES",
    "ImageTensorDataset",
    "MIN_IMG_SIZE",
    "TRIGGER_SIZE",
    "TransformedDataset",
    "apply_trigger",
    "clear_domain_cache",
    "composite_on_photos",
    "get_domain_builder",
    "get_domain_transform",
    "is_domain",
    "is_domain_transform",
    "list_domain_transforms",
    "list_domains",
    "load_domain",
    "parse_domain_spec",
    "register_domain",
    "register_domain_transform",
    "trigger_pattern",
    "unregister_domain",
]
