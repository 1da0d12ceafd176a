"""The VAE as a Pyro program: the model p(z) p(x|z) and the guide q(z|x)."""

from __future__ import annotations

import contextlib
import itertools

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from torch import nn

from .config import Config
from .corruption import parse_corruption
from .errors import ConfigError
from .guides import Guide, build_guide, contractive_penalty
from .likelihoods import Likelihood, build_likelihood
from .networks import Decoder
from .priors import FlatPrior, Prior, build_prior

_instances = itertools.count()


class VAE(nn.Module):
    """A variational autoencoder written as a Pyro model and guide.

    Generative model (Kingma & Welling 2014, eq. 1–3)::

        z ~ p(z)                      site "z", (batch, z_dim)
        x ~ p(x | decoder(z))         site "x", (batch, D), observed

    Guide, the amortised variational posterior::

        z ~ q(z|x)                    site "z", e.g. N(μ(x), diag σ²(x)), reparameterised

    Both run inside ``pyro.plate("data", batch)``, so ``SVI(vae.model, vae.guide, optim,
    Trace_ELBO())`` maximises the ELBO summed over the batch, in nats. The networks are plain
    ``nn.Module`` children registered with ``pyro.module`` on every call, which is how Pyro's
    optimiser finds them. Each instance registers under its own name (``vae0.encoder``,
    ``vae1.encoder`` …) so two VAEs in one process never share parameters in Pyro's global
    param store.

    In training mode (``vae.train()``) three optional regularisers act: the KL weight
    ``kl_weight`` (β, warm-up) scales the z sites of model and guide with ``poutine.scale``;
    ``corruption`` feeds the guide x̃ ~ C(x̃|x) (denoising); ``contractive`` λ adds
    −λ‖∂f(x)/∂x‖²_F through ``pyro.factor``. In evaluation mode (``vae.eval()``) the model and
    guide are the plain ELBO's.

    Parameters
    ----------
    encoder : Guide
        q(z|x): maps x (batch, D) to a distribution over z with event shape (z_dim,).
    decoder : nn.Module
        Maps z (..., z_dim) to likelihood parameters (..., D, k).
    prior : Prior
        p(z).
    likelihood : Likelihood
        p(x | decoder(z)).
    config : Config, optional
        The run configuration this model was built from; stored with checkpoints.
    """

    def __init__(
        self,
        encoder: Guide,
        decoder: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        config: Config | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.config = config
        self.name = f"vae{next(_instances)}"
        self.kl_weight = config.beta if config is not None else 1.0
        self.corruption = parse_corruption(config.corrupt) if config is not None else None
        self.contractive = config.contractive if config is not None else 0.0

    @classmethod
    def from_config(cls, config: Config) -> "VAE":
        """Build the networks, prior and likelihood that ``config`` names (``data_shape`` set)."""
        likelihood = build_likelihood(config)
        encoder = build_guide(config)
        return cls(
            encoder=encoder,
            decoder=Decoder(config, likelihood.params_per_dim),
            prior=build_prior(config, encoder),
            likelihood=likelihood,
            config=config,
        )

    @property
    def z_dim(self) -> int:
        """Dimension of the latent code z."""
        return self.prior.z_dim

    def _kl_scale(self):
        """``poutine.scale`` by the KL weight on the z sites, in training mode only."""
        if self.training and self.kl_weight != 1.0:
            return poutine.scale(scale=self.kl_weight)
        return contextlib.nullcontext()

    def model(self, x: torch.Tensor | None = None, num: int | None = None) -> torch.Tensor:
        """p(z) p(x|z) for a batch ``x`` of shape (batch, D), or ``num`` fresh draws if x is None.

        Returns the observed ``x``, or the sampled one (num, D) in the likelihood's units.
        """
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.module(f"{self.name}.prior", self.prior)
        size = x.shape[0] if x is not None else num
        with pyro.plate("data", size):
            with self._kl_scale():
                z = pyro.sample("z", self.prior())
            if self.contractive and self.training and x is not None:
                penalty = contractive_penalty(self.encoder, x)
                pyro.factor("contractive", -self.contractive * penalty, has_rsample=True)
            obs = self.likelihood.to_obs(x) if x is not None else None
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=obs)

    def guide(self, x: torch.Tensor, num: int | None = None) -> torch.Tensor:
        """q(z|x) for a batch ``x`` of shape (batch, D); returns z of shape (batch, z_dim)."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        if self.corruption is not None and self.training:
            x = self.corruption(x)
        with pyro.plate("data", x.shape[0]), self._kl_scale():
            return pyro.sample("z", self.encoder(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z|x): ``x`` (batch, D) → two (batch, z_dim).

        For the ``iaf`` guide these are the Gaussian base's; for ``delta``, (f(x), 0).
        """
        return self.encoder.encode(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) in data units: ``z`` (batch, z_dim) → (batch, D)."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = location of q(z|x)): ``x`` (batch, D) → (batch, D)."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, num: int, mean: bool = False) -> torch.Tensor:
        """Draw z ~ p(z), then x ~ p(x|z) (or its mean with ``mean=True``): (num, D) in data units.

        Runs :meth:`model` through ``pyro.infer.Predictive``, so it uses Pyro's global RNG
        (seed it with ``pyro.set_rng_seed``).

        Raises
        ------
        ConfigError
            For the flat prior (``--prior none``), which cannot be sampled.
        """
        if isinstance(self.prior, FlatPrior):
            raise ConfigError(
                "this model has the flat prior (--prior none), which cannot be sampled; "
                "train with a proper prior to generate new data"
            )
        draws = Predictive(self.model, num_samples=1, return_sites=("z", "x"))(None, num)
        if mean:
            return self.decode(draws["z"][0])
        return self.likelihood.to_data(draws["x"][0])
