"""Variational families q(z|x): what the guide samples z from, given the encoder's output.

The encoder network maps x (batch, D) to features h (batch, F) (``networks.py``); a family's
``forward(h)`` returns q(z|x) with batch shape (batch,) and event shape (z_dim,), and
``location(h)`` a location and scale per data point for codes, pictures and diagnostics. The
guide, the Pyro program, is :meth:`pyro_vae.model.VAE.guide`. A family is registered with
:func:`~pyro_vae.registry.register_family` (chosen with ``--guide``); its capabilities are
``has_density``, ``point_mass``, ``gaussian`` and ``exact_mean``.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from ..registry import Option, Part, positive_int, register_family


class Family(Part, nn.Module):
    """Base class: q(z|x) from encoder features h (batch, F).

    Parameters
    ----------
    feature_dim : int
        F.
    z_dim : int
        Dimension of z.
    """

    #: q(z|x) has a density, so it can be an importance proposal (IWAE bound, k̂, NUTS).
    has_density: bool = True
    #: q(z|x) is a point mass: the deterministic autoencoder.
    point_mass: bool = False
    #: q(z|x) = N(loc, diag scale²) exactly as :meth:`location` gives it (so it factorises
    #: over the latent dimensions, and its parameters can be stopped: ``--elbo iwae-dreg``).
    gaussian: bool = False
    #: E_q[z|x] is the location (else it is estimated from samples).
    exact_mean: bool = True
    #: (smallest z_dim, why).
    min_z_dim: tuple[int, str] = (1, "")

    def __init__(self, feature_dim: int, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    def forward(self, h) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def location(self, h) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """Features (batch, F) → location and scale of the code, each (batch, z_dim)."""
        raise NotImplementedError


@register_family("normal")
class GaussianFamily(Family):
    """q(z|x) = N(μ(x), diag σ²(x)), the VAE's encoder (Kingma & Welling 2014, appendix C.2).

    The head outputs μ and log σ², so σ = exp(½ log σ²). Reparameterised.
    """

    summary = "diagonal Gaussian"
    gaussian = True

    def __init__(self, feature_dim: int, z_dim: int):
        super().__init__(feature_dim, z_dim)
        self.head = nn.Linear(feature_dim, 2 * z_dim)

    def _gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var = self.head(h).chunk(2, dim=-1)
        return loc, torch.exp(0.5 * log_var)

    def location(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gaussian(h)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(*self._gaussian(h)).to_event(1)


@register_family("iaf")
class IAFFamily(GaussianFamily):
    """The Gaussian family followed by K inverse autoregressive flow layers.

    z₀ ~ N(μ(x), diag σ²(x)), z_k = μ_k(z_{k−1}, h) + σ_k(z_{k−1}, h) ⊙ z_{k−1}, where h are the
    encoder's features (Kingma et al. 2016, eq. 10–11, with the context h of their §4). Built
    from Pyro's ``ConditionalAffineAutoregressive``; sampling and the density of a sample are
    one pass each. ``location`` returns the flowed base location f_K∘…∘f_1(μ(x)), the code the
    decoder sees, and the base scale σ(x); the flow's own mean and spread have no closed form.

    Parameters
    ----------
    num_flows : int
        K ≥ 1 (``--flows``).
    """

    summary = "Gaussian + inverse autoregressive flows"
    num_flows = Option(int, 2, "Flow layers of the iaf guide and of the flow prior.",
                       positive_int, flag="flows")
    gaussian = False
    exact_mean = False
    min_z_dim = (2, "autoregressive flows")

    def __init__(self, feature_dim: int, z_dim: int, num_flows: int = 2):
        super().__init__(feature_dim, z_dim)
        self.num_flows = num_flows
        hidden = [max(4 * z_dim, 32)]
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(z_dim, feature_dim, hidden_dims=hidden)
            for _ in range(num_flows)
        )

    def location(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale = self._gaussian(h)
        for flow in self.flows:
            loc = flow.condition(h)(loc)
        return loc, scale

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        base = dist.Normal(*self._gaussian(h)).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(h) for f in self.flows])


@register_family("delta")
class DeltaFamily(Family):
    """q(z|x) = δ(z − f(x)), a point mass: the deterministic autoencoder.

    With a point mass the ELBO becomes log p(x|h) + log p(h) at h = f(x) (Goodfellow, Bengio &
    Courville 2016, §14.2.1, eq. 14.2): with the Laplace prior that is reconstruction plus the
    L1 penalty λΣ|hᵢ| of the sparse autoencoder, with the Normal prior an L2 penalty, with the
    flat prior (``--prior none``) the plain autoencoder. ``location`` returns (f(x), 0).
    """

    summary = "point mass: the deterministic autoencoder"
    has_density = False
    point_mass = True

    def __init__(self, feature_dim: int, z_dim: int):
        super().__init__(feature_dim, z_dim)
        self.head = nn.Linear(feature_dim, z_dim)

    def location(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.head(h)
        return code, torch.zeros_like(code)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Delta(self.location(h)[0], event_dim=1)


class EncoderFamily(Family):
    """The family of a user's encoder that returns q(z|x) itself, or its location and scale.

    ``h`` is the encoder's output: a distribution with batch shape (batch,) and event shape
    (z_dim,), used as it is, or a pair (loc, scale) of (batch, z_dim) tensors, read as
    N(loc, diag scale²). ``location`` gives (loc, scale), or a distribution's mean and
    standard deviation.
    """

    exact_mean = True

    def __init__(self, z_dim: int):
        super().__init__(0, z_dim)

    def forward(self, h) -> dist.TorchDistribution:
        if isinstance(h, dist.Distribution):
            return h
        loc, scale = h
        return dist.Normal(loc, scale).to_event(1)

    def location(self, h) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(h, dist.Distribution):
            return h.mean, h.stddev
        return tuple(h)
