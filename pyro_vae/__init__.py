"""pyro_vae: variational autoencoders as Pyro probabilistic programs.

The model p(z) p(x|z) and the guide q(z|x) are Pyro programs (:class:`VAE`), trained with
``pyro.infer.SVI`` and ``Trace_ELBO`` (:func:`fit`), saved as safetensors + JSON and rebuilt
with :func:`load`.
"""

__version__ = "0.1.0"

from .checkpoint import load, save
from .config import Config
from .data import Data, load_data
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PyroVAEError,
    RunDirError,
    TrainingError,
    TrainingInterrupted,
)
from .model import VAE
from .train import FitResult, fit

__all__ = [
    "VAE",
    "CheckpointError",
    "Config",
    "ConfigError",
    "Data",
    "DataError",
    "FitResult",
    "PyroVAEError",
    "RunDirError",
    "TrainingError",
    "TrainingInterrupted",
    "fit",
    "load",
    "load_data",
    "save",
]
