"""Likelihoods p(x|z) = p(x | f(z)) given the decoder output f(z).

A :class:`Likelihood` turns the decoder output of shape ``(batch, D, params_per_dim)`` into a Pyro
distribution with ``event_shape == (D,)``, and checks before training that the data lie in its
support, so that bad data give a clear error instead of a NaN. Adding a likelihood means adding
a subclass here and an entry in :data:`LIKELIHOODS`.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .config import Config
from .errors import DataError


class Likelihood(nn.Module):
    """Base class of observation models.

    Attributes
    ----------
    params_per_dim : int
        How many decoder outputs each data dimension needs (1 for a Bernoulli logit).
    """

    params_per_dim: int = 1

    @classmethod
    def from_config(cls, config: Config) -> "Likelihood":
        return cls()

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        """Distribution of x given decoder output ``params`` of shape (batch, D, params_per_dim)."""
        raise NotImplementedError

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        """Raise :class:`DataError` if the values of ``x`` cannot be scored by this likelihood."""


class BernoulliLikelihood(Likelihood):
    """x_d ~ Bernoulli(σ(f_d(z))) for binary data.

    log p(x|z) = Σ_d x_d log σ(f_d) + (1 − x_d) log(1 − σ(f_d)) nats (Kingma & Welling 2014,
    appendix C.1). Grey levels in [0, 1] are read as probabilities and binarised before they are
    scored (``binarize`` ``"dynamic"`` or ``"static"``); with ``"none"`` the data must already
    be 0/1.
    """

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params.squeeze(-1)).to_event(1)

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        if binarize == "none":
            if not bool(((x == 0) | (x == 1)).all()):
                raise DataError(
                    f"{what} holds values other than 0 and 1, which --binarize none requires; "
                    "use --binarize dynamic or static for grey levels"
                )
        elif bool((x < 0).any()) or bool((x > 1).any()):
            lo, hi = float(x.min()), float(x.max())
            raise DataError(
                f"{what} has values in [{lo:g}, {hi:g}] but the bernoulli likelihood needs grey "
                "levels in [0, 1] (or uint8 0-255); rescale the data or use --likelihood normal"
            )


class NormalLikelihood(Likelihood):
    """x ~ N(f(z), c² I) with a fixed scale c, for real-valued data.

    log p(x|z) = −‖x − f(z)‖² / (2c²) − D log c − (D/2) log 2π nats: a squared error up to
    constants (Kingma & Welling 2014, appendix C.2; the Gaussian decoder with covariance c·I).

    Parameters
    ----------
    scale : float
        c > 0, in the units of the data.
    """

    def __init__(self, scale: float = 0.1):
        super().__init__()
        self.scale = float(scale)

    @classmethod
    def from_config(cls, config: Config) -> "NormalLikelihood":
        return cls(config.obs_scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params.squeeze(-1), self.scale).to_event(1)


#: Registry of likelihoods by the name used in ``--likelihood`` and ``config.json``.
LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "normal": NormalLikelihood,
}


def build_likelihood(config: Config) -> Likelihood:
    """The likelihood named by ``config.likelihood``."""
    return LIKELIHOODS[config.likelihood].from_config(config)
