"""Guides q(z|x): an encoder network followed by a head that outputs a Pyro distribution.

Each guide's ``forward(x)`` returns q(z|x) with batch shape (batch,) and event shape (z_dim,),
and ``encode(x)`` returns a location and scale per image for pictures and diagnostics. Adding a
guide means adding a subclass here and an entry in :data:`GUIDES`.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from .config import Config
from .networks import build_encoder_body


class Guide(nn.Module):
    """Base class: an encoder ``body`` x (batch, D) → features (batch, F), and a head.

    Parameters
    ----------
    body : nn.Module
        The encoder network.
    feature_dim : int
        F.
    z_dim : int
        Dimension of z.
    """

    def __init__(self, body: nn.Module, feature_dim: int, z_dim: int):
        super().__init__()
        self.body = body
        self.z_dim = z_dim

    @classmethod
    def from_config(cls, config: Config) -> "Guide":
        body, features = build_encoder_body(config)
        return cls(body, features, config.z_dim)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """``x`` (batch, D) → location and scale of the code, each (batch, z_dim)."""
        raise NotImplementedError


class GaussianGuide(Guide):
    """q(z|x) = N(μ(x), diag σ²(x)), the VAE's encoder (Kingma & Welling 2014, appendix C.2).

    The head outputs μ and log σ², so σ = exp(½ log σ²). Reparameterised.
    """

    def __init__(self, body: nn.Module, feature_dim: int, z_dim: int):
        super().__init__(body, feature_dim, z_dim)
        self.head = nn.Linear(feature_dim, 2 * z_dim)

    def _gaussian(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var = self.head(features).chunk(2, dim=-1)
        return loc, torch.exp(0.5 * log_var)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gaussian(self.body(x))

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.encode(x)
        return dist.Normal(loc, scale).to_event(1)


class IAFGuide(GaussianGuide):
    """The Gaussian guide followed by K inverse autoregressive flow layers.

    z₀ ~ N(μ(x), diag σ²(x)), z_k = μ_k(z_{k−1}, h) + σ_k(z_{k−1}, h) ⊙ z_{k−1}, where h are the
    encoder's features (Kingma et al. 2016, eq. 10–11, with the context h of their §4). Built
    from Pyro's ``ConditionalAffineAutoregressive``; sampling and the density of a sample are
    one pass each. ``encode`` returns the flowed base location f_K∘…∘f_1(μ(x)), the code the
    decoder sees, and the base scale σ(x); the flow's own mean and spread have no closed form.

    Parameters
    ----------
    flows : int
        K ≥ 1.
    """

    def __init__(self, body: nn.Module, feature_dim: int, z_dim: int, flows: int = 2):
        super().__init__(body, feature_dim, z_dim)
        hidden = [max(4 * z_dim, 32)]
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(z_dim, feature_dim, hidden_dims=hidden)
            for _ in range(flows)
        )

    @classmethod
    def from_config(cls, config: Config) -> "IAFGuide":
        body, features = build_encoder_body(config)
        return cls(body, features, config.z_dim, config.setting("flows"))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        loc, scale = self._gaussian(features)
        for flow in self.flows:
            loc = flow.condition(features)(loc)
        return loc, scale

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        features = self.body(x)
        loc, scale = self._gaussian(features)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(features) for f in self.flows])


class DeltaGuide(Guide):
    """q(z|x) = δ(z − f(x)), a point mass: the deterministic autoencoder.

    With a point mass the ELBO becomes log p(x|h) + log p(h) at h = f(x) (Goodfellow, Bengio &
    Courville 2016, §14.2.1, eq. 14.2): with the Laplace prior that is reconstruction plus the
    L1 penalty λΣ|hᵢ| of the sparse autoencoder, with the Normal prior an L2 penalty, with the
    flat prior (``--prior none``) the plain autoencoder. ``encode`` returns (f(x), 0).
    """

    def __init__(self, body: nn.Module, feature_dim: int, z_dim: int):
        super().__init__(body, feature_dim, z_dim)
        self.head = nn.Linear(feature_dim, z_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.head(self.body(x))
        return code, torch.zeros_like(code)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        return dist.Delta(self.encode(x)[0], event_dim=1)


#: Registry of guides by the name used in ``--guide`` and ``config.json``.
GUIDES: dict[str, type[Guide]] = {
    "normal": GaussianGuide,
    "iaf": IAFGuide,
    "delta": DeltaGuide,
}


def build_guide(config: Config) -> Guide:
    """The guide named by ``config.guide`` on the encoder network of ``config.arch``."""
    return GUIDES[config.guide].from_config(config)


def contractive_penalty(guide: Guide, x: torch.Tensor) -> torch.Tensor:
    """‖∂f(x)/∂x‖²_F per image, f the encoder's code map (the guide's location).

    The contractive autoencoder's penalty (Rifai et al. 2011, eq. 2), with the Jacobian
    (batch, z_dim, D) computed by ``torch.func.jacrev`` under ``vmap``; differentiable with
    respect to the encoder's parameters. ``x`` (batch, D) → (batch,).
    """

    def code(xi: torch.Tensor) -> torch.Tensor:
        return guide.encode(xi.unsqueeze(0))[0].squeeze(0)

    jacobian = torch.func.vmap(torch.func.jacrev(code))(x)
    return jacobian.pow(2).sum(dim=(-2, -1))
