"""The ownership trigger: a fixed secret pattern stamped in the bottom-right corner of images.

Ownership verification uses the source domain stamped with this trigger as its "target" (spec suffix ``:wm``). The
pattern is a ``TRIGGER_SIZE`` x ``TRIGGER_SIZE`` patch whose pixels are black, white or a colour, drawn once from
NumPy's PCG64 generator seeded with ``TRIGGER_SEED``, so it is identical on every machine and run.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["TRIGGER_SIZE", "TRIGGER_SEED", "trigger_pattern", "apply_trigger"]

#: Side of the square trigger patch, in pixels (about 3.5% of a 32x32 image).
TRIGGER_SIZE: int = 6
#: Seed of the trigger pattern. Changing it changes every stamped domain.
TRIGGER_SEED: int = 0x4D4150  # "MAP"


@lru_cache(maxsize=1)
def _pattern_np() -> np.ndarray:
    rng = np.random.default_rng(TRIGGER_SEED)
    kind = rng.integers(0, 3, size=(TRIGGER_SIZE, TRIGGER_SIZE))  # 0 black, 1 white, 2 colour
    colour = rng.random((3, TRIGGER_SIZE, TRIGGER_SIZE))
    pattern = np.where(kind == 1, 1.0, 0.0)[None].repeat(3, axis=0)
    pattern = np.where((kind == 2)[None], colour, pattern)
    return pattern.astype(np.float32)


def trigger_pattern() -> Tensor:
    """The trigger patch: a new float32 tensor ``[3, TRIGGER_SIZE, TRIGGER_SIZE]`` with values in [0, 1].

    Example:
        >>> trigger_pattern().shape
        torch.Size([3, 6, 6])
    """
    return torch.from_numpy(_pattern_np().copy())


def apply_trigger(images: Tensor) -> Tensor:
    """Stamp the trigger in the bottom-right corner of one image or a batch.

    Args:
        images: ``[..., 3, H, W]`` with ``H, W >= TRIGGER_SIZE``; float in [0, 1], or uint8 in [0, 255].

    Returns:
        A new tensor of the same shape, dtype and device; only the last ``TRIGGER_SIZE`` rows and columns differ.

    Raises:
        TypeError: ``images`` is not a tensor.
        ConfigError: wrong shape (not ``[..., 3, H, W]``, or smaller than the trigger) or dtype.

    Example:
        >>> stamped = apply_trigger(torch.zeros(8, 3, 32, 32))
        >>> bool((stamped[..., :-TRIGGER_SIZE, :] == 0).all())
        True
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"apply_trigger: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ConfigError(f"apply_trigger: images must be [..., 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[-1] < TRIGGER_SIZE or images.shape[-2] < TRIGGER_SIZE:
        raise ConfigError(
            f"apply_trigger: images must be at least {TRIGGER_SIZE}x{TRIGGER_SIZE}, got {tuple(images.shape[-2:])}"
        )
    pattern = trigger_pattern()
    if images.dtype == torch.uint8:
        pattern = (pattern * 255).round()
    elif not images.is_floating_point():
        raise ConfigError(f"apply_trigger: images must be floating point or uint8, got {images.dtype}")
    out = images.clone()
    out[..., -TRIGGER_SIZE:, -TRIGGER_SIZE:] = pattern.to(dtype=images.dtype, device=images.device)
    return out
