"""Photo compositing, the way MNIST-M is built from MNIST: ``out = |patch - digit|`` per channel.

The patches are random ``S x S`` crops of scikit-learn's two bundled sample photographs (``china.jpg`` and
``flower.jpg``, 427x640). Where the grey image is black the photo shows through; where it is white the photo is
inverted, so a digit becomes a coloured stroke on a photo texture. The crop of image ``i`` (which photo, where) is the
``i``-th draw of NumPy's PCG64 generator seeded with the domain's fixed seed, so a composited domain is identical on
every machine and run and does not depend on which split is built first.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .registry import register_cache_clearer

__all__ = ["sample_photos", "composite_on_photos"]

_logger = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def sample_photos(min_side: int = 0) -> Tensor:
    """scikit-learn's sample photographs as a uint8 tensor ``[P, H, W, 3]``, upscaled if needed.

    Args:
        min_side: Smallest acceptable height and width; photos smaller than that are upscaled (bilinear).
    """
    from sklearn.datasets import load_sample_images

    photos = np.stack([np.ascontiguousarray(im) for im in load_sample_images().images])  # all 427x640x3
    out = torch.from_numpy(photos)
    height, width = out.shape[1:3]
    if min(height, width) < min_side:
        scale = min_side / min(height, width)
        size = (max(min_side, round(height * scale)), max(min_side, round(width * scale)))
        up = F.interpolate(out.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False)
        out = up.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return out


register_cache_clearer(sample_photos.cache_clear)


def composite_on_photos(grey: Tensor, seed: int, offset: int = 0, total: int | None = None) -> Tensor:
    """Composite grey images onto seeded random photo crops: ``|patch - grey|`` per channel.

    Args:
        grey: uint8 ``[N, 1, S, S]`` (white strokes on black).
        seed: Fixed seed of the domain.
        offset: Global index of ``grey[0]`` (a test split starts after the train split), so image ``i`` always gets
            the ``i``-th crop whichever split is built.
        total: Number of images in the whole domain (all splits); defaults to ``offset + N``.

    Returns:
        uint8 ``[N, 3, S, S]``.

    Raises:
        ConfigError: bad shape, dtype or offsets.

    Example:
        >>> composite_on_photos(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), seed=0).shape
        torch.Size([2, 3, 32, 32])
    """
    if grey.dim() != 4 or grey.shape[1] != 1 or grey.dtype != torch.uint8 or grey.shape[-1] != grey.shape[-2]:
        raise ConfigError(f"composite_on_photos: grey must be uint8 [N, 1, S, S], got {grey.dtype} {tuple(grey.shape)}")
    n, size = grey.shape[0], grey.shape[-1]
    total = offset + n if total is None else total
    if offset < 0 or offset + n > total:
        raise ConfigError(f"composite_on_photos: offset {offset} + {n} images exceeds total {total}")
    photos = sample_photos(size)
    num_photos, height, width = photos.shape[:3]
    rng = np.random.default_rng(seed)
    which = rng.integers(0, num_photos, size=total)[offset : offset + n]
    top = rng.integers(0, height - size + 1, size=total)[offset : offset + n]
    left = rng.integers(0, width - size + 1, size=total)[offset : offset + n]

    # Every S x S window of every photo as a zero-copy strided view [P, 3, H-S+1, W-S+1, S, S]; indexing it with
    # (which, top, left) gathers the n crops in one pass.
    chw = photos.permute(0, 3, 1, 2).contiguous()
    sp, sc, sh, sw = chw.stride()
    windows = chw.as_strided((num_photos, 3, height - size + 1, width - size + 1, size, size), (sp, sc, sh, sw, sh, sw))
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    chunk = 16384
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        patch = windows[torch.from_numpy(which[sl]), :, torch.from_numpy(top[sl]), torch.from_numpy(left[sl])]
        digit = grey[sl].expand_as(patch)
        # |patch - digit| in uint8 without overflow: max - min (4x faster than a round trip through int16)
        out[sl] = torch.maximum(patch, digit) - torch.minimum(patch, digit)
    _logger.debug("composited %d images of %dx%d onto photo crops (seed %d)", n, size, size, seed)
    return out
