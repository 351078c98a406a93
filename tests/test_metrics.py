"""Accuracy, drops, ST-D, and the offline evaluate module."""

from __future__ import annotations

import pytest

from map_plugin.errors import ConfigError
from map_plugin.metrics import accuracy, drop_points, protection_summary, st_d, st_d_metric_path


def test_accuracy_and_drops():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
    assert drop_points(0.995, 0.994) == pytest.approx(0.1)
    assert drop_points(0.5, 0.6) == pytest.approx(-10.0)


@pytest.mark.parametrize(
    "source_drop, target_drop, expected",
    [
        (1.0, 77.0, 1.0 / 77.0),  # NTL-like
        (-0.3, 75.0, -0.004),  # source improved: negative
        (0.5, 0.0, None),  # no target drop: undefined
        (0.5, -2.0, None),
    ],
)
def test_st_d(source_drop, target_drop, expected):
    value = st_d(source_drop, target_drop)
    assert value is None if expected is None else value == pytest.approx(expected)


def test_protection_summary_and_bad_inputs():
    s = protection_summary(0.995, 0.994, 0.50, 0.09)
    assert s["source_drop"] == pytest.approx(0.1) and s["target_drop"] == pytest.approx(41.0)
    assert s["st_d"] == pytest.approx(0.1 / 41.0)
    with pytest.raises(ConfigError, match="before=99.5"):
        protection_summary(99.5, 0.9, 0.5, 0.1)
    with pytest.raises(ConfigError, match="must be equal"):
        accuracy([1, 2], [1])


def test_evaluate_module_loads_offline_and_agrees():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(st_d_metric_path())
    result = metric.compute(
        predictions=[0, 1, 2, 3, 9, 9, 9, 9],
        references=[0, 1, 2, 3, 0, 1, 2, 3],
        original_predictions=[0, 1, 2, 0, 0, 1, 2, 9],
        is_source=[1, 1, 1, 1, 0, 0, 0, 0],
    )
    assert result["source_before"] == 0.75 and result["source_after"] == 1.0
    assert result["target_before"] == 0.75 and result["target_after"] == 0.0
    assert result["st_d"] == pytest.approx(-25.0 / 75.0)
