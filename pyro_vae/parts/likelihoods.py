"""Likelihoods p(x|z) = p(x | f(z)) given the decoder output f(z).

A :class:`Likelihood` turns the decoder output of shape ``(batch, D, params_per_dim)`` into a Pyro
distribution with ``event_shape == (D,)``, and checks before training that the data lie in its
support, so that bad data give a clear error instead of a NaN. Data tensors hold grey levels in
[0, 1]; a likelihood over other units (the categorical one over levels 0–255) converts with
:meth:`Likelihood.to_obs` and :meth:`Likelihood.to_data`. A likelihood is registered with
:func:`~pyro_vae.registry.register_likelihood`; its options are
:class:`~pyro_vae.registry.Option` class attributes, its capabilities (``discrete``, ``binary``,
``params_per_dim``) plain class attributes.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.utils import broadcast_all

from ..errors import DataError
from ..registry import Option, Part, positive, register_likelihood


class Likelihood(Part, nn.Module):
    """Base class of observation models.

    Attributes
    ----------
    params_per_dim : int
        How many decoder outputs each data dimension needs (1 for a Bernoulli logit).
    """

    params_per_dim: int = 1
    #: Whether p(x|z) is a probability mass function, so that −log p(x) converts to bits/dim.
    discrete: bool = False
    #: Whether it scores binary data, so that grey levels are binarised first (``--binarize``).
    binary: bool = False

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        """Distribution of x given decoder output ``params`` of shape (batch, D, params_per_dim)."""
        raise NotImplementedError

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        """Raise :class:`DataError` if the values of ``x`` cannot be scored by this likelihood."""

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z] in data units: (..., D, k) → (..., D)."""
        return self(params).mean

    def to_obs(self, x: torch.Tensor) -> torch.Tensor:
        """Data (batch, D) → the values this distribution scores (identity by default)."""
        return x

    def to_data(self, obs: torch.Tensor) -> torch.Tensor:
        """A draw of this distribution → data units (identity by default)."""
        return obs


class IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits=logits).to_event(1)`` with a cheaper ``log_prob``.

    log p(x) = Σ_d x_d log σ(l_d) + (1 − x_d) log(1 − σ(l_d)) = −Σ_d BCE(l_d, x_d) nats, over
    the last dimension. torch's Bernoulli negates the cross-entropy of every element before
    ``Independent`` sums them; this negates the sum, the same numbers (negation is exact) with
    one pass less over a (…, D) tensor, about a tenth of an importance-sampled evaluation.

    Parameters
    ----------
    logits : Tensor
        (…, D) log-odds; batch shape (…), event shape (D,).
    """

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=validate_args), 1,
                         validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self.base_dist._validate_sample(value)
        logits, value = broadcast_all(self.base_dist.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    def expand(self, batch_shape, _instance=None) -> "IndependentBernoulli":
        shape = torch.Size(batch_shape) + self.event_shape
        return IndependentBernoulli(self.base_dist.logits.expand(shape),
                                    validate_args=self.__dict__.get("_validate_args"))


@register_likelihood("bernoulli")
class BernoulliLikelihood(Likelihood):
    """x_d ~ Bernoulli(σ(f_d(z))) for binary data.

    log p(x|z) = Σ_d x_d log σ(f_d) + (1 − x_d) log(1 − σ(f_d)) nats (Kingma & Welling 2014,
    appendix C.1). Grey levels in [0, 1] are read as probabilities and binarised before they are
    scored (``binarize`` ``"dynamic"`` or ``"static"``); with ``"none"`` the data must already
    be 0/1.
    """

    summary = "binary data"
    discrete = True
    binary = True

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return IndependentBernoulli(params.squeeze(-1))

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        if binarize == "none":
            if not bool(((x == 0) | (x == 1)).all()):
                raise DataError(
                    f"{what} holds values other than 0 and 1, which --binarize none requires; "
                    "use --binarize dynamic or static for grey levels"
                )
        else:
            _check_unit_interval(x, what, "bernoulli")


class _FixedScaleLikelihood(Likelihood):
    """x_d ~ family(f_d(z), c) with one fixed scale c > 0 for every dimension."""

    family: type[dist.TorchDistribution]
    scale = Option(float, 0.1, "Fixed scale c of the normal (N(f(z), c²I)) and laplace "
                   "likelihoods, in data units.", positive, flag="obs-scale")

    def __init__(self, scale: float = 0.1):
        super().__init__()
        self.scale = float(scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return self.family(params.squeeze(-1), self.scale).to_event(1)


@register_likelihood("normal")
class NormalLikelihood(_FixedScaleLikelihood):
    """x ~ N(f(z), c² I) with a fixed scale c, for real-valued data.

    log p(x|z) = −‖x − f(z)‖² / (2c²) − D log c − (D/2) log 2π nats: a squared error up to
    constants (Kingma & Welling 2014, appendix C.2; the Gaussian decoder with covariance c·I).

    Parameters
    ----------
    scale : float
        c > 0, in the units of the data.
    """

    summary = "fixed scale"
    family = dist.Normal


@register_likelihood("continuous-bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """x_d ~ ContinuousBernoulli(λ_d = σ(f_d(z))) on [0, 1]: the properly normalised density
    for grey levels that the Bernoulli likelihood only approximates.

    log p(x|λ) = log C(λ) + x log λ + (1 − x) log(1 − λ), C(λ) = 2 artanh(1 − 2λ)/(1 − 2λ)
    (Loaiza-Ganem & Cunningham 2019, eq. 7). Densities can be positive, so −log p can be < 0.
    """

    summary = "grey levels in [0, 1]"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params.squeeze(-1)).to_event(1)

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        _check_unit_interval(x, what, "continuous-bernoulli")


@register_likelihood("normal-learned")
class LearnedNormalLikelihood(Likelihood):
    """x ~ N(μ_θ(z), diag σ²_θ(z)): the decoder outputs a scale per dimension too.

    σ = s_min + softplus(raw), the floor s_min keeping the density from collapsing onto pixels
    that never vary (the decoder with learned variance of Goodfellow, Bengio & Courville 2016,
    §20.10.3). log p = Σ_d −(x_d − μ_d)²/(2σ_d²) − log σ_d − ½ log 2π nats.

    Parameters
    ----------
    min_scale : float
        s_min > 0.
    """

    summary = "learned scale per dimension"
    params_per_dim = 2
    min_scale = Option(float, 0.01, "Floor of the learned scale of normal-learned, against "
                       "collapse.", positive, flag="min-obs-scale")

    def __init__(self, min_scale: float = 0.01):
        super().__init__()
        self.min_scale = float(min_scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = params.unbind(-1)
        scale = self.min_scale + torch.nn.functional.softplus(raw_scale)
        return dist.Normal(loc, scale).to_event(1)


@register_likelihood("laplace")
class LaplaceLikelihood(_FixedScaleLikelihood):
    """x ~ Laplace(f(z), c) per dimension: an L1 reconstruction error in nats.

    log p(x|z) = −‖x − f(z)‖₁ / c − D log(2c).

    Parameters
    ----------
    scale : float
        c > 0, in the units of the data.
    """

    summary = "L1 error"
    family = dist.Laplace


@register_likelihood("categorical")
class CategoricalLikelihood(Likelihood):
    """x_d ∈ {0, …, 255} ~ Categorical(softmax(f_d(z))): a free distribution over the 256 grey
    levels of each pixel (the softmax output unit for discrete values, Goodfellow, Bengio &
    Courville 2016, §6.2.2.3; van den Oord et al. 2016, §2.2).

    Data in [0, 1] are scored as levels round(255·x); −log p(x) converts to bits per dimension
    as −log p(x) / (D ln 2).
    """

    summary = "256 grey levels"
    params_per_dim = 256
    discrete = True

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Categorical(logits=params).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        levels = torch.arange(256, dtype=params.dtype, device=params.device)
        return (params.softmax(-1) * levels).sum(-1) / 255.0

    def to_obs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255.0)

    def to_data(self, obs: torch.Tensor) -> torch.Tensor:
        return obs / 255.0

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        _check_unit_interval(x, what, "categorical")
        if bool(((x * 255.0 - torch.round(x * 255.0)).abs() > 1e-3).any()):
            raise DataError(
                f"{what} are not on the 256 grey levels that the categorical likelihood scores; "
                "give uint8 images or use --likelihood continuous-bernoulli"
            )


def _check_unit_interval(x: torch.Tensor, what: str, name: str) -> None:
    if bool((x < 0).any()) or bool((x > 1).any()):
        lo, hi = float(x.min()), float(x.max())
        raise DataError(
            f"{what} has values in [{lo:g}, {hi:g}] but the {name} likelihood needs grey "
            "levels in [0, 1] (or uint8 0-255); rescale the data or use --likelihood normal"
        )
