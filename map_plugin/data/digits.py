"""Built-in domains ``digits`` and ``digits-m``, from scikit-learn's bundled handwritten digits.

``digits``: the 1,797 8x8 images (16 grey levels) scaled to [0, 1], upsampled bilinearly to ``img_size``, grey to RGB,
with a fixed stratified split (``train_test_split(test_size=0.2, random_state=0, stratify=labels)``: 1,437 train /
360 test). ``digits-m``: the same images and split composited onto photo crops (:mod:`.composite`), seed
``DIGITS_M_SEED``. Both need nothing but scikit-learn, which ships the data.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .composite import composite_on_photos
from .image_dataset import ImageTensorDataset
from .registry import register_cache_clearer, register_domain

__all__ = ["DIGIT_CLASSES", "DIGITS_M_SEED", "digits_split_indices", "build_digits", "build_digits_m"]

DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 0.2
DIGITS_M_SEED = 1797


@lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def digits_split_indices() -> dict[str, np.ndarray]:
    """Indices of the fixed stratified train/test split of the 1,797 digits (1,437 / 360)."""
    from sklearn.model_selection import train_test_split

    labels = _digits_raw()[1]
    train, test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    return {"train": np.sort(train), "test": np.sort(test)}


@lru_cache(maxsize=4)
def _digits_grey(img_size: int) -> Tensor:
    images = torch.from_numpy(_digits_raw()[0])[:, None]  # [N, 1, 8, 8] in [0, 1]
    up = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
    return up.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


@lru_cache(maxsize=4)
def _digits_m(img_size: int) -> Tensor:
    return composite_on_photos(_digits_grey(img_size), seed=DIGITS_M_SEED)


for _fn in (_digits_raw, digits_split_indices, _digits_grey, _digits_m):
    register_cache_clearer(_fn.cache_clear)


def _indices(split: str) -> tuple[Tensor, Tensor]:
    splits = digits_split_indices()
    if split not in splits:
        raise ConfigError(f"digits: unknown split {split!r}; expected one of {sorted(splits)}")
    idx = torch.from_numpy(splits[split])
    return idx, torch.from_numpy(_digits_raw()[1])[idx]


@register_domain("digits", classes=DIGIT_CLASSES, description="scikit-learn handwritten digits, 8x8 upsampled")
def build_digits(split: str, img_size: int) -> ImageTensorDataset:
    """scikit-learn handwritten digits (1,797), 8x8 upsampled, fixed stratified 1,437 / 360 split."""
    idx, labels = _indices(split)
    return ImageTensorDataset(_digits_grey(img_size)[idx], labels)


@register_domain("digits-m", classes=DIGIT_CLASSES, description="digits composited onto photo crops (MNIST-M style)")
def build_digits_m(split: str, img_size: int) -> ImageTensorDataset:
    """The digits composited onto random crops of scikit-learn's sample photos, as MNIST-M is built."""
    idx, labels = _indices(split)
    return ImageTensorDataset(_digits_m(img_size)[idx], labels)
