"""The VAE as a Pyro program: the model p(z) p(x|z) and the guide q(z|x)."""

from __future__ import annotations

import contextlib
import itertools
import math

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
from .parts.scaling import Standardize
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
    standardize : bool
        Standardise each feature inside the model (:class:`~pyro_vae.parts.scaling.Standardize`):
        the encoder reads (x − m)/s and p(x|z) is pushed through x = m + s·x', so every
        log-likelihood stays in data units. m and s are set from the training data by
        :meth:`adapt`.

    Raises
    ------
    ConfigError
        For a prior or likelihood that cannot be used (wrong shapes, unknown name).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior, likelihood="bernoulli",
                 family: Family | None = None, *, data_shape: tuple[int, ...] | None = None,
                 standardize: bool = False):
        super().__init__()
        prior = prior if isinstance(prior, Prior) else DistributionPrior(prior)
        self.encoder = encoder
        self.family = family if family is not None else EncoderFamily(prior.z_dim)
        self.decoder = decoder
        self.prior = prior
        self.likelihood = _likelihood(likelihood)
        self.standardize = bool(standardize)
        self.scaling: Standardize | None = None
        self.data_shape: tuple[int, ...] | None = None
        if data_shape is not None:
            self.set_data_shape(data_shape)
        self.config: ModelConfig | None = None
        self.name = f"vae{next(_instances)}"
        self.adapted = False
        if prior.needs_encoder:  # pseudo-inputs live where the encoder reads (after scaling)
            prior.use_encoder(self._gaussian_of_input)

    def set_data_shape(self, data_shape: tuple[int, ...]) -> None:
        """Fix the shape of one data point, creating what has one entry per feature (the
        likelihood's per-feature parameters, the standardisation)."""
        self.data_shape = tuple(data_shape)
        input_dim = math.prod(self.data_shape)
        self.likelihood.prepare(input_dim)
        if self.standardize:
            self.scaling = Standardize(input_dim)

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> None:
        """Initialise from the training data ``x`` (N, D) before a new run trains: the
        standardisation's mean and scale, the likelihood's data-dependent start (the count
        likelihoods' mean library size and output offset). :func:`pyro_vae.fit` calls it for
        a model that has not been adapted (not on resume, nor for a loaded model); call it
        yourself before your own SVI loop."""
        if self.scaling is not None:
            self.scaling.adapt(x)
        self.likelihood.adapt(x)
        self.adapted = True

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
        vae = cls(encoder, decoder, prior, likelihood, family, data_shape=shape,
                  standardize=config.standardizes)
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
                           standardize=self.standardize,
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
        pyro.module(f"{self.name}.likelihood", self.likelihood)  # e.g. a learned dispersion
        size = x.shape[0] if x is not None else num
        with pyro.plate("data", size):
            with _scaled(kl_weight):
                z = pyro.sample("z", self.prior())
            if contractive:
                penalty = contractive_penalty(self.code, x)
                pyro.factor("contractive", -contractive * penalty, has_rsample=True)
            obs = self.likelihood.to_obs(x) if x is not None else None
            return pyro.sample("x", self.observation(self.decoder_params(z), x), obs=obs)

    def observation(self, params: torch.Tensor, x: torch.Tensor | None = None):
        """p(x|z) in data units from the decoder output ``params`` (batch, D, k); ``x`` is the
        observed batch (batch, D) for likelihoods that read covariates from it (library size),
        None when sampling."""
        if self.likelihood.reads_observation:
            px = self.likelihood(params, x=x)
        else:
            px = self.likelihood(params)
        return self.scaling.push(px) if self.scaling is not None else px

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads from data ``x`` (batch, D): the likelihood's
        :meth:`~pyro_vae.parts.likelihoods.Likelihood.encoder_input` (log(1 + x) for counts),
        then the standardisation."""
        x = self.likelihood.encoder_input(x)
        return self.scaling(x) if self.scaling is not None else x

    def guide(self, x: torch.Tensor, kl_weight=None, *, num: int | None = None,
              contractive: float = 0.0, corruption=None) -> torch.Tensor:
        """q(z|x) for a batch ``x`` of shape (batch, D); returns z of shape (batch, z_dim).

        ``corruption`` (a callable, e.g. :class:`~pyro_vae.parts.corruption.MaskCorruption`)
        makes the guide encode x̃ ~ C(x̃|x): the denoising autoencoder. It acts on what the
        encoder reads (:meth:`encoder_input`: standardised features, log(1 + counts)), so
        noise is in those units and a masked feature reads as its mean (or zero counts).
        """
        pyro.module(f"{self.name}.encoder", self.encoder)
        pyro.module(f"{self.name}.family", self.family)
        seen = self.encoder_input(x)
        if corruption is not None:
            seen = corruption(seen)
        with pyro.plate("data", x.shape[0]), _scaled(kl_weight):
            return pyro.sample("z", self.family(self.encoder(seen)))

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z|x): ``x`` (batch, D) → a distribution with batch (batch,), event (z_dim,)."""
        return self.family(self.encoder(self.encoder_input(x)))

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The location of q(z|x), differentiable: (batch, D) → (batch, z_dim)."""
        return self.family.location(self.encoder(self.encoder_input(x)))[0]

    def decoder_params(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters: ``z`` (..., z_dim) → (..., D, k)."""
        out = self.decoder(z)
        return out.reshape(*z.shape[:-1], -1, self.likelihood.params_per_dim)

    def _gaussian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gaussian_of_input(self.encoder_input(x))

    def _gaussian_of_input(self, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.family.location(self.encoder(seen))

    def _mean(self, params: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.likelihood.reads_observation:
            mean = self.likelihood.mean(params, x=x)
        else:
            mean = self.likelihood.mean(params)
        return self.scaling.inverse(mean) if self.scaling is not None else mean

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
        return self._mean(self.decoder_params(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = location of q(z|x)): ``x`` (batch, D) → (batch, D)."""
        return self._mean(self.decoder_params(self.encode(x)[0]), x)

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
