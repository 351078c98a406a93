"""Built-in domains ``fashion`` and ``fashion-m``: Fashion-MNIST (60,000 train / 10,000 test, 28x28 grey).

The IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
``t10k-labels-idx1-ubyte[.gz]``) are looked for, in order, in:

1. ``$MAP_DATA_DIR``, ``$MAP_DATA_DIR/fashion-mnist`` and ``$MAP_DATA_DIR/FashionMNIST/raw`` (torchvision's layout);
2. the install directory of the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) and
   directories matching ``FASHION_GLOBS``;
3. an earlier download in ``$MAP_CACHE_DIR/fashion-mnist`` (default ``~/.cache/map_plugin``);
4. a torchvision download into that cache, unless offline (``MAP_OFFLINE``, ``HF_HUB_OFFLINE`` or
   ``HF_DATASETS_OFFLINE`` set, or the download host unreachable within a few seconds).

Otherwise :class:`DataNotFoundError` says how to get them. Images are resized to ``img_size`` (bilinear, antialiased)
and kept as uint8; ``fashion-m`` composites them onto photo crops (:mod:`.composite`, seed ``FASHION_M_SEED``).
"""

from __future__ import annotations

import glob
import gzip
import logging
import os
import socket
import struct
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ArtifactError, ConfigError, DataNotFoundError
from .composite import composite_on_photos
from .image_dataset import ImageTensorDataset
from .registry import register_cache_clearer, register_domain

__all__ = [
    "FASHION_CLASSES",
    "FASHION_FILES",
    "DEBIAN_FASHION_DIRS",
    "FASHION_GLOBS",
    "read_idx",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "build_fashion",
    "build_fashion_m",
]

_logger = logging.getLogger(__name__)

FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: split -> (images file, labels file), without the optional ``.gz``.
FASHION_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_SIZES: dict[str, int] = {"train": 60000, "test": 10000}
#: Where ``apt-get install dataset-fashion-mnist`` puts the IDX files (``dpkg -L dataset-fashion-mnist``).
DEBIAN_FASHION_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
#: Other system directories that may hold the files (other packagings, other prefixes).
FASHION_GLOBS: tuple[str, ...] = (
    "/usr/share/datasets/*fashion*mnist*",
    "/usr/local/share/datasets/*fashion*mnist*",
    "/usr/share/*/fashion-mnist",
)
FASHION_M_SEED = 70000
_PROBE_TIMEOUT_S = 3.0


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes into a NumPy array.

    Raises:
        ArtifactError: not an IDX ubyte file, or truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ArtifactError(f"cannot read IDX file {str(path)!r}: {e}") from e
    if len(data) < 4:
        raise ArtifactError(f"{str(path)!r} is not an IDX file (only {len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise ArtifactError(f"{str(path)!r} is not an IDX ubyte file (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise ArtifactError(f"{str(path)!r}: header says {dims} ({count} bytes) but holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable, owns its memory


def _cache_dir() -> Path:
    return Path(os.environ.get("MAP_CACHE_DIR") or Path.home() / ".cache" / "map_plugin") / "fashion-mnist"


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = []
    data_dir = os.environ.get("MAP_DATA_DIR")
    if data_dir:
        root = Path(data_dir).expanduser()
        dirs += [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    dirs += [Path(d) for d in DEBIAN_FASHION_DIRS]
    for pattern in FASHION_GLOBS:
        dirs += [Path(d) for d in sorted(glob.glob(pattern))]
    dirs.append(_cache_dir() / "FashionMNIST" / "raw")
    return list(dict.fromkeys(dirs))


def _file_in(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _offline() -> bool:
    flags = ("MAP_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(f, "").strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _download() -> Path | None:
    """Download Fashion-MNIST with torchvision into the cache; None when offline or failing (fast)."""
    if _offline():
        return None
    try:
        from urllib.parse import urlparse

        from torchvision.datasets import FashionMNIST

        host = urlparse(FashionMNIST.mirrors[0]).hostname
        socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
        root = _cache_dir()
        _logger.info("downloading Fashion-MNIST with torchvision into %s", root)
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as e:  # any failure means "not available": the caller raises DataNotFoundError
        _logger.warning("Fashion-MNIST download failed: %s", e)
        return None
    return root / "FashionMNIST" / "raw"


def find_fashion_mnist(split: str, download: bool = False) -> tuple[Path, Path] | None:
    """Paths ``(images, labels)`` of a Fashion-MNIST split on this machine, or None.

    Args:
        split: ``train`` or ``test``.
        download: Try a torchvision download when nothing is found locally.

    Raises:
        ConfigError: unknown split.
    """
    if split not in FASHION_FILES:
        raise ConfigError(f"fashion: unknown split {split!r}; expected one of {sorted(FASHION_FILES)}")
    image_stem, label_stem = FASHION_FILES[split]
    dirs = _candidate_dirs()
    for directory in dirs:
        images, labels = _file_in(directory, image_stem), _file_in(directory, label_stem)
        if images and labels:
            return images, labels
    downloaded = _download() if download else None
    if downloaded is not None:
        images, labels = _file_in(downloaded, image_stem), _file_in(downloaded, label_stem)
        if images and labels:
            return images, labels
    return None


@lru_cache(maxsize=4)
def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0] or labels.max(initial=0) > 9:
        raise ArtifactError(
            f"Fashion-MNIST files do not match: {str(images_path)!r} {images.shape}, "
            f"{str(labels_path)!r} {labels.shape}"
        )
    return images, labels


register_cache_clearer(_read_pair.cache_clear)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw Fashion-MNIST split: uint8 images ``[N, 28, 28]`` and int labels ``[N]`` (N = 60,000 or 10,000).

    Raises:
        ConfigError: unknown split.
        DataNotFoundError: the files are nowhere on this machine and cannot be downloaded; says how to get them.
        ArtifactError: a file is corrupted.
    """
    found = find_fashion_mnist(split, download=True)
    if found is None:
        searched = "\n  ".join(str(d) for d in _candidate_dirs())
        raise DataNotFoundError(
            f"Fashion-MNIST {split!r} files ({' + '.join(FASHION_FILES[split])}, optionally .gz) not found; searched:"
            f"\n  {searched}\nand no download was possible (offline). Fix: `sudo apt-get install dataset-fashion-mnist`"
            " (Debian/Ubuntu), or put the four IDX files in a directory and set MAP_DATA_DIR to it."
        )
    _logger.info("Fashion-MNIST %s from %s", split, found[0].parent)
    return _read_pair(*found)


def _fashion_grey(split: str, img_size: int) -> tuple[Tensor, Tensor]:
    images, labels = load_fashion_mnist(split)
    grey = torch.from_numpy(images)[:, None]  # [N, 1, 28, 28] uint8, shares memory with the cached array
    if img_size != grey.shape[-1]:
        smaller = img_size < grey.shape[-1]  # antialiasing only matters when shrinking
        out = torch.empty(grey.shape[0], 1, img_size, img_size, dtype=torch.uint8)
        for start in range(0, grey.shape[0], 8192):
            chunk = grey[start : start + 8192].float()
            up = F.interpolate(
                chunk, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=smaller
            )
            out[start : start + 8192] = up.round_().clamp_(0, 255).to(torch.uint8)
        grey = out
    else:
        grey = grey.clone()
    return grey, torch.from_numpy(labels.astype(np.int64))


@register_domain("fashion", classes=FASHION_CLASSES, description="Fashion-MNIST, 28x28 grey resized")
def build_fashion(split: str, img_size: int) -> ImageTensorDataset:
    """Fashion-MNIST (60,000 / 10,000), resized, grey to RGB per item."""
    t0 = time.perf_counter()
    grey, labels = _fashion_grey(split, img_size)
    _logger.info("fashion %s: %d images in %.1fs", split, len(labels), time.perf_counter() - t0)
    return ImageTensorDataset(grey, labels)


@register_domain("fashion-m", classes=FASHION_CLASSES, description="Fashion-MNIST composited onto photo crops")
def build_fashion_m(split: str, img_size: int) -> ImageTensorDataset:
    """Fashion-MNIST composited onto photo crops; image ``i`` of the test split is global index ``60000 + i``."""
    t0 = time.perf_counter()
    grey, labels = _fashion_grey(split, img_size)
    offset = 0 if split == "train" else FASHION_SIZES["train"]
    total = sum(FASHION_SIZES.values())
    if offset + len(labels) > total:  # a non-standard copy with more images: keep indices distinct anyway
        total = offset + len(labels)
    images = composite_on_photos(grey, seed=FASHION_M_SEED, offset=offset, total=total)
    del grey
    _logger.info("fashion-m %s: %d images in %.1fs", split, len(labels), time.perf_counter() - t0)
    return ImageTensorDataset(images, labels)
