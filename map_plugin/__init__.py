"""map_plugin: MAP (MAsk-Pruning) protection of trained image classifiers."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("map-plugin")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
