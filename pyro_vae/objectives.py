"""Objectives: Pyro's ELBO estimators, chosen with ``--elbo`` and ``--particles``.

- ``trace``: ``Trace_ELBO``, the Monte Carlo ELBO (1/R) Σ_r [log p(x, z_r) − log q(z_r|x)]
  over R reparameterised samples (Kingma & Welling 2014, eq. 6).
- ``meanfield``: ``TraceMeanField_ELBO``, the same with KL(q‖p) in closed form wherever one is
  registered (Kingma & Welling 2014, eq. 7); other sites fall back to sampling.
- ``iwae``: ``RenyiELBO(alpha=0)``, the importance-weighted bound
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) per data point (Burda, Grosse & Salakhutdinov 2016, eq. 8).

Particles are vectorised: the model and guide run once on a leading particle dimension.

Compiled objective: ``build_elbo(config, jit=True)`` gives Pyro's ``JitTrace_ELBO``, which
traces the model, the guide and the loss once with ``torch.jit.trace`` and then replays the
recorded graph, without Pyro's per-step Python work. The loss is still Pyro's ELBO of the same
model and guide, with the same numbers.
"""

from __future__ import annotations

import sys

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from pyro.distributions.kl import kl_divergence
from pyro.infer import ELBO, JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from .config import Config
from .errors import ConfigError

_ESTIMATORS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "iwae": RenyiELBO}
# Not JitTraceMeanField_ELBO: in pyro 1.9 it checks for a cached trace under one attribute name
# and stores it under another, so it traces again on every call, slower than not compiling.
_COMPILED = {"trace": JitTrace_ELBO}


def jit_unsupported(config: Config) -> str | None:
    """Why the training objective of ``config`` cannot be compiled, or None when it can.

    A trace records one fixed graph: the KL weight of a warm-up changes every step, and the
    contractive penalty's ``torch.func`` Jacobian cannot be traced. Only ``Trace_ELBO`` is
    compiled: Pyro has no compiled IWAE bound, and its ``JitTraceMeanField_ELBO`` traces again
    on every call (pyro 1.9).
    """
    if sys.version_info >= (3, 14):
        return "TorchScript, which Pyro's compiled objectives use, does not support Python 3.14+"
    if config.elbo not in _COMPILED:
        return f"only --elbo trace is compiled, not --elbo {config.elbo}"
    if config.kl_warmup > 0:
        return "--kl-warmup changes the KL weight every step, and a compiled trace fixes it"
    if config.contractive:
        return "the --contractive penalty's Jacobian (torch.func) cannot be traced"
    return None


def build_elbo(config: Config, jit: bool = False) -> ELBO:
    """The Pyro ELBO that ``config.elbo`` and ``config.particles`` name.

    With ``jit=True``, its compiled form. Call that one with the batch size as a keyword
    (``num=x.shape[0]``): Pyro compiles once per distinct set of keywords, and a trace holds
    the shapes it was recorded with.

    Raises
    ------
    ConfigError
        With ``jit=True``, if :func:`jit_unsupported` gives a reason.
    """
    kwargs = dict(
        num_particles=config.particles,
        vectorize_particles=config.particles > 1,
        max_plate_nesting=1,  # the model's one plate over the batch
    )
    if jit:
        reason = jit_unsupported(config)
        if reason is not None:
            raise ConfigError(f"the objective cannot be compiled: {reason}")
        return _COMPILED[config.elbo](ignore_jit_warnings=True, **kwargs)
    if config.elbo == "iwae":
        kwargs["alpha"] = 0.0
    return _ESTIMATORS[config.elbo](**kwargs)


@torch.no_grad()
def sampled_kl_sites(model, guide, x: torch.Tensor) -> list[str]:
    """Latent sites for which ``TraceMeanField_ELBO`` has no closed-form KL(q‖p).

    Traces ``guide`` and ``model`` once on ``x`` and returns one description per site whose KL
    is estimated by sampling instead, e.g. ``"z (Normal guide, Laplace prior)"``.
    """
    guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(x))
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace = prune_subsample_sites(model_trace)
    sampled = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in guide_trace.nodes:
            continue
        q, p = guide_trace.nodes[name]["fn"], site["fn"]
        try:
            kl_divergence(q, p)
        except NotImplementedError:
            sampled.append(f"{name} ({_family(q)} guide, {_family(p)} prior)")
    return sampled


def _family(d) -> str:
    """Name of a distribution without ``Independent`` wrappers."""
    while hasattr(d, "base_dist") and type(d).__name__ == "Independent":
        d = d.base_dist
    return type(d).__name__
