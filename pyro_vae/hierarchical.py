"""A VAE with L ≥ 2 stochastic layers, z_L → … → z_1 → x, as one Pyro model and guide.

Generative model (Burda, Grosse & Salakhutdinov 2016, §5; Rezende et al. 2014, eq. 1)::

    z_L ~ p(z_L)                         site "zL", the prior part (--prior), (batch, d_L)
    z_l ~ N(μ_l(z_{l+1}), diag σ_l²(z_{l+1}))   site "zl" for l = L−1 … 2, and "z" for l = 1
    x   ~ p(x | decoder(z_1))            site "x", observed

Guide, bottom-up (Burda et al. 2016, §5)::

    z_1 ~ q(z_1|x) = family(encoder(x))            site "z" (--guide), (batch, d_1)
    z_l ~ N(μ'_l(z_{l−1}), diag σ'_l²(z_{l−1}))    site "zl" for l = 2 … L

The bottom layer keeps the one-layer model's site name "z" and is what the decoder reads, so
every tool that works with the code (``encode``, ``decode``, the pictures, the latent map,
MIG) works with z_1 unchanged (``pyro-vae encode`` adds the upper layers' codes,
:meth:`HierarchicalVAE.encode_layers`); the importance-sampled log-likelihood, the −ELBO and
the Pareto k̂ weigh every layer (:func:`~pyro_vae.evaluation.evaluate.log_importance_weights`
sums over :attr:`HierarchicalVAE.latent_sites`). The ladder (top-down) guide of Sønderby et
al. (2016) is not built.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .errors import ConfigError
from .model import VAE, _scaled, contractive_penalty
from .parts.families import Family
from .parts.networks import mlp


def layer_sites(layers: int) -> tuple[str, ...]:
    """The sample sites of ``layers`` stochastic layers, bottom first: ``("z", "z2", …)``."""
    return ("z",) + tuple(f"z{l}" for l in range(2, layers + 1))


class GaussianLayer(nn.Module):
    """A conditional diagonal Gaussian between two stochastic layers: z_in (…, in_dim) →
    N(μ(z_in), diag σ²(z_in)) with batch shape (…) and event shape (out_dim,).

    μ and log σ² come from one linear head on an MLP of ``hidden`` tanh units, Burda et al.'s
    (2016, §5) layers between stochastic layers (two of 100 units between their 100- and
    50-unit layers, as wide as the lower one).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int]):
        super().__init__()
        widths = (in_dim, *hidden)
        self.body = mlp(widths, "tanh", final_activation=True) if hidden else nn.Identity()
        self.head = nn.Linear(widths[-1], 2 * out_dim)

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        loc, log_var = self.head(self.body(z)).chunk(2, dim=-1)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)


