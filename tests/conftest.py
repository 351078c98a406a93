"""Shared fixtures: offline hub, a private HF_HOME and cache per session, fixed seeds."""

from __future__ import annotations

import os
import tempfile

# The hub libraries read these at import time: set them before anything imports them.
_SESSION_HOME = tempfile.mkdtemp(prefix="map-plugin-tests-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf")
os.environ["MAP_CACHE_DIR"] = os.path.join(_SESSION_HOME, "map-cache")
os.environ.setdefault("TIMM_FUSED_ATTN", "0")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    from map_plugin.data import load_domain

    return load_domain("digits")


@pytest.fixture(scope="session")
def digits_m():
    from map_plugin.data import load_domain

    return load_domain("digits-m")


@pytest.fixture(scope="session")
def trained_digits_model(digits):
    """A small CNN trained briefly on digits (about 97% test accuracy), saved once per session.

    Returns ``(folder, config)``; load a fresh copy with ``map_plugin.hub.load_model(folder)``.
    """
    from map_plugin.hub import load_model
    from map_plugin.source import SourceTrainConfig, load_or_train_source_model

    folder = os.path.join(_SESSION_HOME, "digits-small-cnn")
    _, config = load_or_train_source_model(digits, "small_cnn", SourceTrainConfig(steps=150), folder, progress=False)
    load_model(folder)
    return folder, config
