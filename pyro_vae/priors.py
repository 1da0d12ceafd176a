"""Priors p(z) over the latent code.

Each prior is a :class:`Prior` module whose ``forward()`` returns a Pyro distribution with
``event_shape == (z_dim,)`` and empty batch shape; the model's ``pyro.plate`` broadcasts it over
the batch. Learnable priors keep their parameters as ``nn.Parameter`` and are registered with Pyro
by the model, so the same SVI step trains them. Adding a prior means adding a subclass here and
an entry in :data:`PRIORS`.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
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
        # Buffers follow the module across devices, so the distribution lives where z does;
        # they are constants, so they stay out of checkpoints.
        self.register_buffer("_zeros", torch.zeros(z_dim), persistent=False)
        self.register_buffer("_ones", torch.ones(z_dim), persistent=False)

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
        return cls(config.z_dim, config.setting("prior_scale"))

    def forward(self) -> dist.TorchDistribution:
        return dist.Laplace(self._zeros, self._ones * self.scale).to_event(1)


class StudentTPrior(Prior):
    """p(z) = ∏ᵢ StudentT(zᵢ; ν, 0, 1): heavy tails that tolerate outlying codes.

    log p(zᵢ) = log Γ((ν+1)/2) − log Γ(ν/2) − ½ log(νπ) − (ν+1)/2 · log(1 + zᵢ²/ν) nats.

    Parameters
    ----------
    z_dim : int
        Dimension of z.
    df : float
        Degrees of freedom ν > 0.
    """

    def __init__(self, z_dim: int, df: float = 3.0):
        super().__init__(z_dim)
        self.df = float(df)

    @classmethod
    def from_config(cls, config: Config) -> "StudentTPrior":
        return cls(config.z_dim, config.setting("prior_df"))

    def forward(self) -> dist.TorchDistribution:
        return dist.StudentT(self._ones * self.df, self._zeros, self._ones).to_event(1)


class MixturePrior(Prior):
    """A learnable mixture of K diagonal Gaussians, p(z) = Σ_k π_k N(z; μ_k, diag σ_k²).

    Mixture weights (softmax of logits), means and log-scales are ``nn.Parameter``s trained by
    the same SVI step as the networks (the GMM prior of Dilokthanakul et al. 2016 and of
    scvi-tools' ``MixtureOfGaussiansPrior``).

    Parameters
    ----------
    z_dim : int
        Dimension of z.
    components : int
        K ≥ 1.
    """

    def __init__(self, z_dim: int, components: int = 50):
        super().__init__(z_dim)
        self.logits = nn.Parameter(torch.zeros(components))  # K
        self.locs = nn.Parameter(torch.randn(components, z_dim))  # K x z_dim
        self.log_scales = nn.Parameter(torch.zeros(components, z_dim))  # K x z_dim

    @classmethod
    def from_config(cls, config: Config) -> "MixturePrior":
        return cls(config.z_dim, config.setting("prior_components"))

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(Prior):
    """VampPrior: p(z) = (1/K) Σ_k q(z | u_k), the guide's posterior at K learned pseudo-inputs.

    Tomczak & Welling (2018), eq. 9. The pseudo-inputs u_k (K, D) are parameters of this prior;
    the encoder is the guide's and is shared, not owned (its parameters are registered by the
    guide), so the checkpoint holds it once.

    Parameters
    ----------
    z_dim, input_dim : int
        Dimension of z and D.
    encoder : GaussianGuide
        The guide whose Gaussian q(z|x) is mixed.
    components : int
        K ≥ 1.
    """

    def __init__(self, z_dim: int, input_dim: int, encoder: nn.Module, components: int = 50):
        super().__init__(z_dim)
        # Grey pseudo-images with a little noise, as in Tomczak & Welling's initialisation.
        self.pseudo_inputs = nn.Parameter(0.5 + 0.05 * torch.randn(components, input_dim))
        # object.__setattr__ keeps the shared encoder out of this module's children.
        object.__setattr__(self, "encoder", encoder)

    @classmethod
    def from_config(cls, config: Config, encoder: nn.Module | None = None) -> "VampPrior":
        return cls(config.z_dim, config.input_dim, encoder, config.setting("prior_components"))

    def forward(self) -> dist.TorchDistribution:
        loc, scale = self.encoder.encode(self.pseudo_inputs)  # K x z_dim each
        weights = dist.Categorical(logits=torch.zeros_like(loc[:, 0]))
        return dist.MixtureSameFamily(weights, dist.Normal(loc, scale).to_event(1))


class FlowPrior(Prior):
    """A normalising-flow prior: z = T_K ∘ … ∘ T_1(u), u ~ N(0, I).

    Each T_k is the inverse of an affine autoregressive transform, i.e. a masked autoregressive
    flow (Papamakarios et al. 2017): log p(z) = log N(T⁻¹(z)) + log |det ∂T⁻¹/∂z| costs one
    network pass per layer (what training needs), sampling costs z_dim passes. Built from Pyro's
    ``AffineAutoregressive`` modules, whose parameters the SVI step trains.

    Parameters
    ----------
    z_dim : int
        Dimension of z, ≥ 2.
    flows : int
        K ≥ 1.
    """

    def __init__(self, z_dim: int, flows: int = 2):
        super().__init__(z_dim)
        hidden = [max(4 * z_dim, 32)]
        self.flows = nn.ModuleList(
            T.affine_autoregressive(z_dim, hidden_dims=hidden) for _ in range(flows)
        )

    @classmethod
    def from_config(cls, config: Config) -> "FlowPrior":
        return cls(config.z_dim, config.setting("flows"))

    def forward(self) -> dist.TorchDistribution:
        base = dist.Normal(self._zeros, self._ones).to_event(1)
        return dist.TransformedDistribution(base, [f.inv for f in self.flows])


class FlatPrior(Prior):
    """The improper flat prior, log p(z) = 0: with a point-mass guide, the plain autoencoder.

    It cannot be sampled, so models with it cannot generate new data.
    """

    def forward(self) -> dist.TorchDistribution:
        return dist.ImproperUniform(dist.constraints.real, (), (self.z_dim,))


#: Registry of priors by the name used in ``--prior`` and ``config.json``.
PRIORS: dict[str, type[Prior]] = {
    "normal": StandardNormalPrior,
    "laplace": LaplacePrior,
    "studentt": StudentTPrior,
    "mog": MixturePrior,
    "vamp": VampPrior,
    "flow": FlowPrior,
    "none": FlatPrior,
}


def build_prior(config: Config, encoder: nn.Module | None = None) -> Prior:
    """The prior named by ``config.prior``; ``encoder`` is the guide, needed by ``vamp``."""
    if config.prior == "vamp":
        return VampPrior.from_config(config, encoder)
    return PRIORS[config.prior].from_config(config)
