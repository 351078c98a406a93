"""Accuracy, drops and ST-D as plain functions (an ``evaluate`` module in ``evaluate_metrics/`` wraps them).

Accuracies are fractions in [0, 1]; drops are in accuracy *points* (``100 * (before - after)``).
``ST-D = source_drop / target_drop``: lower is better, negative when the source accuracy rises.
Report it beside the raw accuracies and drops, never alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import ConfigError

__all__ = ["accuracy", "drop_points", "st_d", "protection_summary", "st_d_metric_path"]


def accuracy(predictions: torch.Tensor | Sequence[int], references: torch.Tensor | Sequence[int]) -> float:
    """Fraction of ``predictions`` equal to ``references``.

    Raises:
        ConfigError: the two have different lengths or are empty.
    """
    p, r = torch.as_tensor(predictions), torch.as_tensor(references)
    if p.shape != r.shape or p.numel() == 0:
        raise ConfigError(f"predictions {tuple(p.shape)} and references {tuple(r.shape)} must be equal, non-empty")
    return (p == r).float().mean().item()


def drop_points(before: float, after: float) -> float:
    """Accuracy drop in points: ``100 * (before - after)`` (negative when accuracy rose)."""
    for name, value in (("before", before), ("after", after)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name}={value!r} must be an accuracy fraction in [0, 1]")
    return 100.0 * (before - after)


def st_d(source_drop: float, target_drop: float) -> float | None:
    """``source_drop / target_drop``; None when the target did not drop (the ratio means nothing then)."""
    if target_drop <= 0 or math.isclose(target_drop, 0.0, abs_tol=1e-12):
        return None
    return source_drop / target_drop


def protection_summary(source_before: float, source_after: float, target_before: float, target_after: float) -> dict:
    """The report's headline numbers: ``source_drop``, ``target_drop`` (points) and ``st_d``."""
    sd, td = drop_points(source_before, source_after), drop_points(target_before, target_after)
    return {"source_drop": sd, "target_drop": td, "st_d": st_d(sd, td)}


def st_d_metric_path() -> str:
    """Path of the bundled ``evaluate`` metric module: ``evaluate.load(st_d_metric_path())`` works offline."""
    return str(Path(__file__).parent / "evaluate_metrics" / "st_d" / "st_d.py")
