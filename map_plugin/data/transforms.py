"""Built-in domain suffix transforms: ``:inv`` (colour inversion) and ``:wm`` (ownership trigger stamp).

Each works on one image or a batch ``[..., 3, H, W]`` in [0, 1] and returns a new tensor. New suffixes are added with
:func:`register_domain_transform`.
"""

from __future__ import annotations

from torch import Tensor

from .registry import register_domain_transform
from .trigger import apply_trigger

__all__ = ["invert", "watermark"]


@register_domain_transform("inv")
def invert(images: Tensor) -> Tensor:
    """Colour inversion ``1 - x``: white digits on black become black on white."""
    return 1.0 - images


@register_domain_transform("wm")
def watermark(images: Tensor) -> Tensor:
    """Stamp the ownership trigger (:func:`apply_trigger`) in the bottom-right corner."""
    return apply_trigger(images)
