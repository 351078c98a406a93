"""Atomic, pickle-free file I/O: JSON and safetensors written through a temp file and ``os.replace``."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ArtifactError


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic_write(path, _write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN and infinity are refused: they are not JSON)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises ``ArtifactError`` naming the path."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"expected a JSON file at {str(path)!r}, but it does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{str(path)!r} is not valid JSON ({e}); delete it or re-create it") from e


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """Atomically write tensors as safetensors (contiguous, CPU copies; shared storage is split)."""
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; never unpickles. Missing or corrupted files raise ``ArtifactError``."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"expected a safetensors file at {str(path)!r}, but it does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{str(path)!r} is not a readable safetensors file ({e})") from e


def cache_dir(*parts: str) -> Path:
    """``$MAP_CACHE_DIR/<parts>``, else ``~/.cache/map_plugin/<parts>`` (not created)."""
    root = os.environ.get("MAP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "map_plugin")
    return Path(root, *parts)
