"""Errors a user can fix.

Every problem caused by input (data files, options, run directories, checkpoints) is raised as a
subclass of :class:`PyroVAEError` whose message is one line naming the problem and the fix. The
CLI prints that line and exits with status 1, without a traceback; anything else is a bug.
"""


class PyroVAEError(Exception):
    """Base class of all user-fixable errors raised by pyro_vae."""


class ConfigError(PyroVAEError, ValueError):
    """An option value or a combination of options is invalid."""


class DataError(PyroVAEError, ValueError):
    """A dataset cannot be found, read, or does not fit the model (shape, range, NaN, size)."""


class RunDirError(PyroVAEError):
    """A run directory is missing, foreign, or must not be overwritten."""


class CheckpointError(PyroVAEError):
    """A checkpoint (``config.json`` or ``model.safetensors``) is unreadable or incompatible."""


class TrainingError(PyroVAEError):
    """Training cannot go on: the loss or a distribution's parameters became non-finite."""


class TrainingInterrupted(PyroVAEError):
    """Training stopped on SIGINT or SIGTERM after finishing a step; the message says how to
    resume."""
