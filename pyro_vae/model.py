"""The VAE as a Pyro program: the model p(z) p(x|z) and the guide q(z|x)."""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from torch import nn

from .config import Config
from .likelihoods import Likelihood, build_likelihood
from .networks import Decoder, GaussianEncoder
from .priors import Prior, build_prior

_instances = itertools.count()


class VAE(nn.Module):
    """A variational autoencoder written as a Pyro model and guide.

    Generative model (Kingma & Welling 2014, eq. 1–3)::

        z ~ p(z)                      site "z", (batch, z_dim)
        x ~ p(x | decoder(z))         site "x", (batch, D), observed

    Guide, the amortised variational posterior::

        z ~ q(z|x) = N(μ(x), diag σ²(x))   site "z", reparameterised

    Both run inside ``pyro.plate("data", batch)``, so ``SVI(vae.model, vae.guide, optim,
    Trace_ELBO())`` maximises the ELBO summed over the batch, in nats. The networks are plain
    ``nn.Module`` children registered with ``pyro.module`` on every call, which is how Pyro's
    optimiser finds them. Each instance registers under its own name (``vae0.encoder``,
    ``vae1.encoder`` …) so two VAEs in one process never share parameters in Pyro's global
    param store.

    Parameters
    ----------
    encoder : nn.Module
        Maps x (batch, D) to ``(loc, scale)``, each (batch, z_dim).
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
        encoder: nn.Module,
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

    @classmethod
    def from_config(cls, config: Config) -> "VAE":
        """Build the networks, prior and likelihood that ``config`` names (``data_shape`` set)."""
        likelihood = build_likelihood(config)
        return cls(
            encoder=GaussianEncoder.from_config(config),
            decoder=Decoder.from_config(config, likelihood.params_per_dim),
            prior=build_prior(config),
            likelihood=likelihood,
            config=config,
        )

    @property
    def z_dim(self) -> int:
        return self.prior.z_dim

    def model(self, x: torch.Tensor | None = None, num: int | None = None) -> torch.Tensor:
        """p(z) p(x|z) for a batch ``x`` of shape (batch, D), or ``num`` fresh draws if x is None.

        Returns the observed ``x``, or the sampled one of shape (num, D).
        """
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.module(f"{self.name}.prior", self.prior)
        size = x.shape[0] if x is not None else num
        with pyro.plate("data", size):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, num: int | None = None) -> torch.Tensor:
        """q(z|x) for a batch ``x`` of shape (batch, D); returns z of shape (batch, z_dim)."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z|x): ``x`` (batch, D) → two (batch, z_dim)."""
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z): ``z`` (batch, z_dim) → (batch, D), e.g. pixel probabilities."""
        return self.likelihood(self.decoder(z)).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = μ(x)): ``x`` (batch, D) → (batch, D)."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, num: int, mean: bool = False) -> torch.Tensor:
        """Draw z ~ p(z), then x ~ p(x|z) (or its mean with ``mean=True``): (num, D).

        Runs :meth:`model` through ``pyro.infer.Predictive``, so it uses Pyro's global RNG
        (seed it with ``pyro.set_rng_seed``).
        """
        draws = Predictive(self.model, num_samples=1, return_sites=("z", "x"))(None, num)
        return self.decode(draws["z"][0]) if mean else draws["x"][0]
