"""The VAE as a Pyro program: the model p(z) p(x|z) and the guide q(z|x); with a condition y,
the conditional VAE p(z) p(x|z, y), q(z|x, y), and the semi-supervised M2 model."""

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
from .parts.conditions import Condition, CovariateCondition, LabelCondition
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

    **Conditional models.** With a ``condition`` the networks read y as a vector c (one-hot
    for a class label, standardised covariates; :mod:`~pyro_vae.parts.conditions`), the
    decoder cat[z, c] and the encoder (x, c): the conditional VAE of Sohn, Lee & Yan (2015),
    p(z) p(x|z, y) and q(z|x, y), y an input given with every batch. With a ``classifier`` as
    well, the class is a latent site, the M2 model of Kingma, Mohamed, Rezende & Welling (2014,
    §3.1.2, eq. 6–9)::

        y ~ p(y) = Cat(1/K)            site "y", observed for labelled images
        x ~ p(x | decoder(z, y))
        y ~ q(y|x) = Cat(classifier(x))  in the guide, where y is not given, enumerated

    Where y is not given, ``TraceEnum_ELBO`` sums the guide's "y" out over its K values in
    parallel, the unlabelled bound −U(x) of their eq. 7; where it is, ``classifier_weight`` α adds
    their classification term α·log q(y|x) (eq. 9) with ``pyro.factor``, in training only.

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
    condition : Condition, optional
        What the model conditions on (:class:`~pyro_vae.parts.conditions.LabelCondition`,
        :class:`~pyro_vae.parts.conditions.CovariateCondition`); then ``encoder(x, c)`` and
        ``decoder(cat[z, c])`` read its vector c of ``condition.dim`` entries, so the decoder
        must take z_dim + C inputs. A model of your own can be saved by :func:`pyro_vae.fit`
        with a label condition only (``config.json`` cannot name covariate columns of yours;
        use ``--condition NAMES`` for those).
    classifier : nn.Module, optional
        With a label condition: x (batch, D) → the K logits of q(y|x), which makes the
        class a latent site (the semi-supervised model).

    Raises
    ------
    ConfigError
        For a prior or likelihood that cannot be used (wrong shapes, unknown name).
    """

    #: The latent sample sites of model and guide, bottom first (the decoder reads the first);
    #: more than one in a :class:`~pyro_vae.hierarchical.HierarchicalVAE`.
    latent_sites: tuple[str, ...] = ("z",)

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior, likelihood="bernoulli",
                 family: Family | None = None, *, data_shape: tuple[int, ...] | None = None,
                 standardize: bool = False, condition: Condition | None = None,
                 classifier: nn.Module | None = None):
        super().__init__()
        prior = prior if isinstance(prior, Prior) else DistributionPrior(prior)
        if classifier is not None and not (condition is not None and condition.labels):
            raise ConfigError("a classifier q(y|x) needs a label condition: pass "
                              "condition=LabelCondition(num_classes)")
        if condition is not None and prior.needs_encoder:
            raise ConfigError(f"the prior {prior.name} mixes the guide's posteriors at "
                              "pseudo-inputs, which a conditional guide cannot give")
        self.condition, self.classifier = condition, classifier
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
    def adapt(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Initialise from the training data ``x`` (N, D) before a new run trains: the
        standardisation's mean and scale, the likelihood's data-dependent start (the count
        likelihoods' mean library size and output offset), and from the training conditions
        ``y`` the covariates' mean and scale. :func:`pyro_vae.fit` calls it for a model that
        has not been adapted (not on resume, nor for a loaded model); call it yourself before
        your own SVI loop."""
        if self.scaling is not None:
            self.scaling.adapt(x)
        self.likelihood.adapt(x)
        if self.condition is not None and y is not None:
            self.condition.adapt(y)
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
        if config.latent_layers > 1 and cls is VAE:
            from .hierarchical import HierarchicalVAE

            return HierarchicalVAE.from_config(config)
        network, shape = config.arch.build(), config.data_shape
        if shape is None:
            raise ConfigError("data_shape is unknown until the data are loaded")
        likelihood = config.likelihood.build()
        c_dim = config.condition_dim
        encoder, features = (network.conditional_encoder(shape, c_dim) if c_dim
                             else network.encoder(shape))
        family = config.guide.build(features, config.z_dim)
        decoder = network.decoder(config.z_dim + c_dim, shape, likelihood.params_per_dim)
        prior = config.prior.build(z_dim=config.z_dim, input_dim=config.input_dim)
        condition = classifier = None
        if config.condition == "label":
            condition = LabelCondition(config.num_classes)
        elif config.condition is not None:
            condition = CovariateCondition(c_dim)
        if config.semi_supervised:
            classifier = network.classifier(shape, config.num_classes)
        vae = cls(encoder, decoder, prior, likelihood, family, data_shape=shape,
                  standardize=config.standardizes, condition=condition, classifier=classifier)
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
        condition = self.condition
        if condition is not None and not condition.labels:
            raise ConfigError("a model of yours conditioned on covariates cannot name its "
                              "columns in config.json; fit it with a label condition or "
                              "through --condition NAMES")
        return ModelConfig(z_dim=self.z_dim, data_shape=self.data_shape, user_built=True,
                           standardize=self.standardize,
                           condition="label" if condition is not None else None,
                           num_classes=condition.num_classes if condition is not None else None,
                           semi_supervised=self.semi_supervised,
                           likelihood=PartChoice("likelihood", cls.name, options))

    @property
    def z_dim(self) -> int:
        """Dimension of the latent code z."""
        return self.prior.z_dim

    @torch.no_grad()
    def prior_draws(self, sample_shape: tuple[int, ...]) -> torch.Tensor:
        """Codes z from p(z), the prior of what the decoder reads: (*sample_shape, z_dim)."""
        return self.prior().sample(sample_shape)

    @property
    def hierarchical(self) -> bool:
        """Whether the model has more than one stochastic layer (:attr:`latent_sites`)."""
        return len(self.latent_sites) > 1

    @property
    def can_sample(self) -> bool:
        """Whether p(z) can be sampled, so that the model can generate new data."""
        return self.prior.proper

    @property
    def semi_supervised(self) -> bool:
        """Whether the class is a latent site with a classifier q(y|x) (the M2 model), so that
        objectives sum it out where it is not given (:meth:`guide`)."""
        return self.classifier is not None

    @property
    def num_classes(self) -> int | None:
        """K, the classes of a label condition; None for other models."""
        return self.condition.num_classes if self.condition is not None and \
            self.condition.labels else None

    def model(self, x: torch.Tensor | None = None, kl_weight=None, y: torch.Tensor | None = None,
              *, num: int | None = None, contractive: float = 0.0, corruption=None,
              classifier_weight: float = 0.0) -> torch.Tensor:
        """p(z) p(x|z) for a batch ``x`` of shape (batch, D), or ``num`` fresh draws if x is None;
        with a condition, p(z) p(x|z, y).

        ``y`` is the condition of each row: class labels (batch,) int64 or covariates
        (batch, C); required by a conditional model, except by the semi-supervised one, which
        draws the class from p(y) (or the guide) where ``y`` is None. ``kl_weight`` (a float
        or 0-d tensor) scales the z site; ``contractive`` > 0 adds the contractive penalty
        (:func:`contractive_penalty`); ``classifier_weight`` α > 0 adds α·log q(y|x) for given
        labels (Kingma et al. 2014, eq. 9): 0 by default, so an SVI loop of your own gets the
        classification term only when it passes α (``fit`` passes ``--classifier-weight``);
        ``corruption`` is the guide's. Returns the observed ``x``, or the sampled one (num, D)
        in the likelihood's units.

        Raises
        ------
        ConfigError
            For a conditional model called without ``y`` (other than the semi-supervised one),
            or a model without a condition called with one.
        """
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.module(f"{self.name}.prior", self.prior)
        pyro.module(f"{self.name}.likelihood", self.likelihood)  # e.g. a learned dispersion
        size = x.shape[0] if x is not None else num
        self._unexpected(y)
        with pyro.plate("data", size):
            with _scaled(kl_weight):
                z = pyro.sample("z", self.prior())
            c = None
            if self.semi_supervised:
                pyro.module(f"{self.name}.classifier", self.classifier)
                given = y
                y = pyro.sample("y", self.condition.prior(), obs=y)
                if classifier_weight and given is not None:
                    q_y = dist.Categorical(logits=self.classifier(self.encoder_input(x)))
                    pyro.factor("classification", classifier_weight * q_y.log_prob(given))
            if self.condition is not None:
                c = self.condition(self._required(y))
            if contractive:
                penalty = contractive_penalty(self.code, x, c)
                pyro.factor("contractive", -contractive * penalty, has_rsample=True)
            obs = self.likelihood.to_obs(x) if x is not None else None
            return pyro.sample("x", self.observation(self.decoder_params(z, c), x), obs=obs)

    def _unexpected(self, y: torch.Tensor | None) -> None:
        if y is not None and self.condition is None:
            raise ConfigError("this model has no condition, so it takes no y; drop it")

    def _required(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            what = "class labels" if self.condition.labels else "covariates"
            raise ConfigError(f"this model is conditioned on {what}: give y, one per row")
        return y

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

    def guide(self, x: torch.Tensor, kl_weight=None, y: torch.Tensor | None = None, *,
              num: int | None = None, contractive: float = 0.0, corruption=None,
              classifier_weight: float = 0.0) -> torch.Tensor:
        """q(z|x) for a batch ``x`` of shape (batch, D), q(z|x, y) with a condition; returns z
        of shape (batch, z_dim).

        For the semi-supervised model without ``y`` the class is drawn from the classifier,
        y ~ q(y|x), a site marked for parallel enumeration: ``TraceEnum_ELBO`` sums it out,
        and z then has shape (K, batch, z_dim). ``corruption`` (a callable, e.g.
        :class:`~pyro_vae.parts.corruption.MaskCorruption`) makes the guide encode
        x̃ ~ C(x̃|x): the denoising autoencoder. It acts on what the encoder reads
        (:meth:`encoder_input`: standardised features, log(1 + counts)), so noise is in those
        units and a masked feature reads as its mean (or zero counts).

        Raises
        ------
        ConfigError
            For a conditional model called without ``y`` (other than the semi-supervised one).
        """
        pyro.module(f"{self.name}.encoder", self.encoder)
        pyro.module(f"{self.name}.family", self.family)
        self._unexpected(y)
        seen = self.encoder_input(x)
        if corruption is not None:
            seen = corruption(seen)
        with pyro.plate("data", x.shape[0]):
            if self.semi_supervised:
                pyro.module(f"{self.name}.classifier", self.classifier)
                if y is None:
                    y = pyro.sample("y", dist.Categorical(logits=self.classifier(seen)),
                                    infer={"enumerate": "parallel"})
            with _scaled(kl_weight):
                return pyro.sample("z", self.family(self._features(seen, y)))

    def _features(self, seen: torch.Tensor, y: torch.Tensor | None):
        """The encoder's output for what it reads, ``seen``, and the condition y."""
        if self.condition is None:
            return self.encoder(seen)
        return self.encoder(seen, self.condition(self._required(y)))

    def given(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor | None:
        """The condition to encode ``x`` (batch, D) with: ``y`` where given; for the
        semi-supervised model without ``y``, the classifier's most probable class; None for an
        unconditional model.

        Raises
        ------
        ConfigError
            For another conditional model without ``y``.
        """
        if y is not None or self.condition is None:
            return y
        if self.semi_supervised:
            return self.classify(x).argmax(-1)
        return self._required(y)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x) of the semi-supervised model: ``x`` (batch, D) → class probabilities
        (batch, K).

        Raises
        ------
        ConfigError
            For a model without a classifier.
        """
        if not self.semi_supervised:
            raise ConfigError("only the semi-supervised model (--labelled) has a classifier "
                              "q(y|x)")
        return torch.softmax(self.classifier(self.encoder_input(x)), -1)

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """q(z|x) (or q(z|x, y), y as :meth:`given` decides): ``x`` (batch, D) → a
        distribution with batch (batch,), event (z_dim,)."""
        return self.family(self._features(self.encoder_input(x), self.given(x, y)))

    def code(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """The location of q(z|x) (q(z|x, y) for the condition vector ``c`` (batch, C)),
        differentiable: (batch, D) → (batch, z_dim)."""
        seen = self.encoder_input(x)
        features = self.encoder(seen) if c is None else self.encoder(seen, c)
        return self.family.location(features)[0]

    def decoder_params(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's parameters: ``z`` (..., z_dim) and, for a conditional model, the
        condition vector ``c`` (..., C) → (..., D, k); z and c broadcast, and the decoder reads
        cat[z, c]."""
        if c is not None:
            lead = torch.broadcast_shapes(z.shape[:-1], c.shape[:-1])
            z = torch.cat([z.expand(*lead, z.shape[-1]), c.expand(*lead, c.shape[-1])], -1)
        out = self.decoder(z)
        return out.reshape(*z.shape[:-1], -1, self.likelihood.params_per_dim)

    def condition_vector(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """c for the condition ``y`` (labels (…,) or covariates (…, C)); None when there is
        no condition (or no ``y``)."""
        return self.condition(y) if self.condition is not None and y is not None else None

    def _gaussian(self, x: torch.Tensor, y: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        seen = self.encoder_input(x)
        return self.family.location(self._features(seen, self.given(x, y)))

    def _gaussian_of_input(self, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.family.location(self.encoder(seen))

    def _mean(self, params: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.likelihood.reads_observation:
            mean = self.likelihood.mean(params, x=x)
        else:
            mean = self.likelihood.mean(params)
        return self.scaling.inverse(mean) if self.scaling is not None else mean

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z|x): ``x`` (batch, D) → two (batch, z_dim). For a
        conditional model, of q(z|x, y) with y as :meth:`given` decides: the code with the
        condition's effect taken out, since the decoder gets y separately.

        For the ``iaf`` family these are the flowed base location and the base scale; for
        ``delta``, (f(x), 0).
        """
        return self._gaussian(x, y)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x|z) (p(x|z, y) with a condition) in data units: ``z`` (batch, z_dim) →
        (batch, D).

        Raises
        ------
        ConfigError
            For a conditional model without ``y``.
        """
        if self.condition is not None:
            self._required(y)
        return self.decode_vector(z, self.condition_vector(y))

    @torch.no_grad()
    def decode_vector(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x|z, c) in data units for condition vectors ``c`` (…, C) themselves, e.g.
        a point between two one-hot codes: ``z`` (…, z_dim) → (…, D); ``c`` None for an
        unconditional model.

        Raises
        ------
        ConfigError
            For a conditional model without ``c``, or an unconditional one with it.
        """
        if (c is None) != (self.condition is None):
            raise ConfigError("give the condition vector c of a conditional model, and none "
                              "for another")
        return self._mean(self.decoder_params(z, c))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x | z = location of q(z|x)): ``x`` (batch, D) → (batch, D); for a
        conditional model with y as :meth:`given` decides, in encoder and decoder."""
        y = self.given(x, y)
        params = self.decoder_params(self.encode(x, y)[0], self.condition_vector(y))
        return self._mean(params, x)

    @torch.no_grad()
    def sample(self, num: int, mean: bool = False, y: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Draw z ~ p(z), then x ~ p(x|z) (or its mean with ``mean=True``): (num, D) in data
        units. For a conditional model, x ~ p(x|z, y) for the conditions ``y`` (num rows);
        without them, the semi-supervised model draws y ~ p(y) and a label-conditioned one
        draws labels uniformly.

        Runs :meth:`model` through ``pyro.infer.Predictive``, so it uses Pyro's global RNG
        (seed it with ``pyro.set_rng_seed``).

        Raises
        ------
        ConfigError
            For an improper prior (the flat ``--prior none``), which cannot be sampled, and for
            a model conditioned on covariates without ``y``.
        """
        if not self.can_sample:
            raise ConfigError(
                f"this model has the improper prior --prior {self.prior.name}, which cannot be "
                "sampled; train with a proper prior to generate new data"
            )
        device = next(self.buffers()).device
        if y is None and self.num_classes is not None and not self.semi_supervised:
            y = torch.randint(self.num_classes, (num,), device=device)
        if y is not None:
            self._unexpected(y)
            y = y.to(device)
        elif self.condition is not None and not self.semi_supervised:
            self._required(y)  # covariates: here, not inside Pyro's trace
        draws = Predictive(self.model, num_samples=1, return_sites=("z", "x", "y"))(
            None, None, y, num=num)
        if mean:
            return self.decode(draws["z"][0], draws["y"][0] if "y" in draws else y)
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


def contractive_penalty(code, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """‖∂f(x)/∂x‖²_F per image, f = ``code`` the encoder's code map (the guide's location; for
    a conditional model at the condition vectors ``c`` (batch, C), held fixed).

    The contractive autoencoder's penalty (Rifai et al. 2011, eq. 2), with the Jacobian
    (batch, z_dim, D) computed by ``torch.func.jacrev`` under ``vmap``; differentiable with
    respect to the encoder's parameters. ``x`` (batch, D) → (batch,).
    """

    if c is None:
        def one(xi: torch.Tensor) -> torch.Tensor:
            return code(xi.unsqueeze(0)).squeeze(0)

        jacobian = torch.func.vmap(torch.func.jacrev(one))(x)
    else:
        def one(xi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
            return code(xi.unsqueeze(0), ci.unsqueeze(0)).squeeze(0)

        jacobian = torch.func.vmap(torch.func.jacrev(one))(x, c.expand(x.shape[0], -1))
    return jacobian.pow(2).sum(dim=(-2, -1))
