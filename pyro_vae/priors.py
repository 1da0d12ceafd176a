"""Priors p(z) over the latent code.

Each prior is a :class:`Prior` module whose ``forward()`` returns a Pyro distribution with
``event_shape == (z_dim,)`` and empty batch shape; the model's ``pyro.plate`` broadcasts it over
the batch. Learnable priors keep their parameters as ``nn.Parameter`` and are registered with Pyro
by the model, so the same SVI step trains them. Adding a prior means adding a subclass here and
an entry in :data:`PRIORS`.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .config import Config


class Prior(nn.Module):
    """Base class: p(z) over codes of dimension ``z_dim``.

    Parameters
    ----------
    z_dim : int
        Dimension of z.
    """

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        # Buffers follow the module across devices, so the distribution lives where z does.
        self.register_buffer("_zeros", torch.zeros(z_dim))
        self.register_buffer("_ones", torch.ones(z_dim))

    @classmethod
    def from_config(cls, config: Config) -> "Prior":
        return cls(config.z_dim)

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the prior of Kingma & Welling (2014).

    log p(z) = −½‖z‖² − (d/2) log 2π, in nats.
    """

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self._zeros, self._ones).to_event(1)


class LaplacePrior(Prior):
    """p(z) = ∏ᵢ Laplace(zᵢ; 0, b), the sparsity prior of the sparse autoencoder.

    With λ = 1/b each coordinate contributes −log p(zᵢ) = λ|zᵢ| − log(λ/2) nats
    (Goodfellow, Bengio & Courville 2016, *Deep Learning*, §14.2.1, eq. 14.3), so a point-mass
    guide turns the ELBO into reconstruction plus an L1 penalty on the code.

    Parameters
    ----------
    z_dim : int
        Dimension of z.
    scale : float
        b > 0.
    """

    def __init__(self, z_dim: int, scale: float = 1.0):
        super().__init__(z_dim)
        self.scale = float(scale)

    @classmethod
    def from_config(cls, config: Config) -> "LaplacePrior":
        return cls(config.z_dim, config.prior_scale)

    def forward(self) -> dist.TorchDistribution:
        return dist.Laplace(self._zeros, self._ones * self.scale).to_event(1)


#: Registry of priors by the name used in ``--prior`` and ``config.json``.
PRIORS: dict[str, type[Prior]] = {
    "normal": StandardNormalPrior,
    "laplace": LaplacePrior,
}


def build_prior(config: Config) -> Prior:
    """The prior named by ``config.prior``, with ``config.z_dim`` dimensions."""
    return PRIORS[config.prior].from_config(config)
