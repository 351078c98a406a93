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
