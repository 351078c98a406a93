"""Domains backed by Hugging Face ``datasets``: ``hf:<repo_id>[:<config>]`` and ``folder:<path>``.

``hf:<repo_id>[:<config>]`` loads ``datasets.load_dataset(repo_id, config)``: from the Hub when it is reachable, from
the local HF cache otherwise. A local copy is used instead, without any network, when:

- ``repo_id`` is itself a local directory (``hf:/data/my_ds``), or
- ``$MAP_DATA_DIR/hf/<repo_id>`` exists (a mirror of the hub repo, e.g. ``$MAP_DATA_DIR/hf/ylecun/mnist``).

A local directory holds either ``datasets`` ``save_to_disk`` output (``dataset_dict.json``) or data files laid out as
the Hub serves them (``data/train-00000-of-00001.parquet``, ...). With a config, a ``<config>/`` subdirectory is used
when present (the hub layout of ``ufldl-stanford/svhn``: ``cropped_digits/train-*.parquet``).

``folder:<path>`` is an image folder (class subfolders, optionally under ``train/`` and ``test/``) loaded with
``datasets.load_dataset("imagefolder", data_dir=path)``.

Normalisation: the image column is ``image`` or ``img``; the label column ``label``, ``labels``, or the only
``ClassLabel`` column; classes come from the ``ClassLabel`` feature (else ``"0".."K-1"`` from the labels seen).
Images are converted to RGB (grey, palette, RGBA), resized to ``img_size`` x ``img_size`` (bilinear) and scaled to
[0, 1] per item, lazily: nothing is decoded until an item is read. Splits: ``train`` and ``test``; without a ``test``
split, a fixed seeded 80/20 split of ``train`` (scikit-learn ``train_test_split(test_size=0.2, random_state=0)``,
stratified when every class has at least two samples).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, DataNotFoundError
from .registry import DomainBuilder, register_cache_clearer

__all__ = ["HFImageDataset", "hf_domain_builder", "folder_domain_builder", "resolve_hf_location"]

_logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0


def _to_rgb_tensor(image: Any, img_size: int) -> Tensor:
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (array * 255 if array.max(initial=0) <= 1.0 else array).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (img_size, img_size):
        image = image.resize((img_size, img_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


class HFImageDataset(Dataset):
    """A ``datasets.Dataset`` seen as ``(float32 [3, S, S] in [0, 1], int label)`` items, decoded per item.

    Args:
        hf_dataset: The split.
        image_column: Column holding images (PIL images or arrays).
        label_column: Column holding integer labels.
        img_size: Output side ``S``.
    """

    def __init__(self, hf_dataset: Any, image_column: str, label_column: str, img_size: int):
        self.hf_dataset = hf_dataset.select_columns([image_column, label_column])
        self.image_column = image_column
        self.label_column = label_column
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        row = self.hf_dataset[int(index)]
        return _to_rgb_tensor(row[self.image_column], self.img_size), int(row[self.label_column])

    def __repr__(self) -> str:
        return f"HFImageDataset(rows={len(self)}, image={self.image_column!r}, img_size={self.img_size})"


def resolve_hf_location(repo_id: str, config: str | None) -> tuple[str, str | None, bool]:
    """Where ``hf:<repo_id>[:<config>]`` loads from: ``(path_or_repo_id, config, is_local)``.

    A local directory (``repo_id`` itself, else ``$MAP_DATA_DIR/hf/<repo_id>``) wins over the Hub; with a config, its
    ``<config>/`` subdirectory is used when present (and the config is then consumed).
    """
    candidates = [Path(repo_id).expanduser()]
    data_dir = os.environ.get("MAP_DATA_DIR")
    if data_dir and not Path(repo_id).is_absolute():
        candidates.append(Path(data_dir).expanduser() / "hf" / repo_id)
    for path in candidates:
        if path.is_dir():
            if config and (path / config).is_dir():
                return str((path / config).resolve()), None, True
            return str(path.resolve()), config, True
    return repo_id, config, False


def _open_local(path: str, config: str | None) -> Any:
    import datasets

    root = Path(path)
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        if config:
            raise ConfigError(f"hf: {path!r} is a save_to_disk directory without a {config!r} subdirectory")
        return datasets.load_from_disk(path)
    return datasets.load_dataset(path, config)


@lru_cache(maxsize=8)
def _open_dataset_dict(location: str, config: str | None, local: bool, kind: str) -> Any:
    import datasets

    if kind == "folder":
        dd = datasets.load_dataset("imagefolder", data_dir=location)
    elif local:
        dd = _open_local(location, config)
    else:
        dd = datasets.load_dataset(location, config)
    if isinstance(dd, datasets.Dataset):
        dd = datasets.DatasetDict(train=dd)
    if not isinstance(dd, datasets.DatasetDict):
        raise ConfigError(f"{location!r} did not load as a datasets.DatasetDict (got {type(dd).__name__})")
    return dd


def _pick_column(columns: list[str], wanted: tuple[str, ...], what: str, where: str) -> str:
    for name in wanted:
        if name in columns:
            return name
    raise ConfigError(f"{where}: no {what} column; expected one of {list(wanted)}, found columns {columns}")


def _builder_from_dict(name: str, dd: Any, where: str) -> DomainBuilder:
    """Normalise a DatasetDict into a :class:`DomainBuilder` with lazy ``train``/``test`` splits."""
    import datasets

    if "train" in dd:
        train_name = "train"
    elif len(dd) == 1:
        train_name = next(iter(dd))
    else:
        raise ConfigError(f"{where}: no 'train' split; found splits {list(dd)}")
    train = dd[train_name]
    columns = list(train.column_names)
    image_col = _pick_column(columns, IMAGE_COLUMNS, "image", where)
    features = train.features
    label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
    if label_col is None:
        class_label_cols = [c for c in columns if isinstance(features[c], datasets.ClassLabel)]
        if len(class_label_cols) != 1:
            raise ConfigError(
                f"{where}: no label column; expected one of {list(LABEL_COLUMNS)} or a single ClassLabel column, "
                f"found columns {columns}"
            )
        label_col = class_label_cols[0]
    feature = features[label_col]
    if isinstance(feature, datasets.ClassLabel):
        classes = tuple(feature.names)
    elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        num = int(max(train[label_col], default=-1)) + 1
        classes = tuple(str(i) for i in range(num))
        _logger.warning("%s: label column %r is not a ClassLabel; using classes 0..%d", where, label_col, num - 1)
    else:
        raise ConfigError(f"{where}: label column {label_col!r} must hold integer class ids, got {feature}")
    if not classes:
        raise ConfigError(f"{where}: the label column {label_col!r} defines no classes")

    holdout: dict[str, Any] = {}

    def split_source(split: str) -> Any:
        if "test" in dd:
            return train if split == "train" else dd["test"]
        if not holdout:  # built once, on first use: fixed seed, stratified when every class has 2+ samples
            from sklearn.model_selection import train_test_split

            labels = np.asarray(train[label_col])
            _, counts = np.unique(labels, return_counts=True)
            stratify = labels if counts.min(initial=0) >= 2 and len(labels) * HOLDOUT_FRACTION >= len(counts) else None
            train_idx, test_idx = train_test_split(
                np.arange(len(labels)), test_size=HOLDOUT_FRACTION, random_state=HOLDOUT_SEED, stratify=stratify
            )
            # keep_in_memory: the indices mapping is never written next to (possibly read-only) data files
            holdout["train"] = train.select(np.sort(train_idx), keep_in_memory=True)
            holdout["test"] = train.select(np.sort(test_idx), keep_in_memory=True)
            _logger.info("%s has no test split: using a seeded 80/20 split of %r", where, train_name)
        return holdout[split]

    def load(split: str, img_size: int) -> HFImageDataset:
        return HFImageDataset(split_source(split), image_col, label_col, img_size)

    return DomainBuilder(name, classes, load, ("train", "test"), description=where)


@lru_cache(maxsize=8)
def _cached_builder(kind: str, location: str, config: str | None, local: bool) -> DomainBuilder:
    if kind == "folder":
        where = f"folder:{location}"
    else:
        where = f"hf:{location}" + (f":{config}" if config else "")
    try:
        dd = _open_dataset_dict(location, config, local, kind)
    except (ConfigError, DataNotFoundError):
        raise
    except Exception as e:  # datasets raises many types (offline, not found, bad config): normalise them
        if kind == "folder":
            raise DataNotFoundError(f"{where}: could not load the image folder ({type(e).__name__}: {e})") from e
        hint = (
            "check the local directory's contents"
            if local
            else f"it needs the Hugging Face Hub reachable, the dataset in the local HF cache ($HF_HOME), or a local "
            f"copy at $MAP_DATA_DIR/hf/{location} (save_to_disk output or the hub's parquet layout)"
        )
        raise DataNotFoundError(f"{where}: could not load the dataset ({type(e).__name__}: {e}); {hint}") from e
    return _builder_from_dict(where, dd, where)


for _fn in (_open_dataset_dict, _cached_builder):
    register_cache_clearer(_fn.cache_clear)


def hf_domain_builder(repo_id: str, config: str | None = None) -> DomainBuilder:
    """Open a Hugging Face dataset (hub, HF cache, or local copy) and describe it as a :class:`DomainBuilder`.

    Only the dataset's metadata is read here; images are decoded per item by :class:`HFImageDataset`.

    Raises:
        DataNotFoundError: the dataset cannot be loaded (offline and not cached, unknown repo or config).
        ConfigError: no image or label column, or labels that are not class ids.
    """
    location, config, local = resolve_hf_location(repo_id, config)
    return _cached_builder("hf", location, config, local)


def folder_domain_builder(path: str) -> DomainBuilder:
    """Describe an image folder (class subfolders, optionally under ``train/`` and ``test/``) as a builder.

    Raises:
        DataNotFoundError: ``path`` does not exist, is not a directory, or holds no images.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DataNotFoundError(
            f"folder:{path}: {str(root)!r} {what}; expected a directory of class subfolders of images "
            "(optionally under train/ and test/)"
        )
    return _cached_builder("folder", str(root.resolve()), None, True)