class HierarchicalVAE(VAE):
    """A VAE with stochastic layers z_L → … → z_1 → x (see the module docstring for the model
    and guide, and :class:`~pyro_vae.model.VAE` for the rest).

    Parameters
    ----------
    encoder, decoder, likelihood, family, data_shape, standardize
        As :class:`~pyro_vae.model.VAE`, for the bottom layer: the encoder and ``family`` give
        q(z_1|x), the decoder reads z_1 (…, d_1).
    prior : Prior or Distribution
        p(z_L) over the top layer, event shape (d_L,). A VampPrior (Tomczak & Welling 2018,
        eq. 9) mixes, at each pseudo-input u_k, the top layer's guide along its mean path,
        q(z_L | z_{L−1} = μ_{L−1}(… μ_1(u_k))): the marginal q(z_L|u_k) = ∫ q(z_L|z_1) q(z_1|u_k)
        dz_1 has no closed form, and at the mean path it is one Gaussian per pseudo-input.
    upward : sequence of nn.Module
        L − 1 networks, the l-th mapping z_l (…, d_l) to q(z_{l+1}|z_l), a distribution with
        event shape (d_{l+1},) (e.g. :class:`GaussianLayer`).
    downward : sequence of nn.Module
        L − 1 networks, the l-th mapping z_{l+1} (…, d_{l+1}) to p(z_l|z_{l+1}) with event
        shape (d_l,).
    layer_dims : sequence of int
        (d_1, …, d_L).

    Raises
    ------
    ConfigError
        For fewer than two layers, networks that do not match ``layer_dims``, or a condition or a
        classifier (not built for hierarchical models).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior, likelihood="bernoulli",
                 family: Family | None = None, *, upward: Sequence[nn.Module],
                 downward: Sequence[nn.Module], layer_dims: Sequence[int],
                 data_shape: tuple[int, ...] | None = None, standardize: bool = False):
        layer_dims = tuple(int(d) for d in layer_dims)
        if len(layer_dims) < 2:
            raise ConfigError("a hierarchical VAE needs at least two stochastic layers; use "
                              "VAE for one")
        if not len(upward) == len(downward) == len(layer_dims) - 1:
            raise ConfigError(f"{len(layer_dims)} stochastic layers need "
                              f"{len(layer_dims) - 1} upward and downward networks each, got "
                              f"{len(upward)} and {len(downward)}")
        super().__init__(encoder, decoder, prior, likelihood, family, data_shape=data_shape,
                         standardize=standardize)
        if self.prior.z_dim != layer_dims[-1]:
            raise ConfigError(f"the prior is over {self.prior.z_dim} dimensions but the top "
                              f"layer has {layer_dims[-1]}")
        self.layer_dims = layer_dims
        self.latent_sites = layer_sites(len(layer_dims))
        self.upward = nn.ModuleList(upward)
        self.downward = nn.ModuleList(downward)
        if self.prior.needs_encoder:  # the VampPrior over the top layer
            self.prior.use_encoder(self._top_gaussian_of_input)

    @property
    def z_dim(self) -> int:
        """d_1, the dimension of the bottom layer z_1: the code that the decoder reads."""
        return self.layer_dims[0]

    @classmethod
    def from_config(cls, config) -> "HierarchicalVAE":
        """The model that ``config`` (a :class:`~pyro_vae.config.Config` or its model section,
        ``latent_layers`` ≥ 2) names, with :class:`GaussianLayer` s of two hidden layers as
        wide as the layer below between stochastic layers, each way (Burda et al. 2016, §5: two
        of 100 units between their 100- and 50-unit layers)."""
        from .config import Config

        config = config.model if isinstance(config, Config) else config
        dims = config.layer_dims
        network, shape = config.arch.build(), config.data_shape
        if shape is None:
            raise ConfigError("data_shape is unknown until the data are loaded")
        likelihood = config.likelihood.build()
        encoder, features = network.encoder(shape)
        family = config.guide.build(features, dims[0])
        decoder = network.decoder(dims[0], shape, likelihood.params_per_dim)
        prior = config.prior.build(z_dim=dims[-1], input_dim=config.input_dim)
        upward = [GaussianLayer(low, high, (low, low)) for low, high in zip(dims, dims[1:])]
        downward = [GaussianLayer(high, low, (low, low)) for low, high in zip(dims, dims[1:])]
        vae = cls(encoder, decoder, prior, likelihood, family, upward=upward,
                  downward=downward, layer_dims=dims, data_shape=shape,
                  standardize=config.standardizes)
        vae.config = config
        return vae

    def describe(self):
        """As :meth:`VAE.describe`, with the layers' dimensions."""
        import dataclasses

        described = super().describe()
        if self.config is not None:
            return described
        return dataclasses.replace(described, latent_layers=len(self.layer_dims),
                                   upper_z_dim=self.layer_dims[1:])

    def model(self, x: torch.Tensor | None = None, kl_weight=None, y: torch.Tensor | None = None,
              *, num: int | None = None, contractive: float = 0.0, corruption=None,
              classifier_weight: float = 0.0) -> torch.Tensor:
        """p(z_L) ∏ p(z_l|z_{l+1}) p(x|z_1) for a batch ``x`` (batch, D), or ``num`` draws if
        x is None; ``kl_weight`` scales every latent site (β multiplies the whole KL term, the
        sum over layers), the other arguments as :meth:`VAE.model`. Returns x."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.module(f"{self.name}.prior", self.prior)
        pyro.module(f"{self.name}.likelihood", self.likelihood)
        pyro.module(f"{self.name}.downward", self.downward)
        self._unexpected(y)
        size = x.shape[0] if x is not None else num
        with pyro.plate("data", size):
            with _scaled(kl_weight):
                z = pyro.sample(self.latent_sites[-1], self.prior())
                for site, layer in zip(self.latent_sites[-2::-1], self.downward[::-1]):
                    z = pyro.sample(site, layer(z))
            if contractive:
                pyro.factor("contractive", -contractive * contractive_penalty(self.code, x),
                            has_rsample=True)
            obs = self.likelihood.to_obs(x) if x is not None else None
            return pyro.sample("x", self.observation(self.decoder_params(z), x), obs=obs)

    def guide(self, x: torch.Tensor, kl_weight=None, y: torch.Tensor | None = None, *,
              num: int | None = None, contractive: float = 0.0, corruption=None,
              classifier_weight: float = 0.0) -> torch.Tensor:
        """q(z_1|x) ∏ q(z_{l+1}|z_l), bottom-up, for a batch ``x`` (batch, D); returns z_1
        (batch, d_1). ``corruption`` as :meth:`VAE.guide`."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        pyro.module(f"{self.name}.family", self.family)
        pyro.module(f"{self.name}.upward", self.upward)
        self._unexpected(y)
        seen = self.encoder_input(x)
        if corruption is not None:
            seen = corruption(seen)
        with pyro.plate("data", x.shape[0]):
            with _scaled(kl_weight):
                bottom = z = pyro.sample("z", self.family(self.encoder(seen)))
                for site, layer in zip(self.latent_sites[1:], self.upward):
                    z = pyro.sample(site, layer(z))
        return bottom

    def _top_gaussian_of_input(self, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z_L | z_{L−1}) along the guide's mean path from ``seen``
        (K, D): z_1 = the location of q(z_1|u), z_{l+1} = the location of q(z_{l+1}|z_l); two
        (K, d_L). The VampPrior over the top layer mixes these Gaussians."""
        *_, top = self._mean_path(self._gaussian_of_input(seen)[0])  # L ≥ 2: never empty
        return top

    def _mean_path(self, loc: torch.Tensor):
        """The guide's upper layers along the mean path from z_1 = ``loc`` (…, d_1): yields
        the location and scale of q(z_{l+1}|z_l) at z_l = the location below, for l = 1 …
        L − 1."""
        for layer in self.upward:
            q = layer(loc)
            loc = q.mean
            yield loc, q.stddev

    @torch.no_grad()
    def prior_draws(self, sample_shape: tuple[int, ...]) -> torch.Tensor:
        """z_1 from its marginal prior, by ancestral sampling down the layers:
        (*sample_shape, d_1)."""
        z = self.prior().sample(sample_shape)
        for layer in self.downward[::-1]:
            z = layer(z).sample()
        return z

    @torch.no_grad()
    def encode_layers(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Location and scale of every layer's guide along its mean path, for ``x`` (batch,
        D): q(z_1|x) as :meth:`encode`, then q(z_{l+1}|z_l) at z_l = its location below,
        ``{"z": ((batch, d_1), (batch, d_1)), "z2": ((batch, d_2), (batch, d_2)), …}``. The
        upper layers' codes are thus those of the guide's conditionals at the mean code, not
        the marginal q(z_{l+1}|x), which has no closed form."""
        loc, scale = self.encode(x)
        codes = {"z": (loc, scale)}
        codes.update(zip(self.latent_sites[1:], self._mean_path(loc)))
        return codes

    @torch.no_grad()
    def upper_draws(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Draws of the layers above z_1 from the guide given z_1 = ``z`` (…, d_1):
        ``{"z2": (…, d_2), …}``."""
        draws = {}
        for site, layer in zip(self.latent_sites[1:], self.upward):
            z = draws[site] = layer(z).sample()
        return draws
