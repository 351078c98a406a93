"""Save, load and share protected models: ``model.safetensors`` + ``config.json`` (+ ``README.md``).

The layout is the Hugging Face Hub's: a folder saved here can be pushed as it is. Loading builds
the architecture named in ``config.json`` and loads the weights with ``strict=True``; nothing is
ever unpickled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from ._io import load_tensors, read_json, save_tensors, write_json
from .errors import ArtifactError, MaskStateError
from .masks import is_masked

__all__ = ["CONFIG_NAME", "PRUNING_HISTORY_NAME", "WEIGHTS_NAME", "load_model", "save_model"]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PRUNING_HISTORY_NAME = "pruning_history.json"
_REQUIRED = ("architecture", "num_classes", "in_chans", "img_size")


def save_model(model: nn.Module, directory: str | os.PathLike, config: dict) -> Path:
    """Write ``model``'s weights and ``config`` to ``directory`` (atomically, file by file).

    Args:
        model: an unmasked model (bake masks first: an export must not carry the original weights).
        directory: output folder, created if needed.
        config: at least ``architecture``, ``num_classes``, ``in_chans`` and ``img_size``; any other
            JSON-serialisable keys are kept (``map`` metadata, metrics, ...).

    Returns:
        The folder.

    Raises:
        MaskStateError: ``model`` still carries masks (call ``bake_masks`` first).
        ArtifactError: ``config`` lacks a required key.
    """
    if is_masked(model):
        raise MaskStateError("refusing to export a masked model: call bake_masks(model) first")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ArtifactError(f"config is missing {missing}; expected keys {list(_REQUIRED)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS_NAME, model.state_dict(), metadata={"format": "pt"})
    write_json(directory / CONFIG_NAME, config)
    return directory


def load_config(directory: str | os.PathLike) -> dict:
    """Read and check a saved model's ``config.json``.

    Raises:
        ArtifactError: the folder, the file or a required key is missing, or the JSON is corrupted.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"model folder {str(directory)!r} does not exist")
    config = read_json(directory / CONFIG_NAME)
    missing = [k for k in _REQUIRED if not isinstance(config, dict) or k not in config]
    if missing:
        raise ArtifactError(f"{str(directory / CONFIG_NAME)!r} lacks {missing}; it was not written by save_model")
    return config


def load_model(directory: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Build the architecture named in ``config.json`` and load ``model.safetensors`` into it, strictly.

    A folder with ``pruning_history.json`` (a structurally pruned model, ``pruner.save_pruned``) is
    rebuilt by replaying its pruning before the weights are loaded.

    Returns:
        ``(model in eval mode, config)``.

    Raises:
        ArtifactError: a file is missing or corrupted, or the weights do not fit the architecture.
    """
    from .models import create_model

    directory = Path(directory)
    config = load_config(directory)
    if (directory / PRUNING_HISTORY_NAME).exists():  # structured MAP: rebuild, replay the pruning, load
        from .pruner import load_pruned

        return load_pruned(directory), config
    model = create_model(config["architecture"], config["num_classes"], config["in_chans"], config["img_size"])
    state = load_tensors(directory / WEIGHTS_NAME)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"weights in {str(directory)!r} do not fit {config['architecture']!r}: {e}") from e
    _logger.info("loaded %s from %s", config["architecture"], directory)
    return model.eval(), config
