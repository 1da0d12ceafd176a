"""Objectives: Pyro's ELBO estimators, chosen with ``--elbo`` and ``--particles``.

- ``trace``: ``Trace_ELBO``, the Monte Carlo ELBO (1/R) Σ_r [log p(x, z_r) − log q(z_r|x)]
  over R reparameterised samples (Kingma & Welling 2014, eq. 6).
- ``meanfield``: ``TraceMeanField_ELBO``, the same with KL(q‖p) in closed form wherever one is
  registered (Kingma & Welling 2014, eq. 7); other sites fall back to sampling.
- ``iwae``: ``RenyiELBO(alpha=0)``, the importance-weighted bound
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) per data point (Burda, Grosse & Salakhutdinov 2016, eq. 8).

Particles are vectorised: the model and guide run once on a leading particle dimension.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from pyro.distributions.kl import kl_divergence
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from .config import Config

_ESTIMATORS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "iwae": RenyiELBO}


def build_elbo(config: Config) -> ELBO:
    """The Pyro ELBO that ``config.elbo`` and ``config.particles`` name."""
    kwargs = dict(
        num_particles=config.particles,
        vectorize_particles=config.particles > 1,
        max_plate_nesting=1,  # the model's one plate over the batch
    )
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
