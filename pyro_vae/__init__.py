"""pyro_vae: variational autoencoders as Pyro probabilistic programs.

The model p(z) p(x|z) and the guide q(z|x) are Pyro programs (:class:`VAE`), trained with
``pyro.infer.SVI`` and Pyro's ELBOs (:func:`fit`), saved as safetensors + JSON and rebuilt with
:func:`load`. Parts (priors, likelihoods, variational families, networks, objectives) are
registered classes: :func:`register_prior` and its siblings add your own.

The names below are imported on first use (PEP 562), so that ``import pyro_vae`` and the
command line's help do not load torch and Pyro before they are needed.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

#: Public name → module that defines it.
_EXPORTS = {
    "VAE": "model",
    "HierarchicalVAE": "hierarchical",
    "Config": "config",
    "ModelConfig": "config",
    "DataConfig": "config",
    "TrainConfig": "config",
    "Data": "io.data",
    "load_data": "io.data",
    "load": "io.checkpoint",
    "save": "io.checkpoint",
    "fit": "training.plan",
    "FitResult": "training.plan",
    "TrainingPlan": "training.plan",
    "evaluate": "evaluation.evaluate",
    "evaluate_run": "evaluation.evaluate",
    "encode_run": "evaluation.evaluate",
    "diagnose": "evaluation.diagnostics",
    "diagnose_run": "evaluation.diagnostics",
    "sample_run": "evaluation.pictures",
    "Option": "registry",
    "register_prior": "registry",
    "register_likelihood": "registry",
    "register_family": "registry",
    "register_network": "registry",
    "register_objective": "registry",
    "Prior": "parts.priors",
    "Likelihood": "parts.likelihoods",
    "Family": "parts.families",
    "Network": "parts.networks",
    "Objective": "parts.objectives",
    "PyroVAEError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "RunDirError": "errors",
    "TrainingError": "errors",
    "TrainingInterrupted": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
