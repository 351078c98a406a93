"""Source models: train a classifier on a domain, and cache it so every recipe can reuse it.

Recipes that are given no ``--source-model`` call ``load_or_train_source_model``: the first call
trains and saves the model under ``$MAP_CACHE_DIR/source_models/`` (``~/.cache/map_plugin``), later
calls load it. The training is plain supervised learning (AdamW, cosine schedule, random shifts).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ._io import cache_dir
from .errors import ArtifactError, ConfigError
from .hub import load_model, save_model
from .trainer import evaluate_accuracy, make_eval_loader, step_batches

__all__ = ["SourceTrainConfig", "load_or_train_source_model", "train_classifier"]

_logger = logging.getLogger(__name__)


@dataclass
class SourceTrainConfig:
    """Supervised training of a source model.

    Attributes:
        steps: optimisation steps (batches).
        batch_size: samples per step.
        lr: peak AdamW learning rate (cosine decay to zero, 5% linear warm-up).
        weight_decay: AdamW weight decay.
        shift: random translation of up to this many pixels (0 disables augmentation).
        seed: seed of initialisation and sampling.
    """

    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    shift: int = 2
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name}={v!r} must be a positive integer")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr!r} must be a positive number")
        if self.weight_decay < 0 or self.shift < 0 or self.seed < 0:
            raise ConfigError("weight_decay, shift and seed must be non-negative")


def _random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    if shift == 0:
        return x
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    h, w = x.shape[-2:]
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=generator)
    return torch.stack([p[:, i : i + h, j : j + w] for p, (i, j) in zip(padded, offsets.tolist(), strict=True)])


def train_classifier(model: nn.Module, dataset: Dataset, config: SourceTrainConfig | None = None, progress=True):
    """Train ``model`` on ``dataset`` of ``(image, label)`` with cross-entropy, in place.

    Returns:
        The model, in eval mode.
    """
    config = config or SourceTrainConfig()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = step_batches(dataset, config.batch_size, config.seed)
    bar = tqdm(range(config.steps), desc="source training", disable=not progress)
    for step in bar:
        x, y = next(batches)
        loss = F.cross_entropy(model(_random_shift(x, config.shift, generator)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def _cache_path(domain: str, model_name: str, img_size: int, config: SourceTrainConfig) -> Path:
    slug = f"{domain}__{model_name}__{img_size}px__{config.steps}steps__seed{config.seed}"
    return cache_dir("source_models", slug.replace("/", "_").replace(":", "-"))


def load_or_train_source_model(
    domain,
    model_name: str = "small_cnn",
    config: SourceTrainConfig | None = None,
    directory: str | Path | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Load the cached source model for ``(domain, model_name, config)``, training it first if absent.

    Args:
        domain: a ``map_plugin.data.Domain``.
        model_name: architecture for ``create_model``.
        config: training settings (part of the cache key).
        directory: where to save / look; default ``$MAP_CACHE_DIR/source_models/<key>``.
        progress: show a progress bar while training.

    Returns:
        ``(model in eval mode, config dict)``; the config holds ``source_test_accuracy``.
    """
    from .models import create_model

    config = config or SourceTrainConfig()
    directory = Path(directory) if directory else _cache_path(domain.name, model_name, domain.img_size, config)
    if (directory / "config.json").is_file():
        try:
            model, saved = load_model(directory)
            _logger.info("reusing source model %s", directory)
            return model, saved
        except ArtifactError as e:
            _logger.warning("cached source model in %s is unusable (%s); training a new one", directory, e)
    torch.manual_seed(config.seed)
    model = create_model(model_name, domain.num_classes, domain.in_chans, domain.img_size)
    start = time.perf_counter()
    train_classifier(model, domain.train, config, progress=progress)
    accuracy = evaluate_accuracy(model, make_eval_loader(domain.test))
    saved = {
        "architecture": model_name,
        "num_classes": domain.num_classes,
        "in_chans": domain.in_chans,
        "img_size": domain.img_size,
        "source_domain": domain.name,
        "source_test_accuracy": accuracy,
        "train_config": asdict(config),
        "train_time_s": round(time.perf_counter() - start, 1),
    }
    save_model(model, directory, saved)
    _logger.info("trained source model on %s: test accuracy %.4f, saved to %s", domain.name, accuracy, directory)
    return model, saved
