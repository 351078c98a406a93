"""Typed errors of map_plugin.

Every error is a ``MapPluginError`` and also the builtin it refines, so callers may catch either
``map_plugin.errors.UnknownDomainError`` or a plain ``ValueError``.
"""

from __future__ import annotations


class MapPluginError(Exception):
    """Base class of every error raised on purpose by map_plugin."""


class ConfigError(MapPluginError, ValueError):
    """A config field or function argument has a value outside what it accepts."""


class UnknownNameError(MapPluginError, ValueError):
    """A string-named choice (domain, model, granularity, perturbation, ...) is not registered."""


class UnknownDomainError(UnknownNameError):
    """A domain spec names no registered domain or known prefix."""


class DomainMismatchError(MapPluginError, ValueError):
    """Model and data disagree: class count, channel count, or source equal to target."""


class DataNotFoundError(MapPluginError, FileNotFoundError):
    """A domain's files are not on this machine and cannot be downloaded."""


class NoMaskableLayersError(MapPluginError, ValueError):
    """``attach_masks`` found no Conv or Linear weight to mask."""


class MaskStateError(MapPluginError, RuntimeError):
    """An illegal lifecycle transition: attaching twice, pruning or exporting with masks attached, ..."""


class ArtifactError(MapPluginError, ValueError):
    """A saved model or cache file is missing, corrupted, or does not match its config."""


class OutputDirError(MapPluginError, ValueError):
    """An output directory cannot be used (it is a file, or not writable)."""
