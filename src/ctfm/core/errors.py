"""Errors a user can cause and fix. The CLI turns each into one red line, never a traceback."""

from __future__ import annotations


class CtfmError(Exception):
    """Base class: a problem with the user's input, data or environment, stated so they can act on it."""


class ConfigError(CtfmError):
    """A configuration file or option is invalid."""


class DataError(CtfmError):
    """A data file (image, label map, CSV) is missing, unreadable or inconsistent."""


class StoreError(CtfmError):
    """The embedding store is inconsistent or does not hold what was asked for."""


class InvalidEmbedding(StoreError):
    """An embedding file or array breaks the ``y_hat`` format; the message is the reason recorded for its case."""


class ContainerError(CtfmError):
    """A team container could not be loaded or run."""


class OfflineError(CtfmError):
    """A remote resource is needed but the network (or the hub) cannot be reached."""
