"""Priors p(z) over the latent code.

Each prior is a :class:`Prior` module whose ``forward()`` returns a Pyro distribution with
``event_shape == (z_dim,)`` and empty batch shape; the model's ``pyro.plate`` broadcasts it over
the batch. Learnable priors keep their parameters as ``nn.Parameter`` and are registered with Pyro
by the model, so the same SVI step trains them. A prior is registered with
:func:`~pyro_vae.registry.register_prior`; its options are :class:`~pyro_vae.registry.Option`
class attributes and its capabilities (``proper``, ``learnable``, ``needs_encoder``,
``min_z_dim``) plain class attributes.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Option, Part, positive, positive_int, register_prior


class Prior(Part, nn.Module):
    """Base class: p(z) over codes of dimension ``z_dim``.

    Parameters
    ----------
    z_dim : int
        Dimension of z.
    input_dim : int, optional
        D, the dimension of a flattened data point (the VampPrior's pseudo-inputs need it).
    """

    #: p(z) is a normalised distribution that can be sampled (so the model can generate).
    proper: bool = True
    #: p(z) has parameters that training moves.
    learnable: bool = False
    #: p(z) is defined through the guide's Gaussian q(z|x) (set by :meth:`use_encoder`).
    needs_encoder: bool = False
    #: (smallest z_dim, why): a prior that needs a few latent dimensions.
    min_z_dim: tuple[int, str] = (1, "")
    #: p(z) = ∏ᵢ p(zᵢ), an ``Independent`` over one distribution per dimension, so a KL
    #: term splits into one per latent dimension (``--free-bits``).
    factorised: bool = False

    def __init__(self, z_dim: int, input_dim: int | None = None):
        super().__init__()
        self.z_dim = z_dim
        # Buffers follow the module across devices, so the distribution lives where z does;
        # they are constants, so they stay out of checkpoints.
        self.register_buffer("_zeros", torch.zeros(z_dim), persistent=False)
        self.register_buffer("_ones", torch.ones(z_dim), persistent=False)

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


@register_prior("normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the prior of Kingma & Welling (2014).

    log p(z) = −½‖z‖² − (d/2) log 2π, in nats.
    """

    summary = "N(0, I)"
    factorised = True

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self._zeros, self._ones).to_event(1)


@register_prior("laplace")
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

    summary = "sparsity prior"
    factorised = True
    scale = Option(float, 1.0, "Scale b of the laplace prior (λ = 1/b).", positive,
                   flag="prior-scale")

    def __init__(self, z_dim: int, input_dim: int | None = None, scale: float = 1.0):
        super().__init__(z_dim)
        self.scale = float(scale)

    def forward(self) -> dist.TorchDistribution:
        return dist.Laplace(self._zeros, self._ones * self.scale).to_event(1)


@register_prior("studentt")
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

    summary = "heavy tails"
    factorised = True
    df = Option(float, 3.0, "Degrees of freedom ν of the studentt prior.", positive,
                flag="prior-df")

    def __init__(self, z_dim: int, input_dim: int | None = None, df: float = 3.0):
        super().__init__(z_dim)
        self.df = float(df)

    def forward(self) -> dist.TorchDistribution:
        return dist.StudentT(self._ones * self.df, self._zeros, self._ones).to_event(1)


@register_prior("mog")
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

    summary = "learned mixture of Gaussians"
    components = Option(int, 50, "Components K of the mog prior, pseudo-inputs of the vamp "
                        "prior.", positive_int, flag="prior-components")
    learnable = True

    def __init__(self, z_dim: int, input_dim: int | None = None, components: int = 50):
        super().__init__(z_dim)
        self.components = components
        self.logits = nn.Parameter(torch.zeros(components))  # K
        self.locs = nn.Parameter(torch.randn(components, z_dim))  # K x z_dim
        self.log_scales = nn.Parameter(torch.zeros(components, z_dim))  # K x z_dim

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


