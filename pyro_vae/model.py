"""The VAE as a Pyro program: the model p(z) p(x|z) and the guide q(z|x)."""

from __future__ import annotations

import contextlib
import itertools

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from torch import nn

from .config import Config, ModelConfig, PartChoice
from .errors import ConfigError
from .parts.families import EncoderFamily, Family
from .parts.likelihoods import Likelihood
from .parts.priors import DistributionPrior, Prior
from .registry import LIKELIHOODS

_instances = itertools.count()


class VAE(nn.Module):
    """A variational autoencoder written as a Pyro model and guide.

    Generative model (Kingma & Welling 2014, eq. 1–3)::

        z ~ p(z)                      site "z", (batch, z_dim)
        x ~ p(x | decoder(z))         site "x", (batch, D), observed

    Guide, the amortised variational posterior::

        z ~ q(z|x) = family(encoder(x))   site "z", e.g. N(μ(x), diag σ²(x)), reparameterised

    Both run inside ``pyro.plate("data", batch)``, so ``SVI(vae.model, vae.guide, optim,
    Trace_ELBO())`` maximises the ELBO summed over the batch, in nats. The networks are plain
    ``nn.Module`` children registered with ``pyro.module`` on every call, which is how Pyro's
    optimiser finds them; each instance registers under its own name (``vae0.encoder``,
    ``vae1.encoder`` …) so two VAEs never share parameters in Pyro's global param store.

    Values a training schedule drives are arguments of :meth:`model` and :meth:`guide`, as in
    Pyro's own examples: ``kl_weight`` (β, warm-up) scales the z sites with ``poutine.scale``;
    ``corruption`` feeds the guide x̃ ~ C(x̃|x) (denoising); ``contractive`` λ adds
    −λ‖∂f(x)/∂x‖²_F through ``pyro.factor``. Without them, model and guide are the plain ELBO's.

    Parameters
    ----------
    encoder : nn.Module
        The encoder network. With ``family`` given it maps x (batch, D) to the features the
        family reads; without, it returns q(z|x) itself (a distribution with batch shape
        (batch,) and event shape (z_dim,)) or a pair (loc, scale) of (batch, z_dim) tensors.
    decoder : nn.Module
        Maps z (..., z_dim) to the likelihood's parameters, (..., D, k) or (..., D·k).
    prior : Prior, Distribution or nn.Module
        p(z): a registered prior part, a ``pyro.distributions`` distribution with event shape
        (z_dim,), or a module returning one.
    likelihood : str, Likelihood class or instance
        p(x | decoder(z)); a name from ``--likelihood`` (``"bernoulli"``), with default options.
    family : Family, optional
        The variational family q(z|x) (``--guide``); see ``encoder``.
    data_shape : tuple of int, optional
        Shape of one data point, e.g. (28, 28); set by :func:`pyro_vae.fit` from the data.

    Raises
    ------
    ConfigError
        For a prior or likelihood that cannot be used (wrong shapes, unknown name).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior, likelihood="bernoulli",
                 family: Family | None = None, *, data_shape: tuple[int, ...] | None = None):
        super().__init__()
        prior = prior if isinstance(prior, Prior) else DistributionPrior(prior)
        self.encoder = encoder
        self.family = family if family is not None else EncoderFamily(prior.z_dim)
        self.decoder = decoder
        self.prior = prior
        self.likelihood = _likelihood(likelihood)
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        self.config: ModelConfig | None = None
        self.name = f"vae{next(_instances)}"
        if prior.needs_encoder:
            prior.use_encoder(self._gaussian)

    @classmethod
    def from_config(cls, config: Config | ModelConfig) -> "VAE":
        """Build the networks and parts that ``config`` names (``data_shape`` set).

        Raises
        ------
        ConfigError
            If ``config`` describes a user-built model (its networks are the user's code) or
            lacks the data shape.
        """
        config = config.model if isinstance(config, Config) else config
        if config.user_built:
            raise ConfigError("this run holds a user-built model: build it again and pass it as "
                              "load(run_dir, model=your_vae)")
        network, shape = config.arch.build(), config.data_shape
        if shape is None:
            raise ConfigError("data_shape is unknown until the data are loaded")
        likelihood = config.likelihood.build()
        encoder, features = network.encoder(shape)
        family = config.guide.build(features, config.z_dim)
        decoder = network.decoder(config.z_dim, shape, likelihood.params_per_dim)
        prior = config.prior.build(z_dim=config.z_dim, input_dim=config.input_dim)
        vae = cls(encoder, decoder, prior, likelihood, family, data_shape=shape)
        vae.config = config
        return vae

    def describe(self) -> ModelConfig:
        """The model's section of ``config.json``: the config it was built from, or for a
        user-built model its z_dim, data shape and likelihood.

        Raises
        ------
        ConfigError
            If the likelihood is not a registered part (it could not be named in the file).
        """
        if self.config is not None:
            return self.config
        cls = type(self.likelihood)
        if LIKELIHOODS.parts.get(cls.name) is not cls:
            raise ConfigError(f"the likelihood {cls.__name__} is not registered; register it "
                              "with pyro_vae.register_likelihood('name') to save the model")
        options = {a: getattr(self.likelihood, a) for a in cls.options()}
        return ModelConfig(z_dim=self.z_dim, data_shape=self.data_shape, user_built=True,
                           likelihood=PartChoice("likelihood", cls.name, options))

    @property
    def z_dim(self) -> int:
        """Dimension of the latent code z."""
        return self.prior.z_dim

    @property
    def can_sample(self) -> bool:
        """Whether p(z) can be sampled, so that the model can generate new data."""
        return self.prior.proper

    def model(self, x: torch.Tensor | None = None, kl_weight=None, *, num: int | None = None,
              contractive: float = 0.0, corruption=None) -> torch.Tensor:
        """p(z) p(x|z) for a batch ``x`` of shape (batch, D), or ``num`` fresh draws if x is None.

        ``kl_weight`` (a float or 0-d tensor) scales the z site; ``contractive`` > 0 adds the
        contractive penalty (:func:`contractive_penalty`); ``corruption`` is the guide's.
        Returns the observed ``x``, or the sampled one (num, D) in the likelihood's units.
        """
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.module(f"{self.name}.prior", self.prior)
        size = x.shape[0] if x is not None else num
        with pyro.plate("data", size):
            with _scaled(kl_weight):
                z = pyro.sample("z", self.prior())
            if contractive:
                penalty = contractive_penalty(self.code, x)
                pyro.factor("contractive", -contractive * penalty, has_rsample=True)
            obs = self.likelihood.to_obs(x) if x is not None else None
            return pyro.sample("x", self.likelihood(self.decoder_params(z)), obs=obs)

    def guide(self, x: torch.Tensor, kl_weight=None, *, num: int | None = None,
              contractive: float = 0.0, corruption=None) -> torch.Tensor:
        """q(z|x) for a batch ``x`` of shape (batch, D); returns z of shape (batch, z_dim).

        ``corruption`` (a callable, e.g. :class:`~pyro_vae.parts.corruption.MaskCorruption`)
        makes the guide encode x̃ ~ C(x̃|x): the denoising autoencoder.
        """
        pyro.module(f"{self.name}.encoder", self.encoder)
        pyro.module(f"{self.name}.family", self.family)
        if corruption is not None:
            x = corruption(x)
        with pyro.plate("data", x.shape[0]), _scaled(kl_weight):
            return pyro.sample("z", self.posterior(x))

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z|x): ``x`` (batch, D) → a distribution with batch (batch,), event (z_dim,)."""
        return self.family(self.encoder(x))

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The location of q(z|x), differentiable: (batch, D) → (batch, z_dim)."""
        return self.family.location(self.encoder(x))[0]

    def decoder_params(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters: ``z`` (..., z_dim) → (..., D, k)."""
        out = self.decoder(z)
        return out.reshape(*z.shape[:-1], -1, self.likelihood.params_per_dim)

    def _gaussian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.family.location(self.encoder(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z|x): ``x`` (batch, D) → two (batch, z_dim).

        For the ``iaf`` family these are the flowed base location and the base scale; for
        ``delta``, (f(x), 0).
        """
        return self._gaussian(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) in data units: ``z`` (batch, z_dim) → (batch, D)."""
        return self.likelihood.mean(self.decoder_params(z))

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
            For an improper prior (the flat ``--prior none``), which cannot be sampled.
        """
        if not self.can_sample:
            raise ConfigError(
                f"this model has the improper prior --prior {self.prior.name}, which cannot be "
                "sampled; train with a proper prior to generate new data"
            )
        draws = Predictive(self.model, num_samples=1, return_sites=("z", "x"))(None, num=num)
        if mean:
            return self.decode(draws["z"][0])
        return self.likelihood.to_data(draws["x"][0])


def _likelihood(likelihood) -> Likelihood:
    """A likelihood instance from a name, a class or an instance."""
    if isinstance(likelihood, str):
        return LIKELIHOODS[likelihood]()
    if isinstance(likelihood, type) and issubclass(likelihood, Likelihood):
        return likelihood()
    if isinstance(likelihood, Likelihood):
        return likelihood
    raise ConfigError(f"likelihood must be a name ({', '.join(LIKELIHOODS)}), a Likelihood "
                      f"class or instance, got {type(likelihood).__name__}")


def _scaled(kl_weight):
    """``poutine.scale`` by the KL weight on the z sites, or nothing."""
    if kl_weight is None:
        return contextlib.nullcontext()
    return poutine.scale(scale=kl_weight)


def contractive_penalty(code, x: torch.Tensor) -> torch.Tensor:
    """‖∂f(x)/∂x‖²_F per image, f = ``code`` the encoder's code map (the guide's location).

    The contractive autoencoder's penalty (Rifai et al. 2011, eq. 2), with the Jacobian
    (batch, z_dim, D) computed by ``torch.func.jacrev`` under ``vmap``; differentiable with
    respect to the encoder's parameters. ``x`` (batch, D) → (batch,).
    """

    def one(xi: torch.Tensor) -> torch.Tensor:
        return code(xi.unsqueeze(0)).squeeze(0)

    jacobian = torch.func.vmap(torch.func.jacrev(one))(x)
    return jacobian.pow(2).sum(dim=(-2, -1))