@register_prior("vamp")
class VampPrior(Prior):
    """VampPrior: p(z) = (1/K) Σ_k q(z | u_k), the guide's posterior at K learned pseudo-inputs.

    Tomczak & Welling (2018), eq. 9. The pseudo-inputs u_k (K, D) are parameters of this prior;
    the encoder is the model's and is shared, not owned (its parameters are registered by the
    guide), so the checkpoint holds it once. The model hands it over with :meth:`use_encoder`.

    Parameters
    ----------
    z_dim, input_dim : int
        Dimension of z and D.
    components : int
        K ≥ 1.
    """

    summary = "VampPrior"
    components = MixturePrior.components
    learnable = True
    needs_encoder = True

    def __init__(self, z_dim: int, input_dim: int, components: int = 50):
        super().__init__(z_dim)
        self.components = components
        # Grey pseudo-images with a little noise, as in Tomczak & Welling's initialisation.
        self.pseudo_inputs = nn.Parameter(0.5 + 0.05 * torch.randn(components, input_dim))

    def use_encoder(self, encode) -> None:
        """Mix the Gaussian ``encode(x) -> (loc, scale)``, each (K, z_dim), of the model's guide."""
        # object.__setattr__ keeps the shared encoder out of this module's children.
        object.__setattr__(self, "encoder", encode)

    def forward(self) -> dist.TorchDistribution:
        loc, scale = self.encoder(self.pseudo_inputs)  # K x z_dim each
        weights = dist.Categorical(logits=torch.zeros_like(loc[:, 0]))
        return dist.MixtureSameFamily(weights, dist.Normal(loc, scale).to_event(1))


@register_prior("flow")
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

    summary = "masked autoregressive flow"
    num_flows = Option(int, 2, "Flow layers of the iaf guide and of the flow prior.",
                       positive_int, flag="flows")
    learnable = True
    min_z_dim = (2, "autoregressive flows")

    def __init__(self, z_dim: int, input_dim: int | None = None, num_flows: int = 2):
        super().__init__(z_dim)
        self.num_flows = num_flows
        hidden = [max(4 * z_dim, 32)]
        self.flows = nn.ModuleList(
            T.affine_autoregressive(z_dim, hidden_dims=hidden) for _ in range(num_flows)
        )

    def forward(self) -> dist.TorchDistribution:
        base = dist.Normal(self._zeros, self._ones).to_event(1)
        return dist.TransformedDistribution(base, [f.inv for f in self.flows])


@register_prior("none")
class FlatPrior(Prior):
    """The improper flat prior, log p(z) = 0: with a point-mass guide, the plain autoencoder.

    It cannot be sampled, so models with it cannot generate new data.
    """

    summary = "flat; with --guide delta only"
    proper = False

    def forward(self) -> dist.TorchDistribution:
        return dist.ImproperUniform(dist.constraints.real, (), (self.z_dim,))


class DistributionPrior(Prior):
    """A prior given as a ``pyro.distributions`` distribution, or as a module returning one.

    Lets :class:`~pyro_vae.model.VAE` take a user's prior: ``dist.Normal(0, 1).expand([z_dim])
    .to_event(1)``, a mixture, anything with ``event_shape == (z_dim,)`` and empty batch shape.
    A module's parameters are trained with the rest of the model; a plain distribution's
    tensors stay where they were made (make it on the training device, or wrap it in a module
    that builds it from buffers).

    Parameters
    ----------
    prior : Distribution or nn.Module
        p(z), or a module whose ``forward()`` returns it.

    Raises
    ------
    ConfigError
        If the distribution's shapes are not batch () and event (z_dim,).
    """

    def __init__(self, prior):
        source = prior() if isinstance(prior, nn.Module) else prior
        if not isinstance(source, dist.Distribution) or source.batch_shape != () or len(
                source.event_shape) != 1:
            raise ConfigError(
                "the prior must be a pyro.distributions distribution (or a module returning one) "
                "with batch shape () and event shape (z_dim,), e.g. "
                "dist.Normal(torch.zeros(20), 1.0).to_event(1)"
            )
        super().__init__(source.event_shape[0])
        self.learnable = isinstance(prior, nn.Module) and any(True for _ in prior.parameters())
        if isinstance(prior, nn.Module):
            self.module = prior
        else:
            object.__setattr__(self, "distribution", prior)

    def forward(self) -> dist.Distribution:
        return self.module() if "module" in self._modules else self.distribution
