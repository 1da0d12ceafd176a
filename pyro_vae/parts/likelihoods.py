"""Likelihoods p(x|z) = p(x | f(z)) given the decoder output f(z).

A :class:`Likelihood` turns the decoder output of shape ``(batch, D, params_per_dim)`` into a Pyro
distribution with ``event_shape == (D,)``, and checks before training that the data lie in its
support, so that bad data give a clear error instead of a NaN. Data tensors hold grey levels in
[0, 1], except for the count likelihoods (``counts = True``: poisson, negbinomial, zinb,
binomial), which read integer data as they are; a likelihood over other units (the categorical
one over levels 0–255) converts with :meth:`Likelihood.to_obs` and :meth:`Likelihood.to_data`.
A likelihood is registered with :func:`~pyro_vae.registry.register_likelihood`; its options are
:class:`~pyro_vae.registry.Option` class attributes, its capabilities (``discrete``, ``binary``,
``params_per_dim``) plain class attributes.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.utils import broadcast_all

from ..errors import DataError
from ..registry import Option, Part, positive, positive_int, register_likelihood


class Likelihood(Part, nn.Module):
    """Base class of observation models.

    Attributes
    ----------
    params_per_dim : int
        How many decoder outputs each data dimension needs (1 for a Bernoulli logit).
    """

    params_per_dim: int = 1
    #: Whether p(x|z) is a probability mass function, so that −log p(x) converts to bits/dim.
    discrete: bool = False
    #: Whether it scores binary data, so that grey levels are binarised first (``--binarize``).
    binary: bool = False
    #: Whether it scores whole numbers in the data's own units (counts), so that integer data
    #: are read as they are rather than as grey levels scaled to [0, 1].
    counts: bool = False
    #: Whether it scores real numbers on the whole line (``--standardize`` possible; vectors
    #: train with the defaults for real-valued data: learning rate 1e-2, ≥ 3000 steps).
    real_line: bool = False
    #: Whether it learns its own scale, so that standardising changes no option's meaning:
    #: (N, D) data are then standardised by default.
    learns_scale: bool = False
    #: Whether :meth:`forward` and :meth:`mean` read the observed batch (keyword ``x``, or None
    #: when sampling): the count likelihoods with ``--library observed`` take each row's
    #: library size (total count) from it.
    reads_observation: bool = False
    #: The value that pictures show as white (data in [0, 1]: 1).
    picture_max: float = 1.0

    def prepare(self, input_dim: int) -> None:
        """Create what has one entry per data dimension (D = ``input_dim``), e.g. a learned
        dispersion per feature. Called when the model's data shape is known; nothing by
        default."""

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> None:
        """Initialise from the training data ``x`` (N, D) before a new run trains (not on
        resume): e.g. the mean library size. Nothing by default."""

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        """Distribution of x given decoder output ``params`` of shape (batch, D, params_per_dim)."""
        raise NotImplementedError

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        """Raise :class:`DataError` if the values of ``x`` cannot be scored by this likelihood."""

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z] in data units: (..., D, k) → (..., D)."""
        return self(params).mean

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Data (batch, D) → what the encoder reads (identity by default; counts: log(1 + x))."""
        return x

    def to_obs(self, x: torch.Tensor) -> torch.Tensor:
        """Data (batch, D) → the values this distribution scores (identity by default)."""
        return x

    def to_data(self, obs: torch.Tensor) -> torch.Tensor:
        """A draw of this distribution → data units (identity by default)."""
        return obs


class IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits=logits).to_event(1)`` with a cheaper ``log_prob``.

    log p(x) = Σ_d x_d log σ(l_d) + (1 − x_d) log(1 − σ(l_d)) = −Σ_d BCE(l_d, x_d) nats, over
    the last dimension. torch's Bernoulli negates the cross-entropy of every element before
    ``Independent`` sums them; this negates the sum, the same numbers (negation is exact) with
    one pass less over a (…, D) tensor, about a tenth of an importance-sampled evaluation.

    Parameters
    ----------
    logits : Tensor
        (…, D) log-odds; batch shape (…), event shape (D,).
    """

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=validate_args), 1,
                         validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self.base_dist._validate_sample(value)
        logits, value = broadcast_all(self.base_dist.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    def expand(self, batch_shape, _instance=None) -> "IndependentBernoulli":
        shape = torch.Size(batch_shape) + self.event_shape
        return IndependentBernoulli(self.base_dist.logits.expand(shape),
                                    validate_args=self.__dict__.get("_validate_args"))


class _MeanStart(Likelihood):
    """A likelihood whose decoder output is shifted by a fixed per-feature offset b, set by
    :meth:`adapt` so that the model starts at the data's mean: the decoder starts near zero
    output, so p(x | z) starts near the product of the per-feature marginals of the data. This
    is the usual output-bias initialisation (e.g. Burda et al. 2016's IWAE code starts the
    output bias at the logit of the mean pixel clipped to [0.001, 0.999]); as a buffer added to the
    output rather than a changed bias it works with any decoder, the user's own included.

    Checkpoints written before the offset existed load with b = 0, the model they trained.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("offset", torch.zeros(0))

    def offset_shape(self, input_dim: int) -> tuple[int, ...]:
        """Shape of b for D = ``input_dim`` features: (D,) unless a feature has several outputs."""
        return (input_dim,)

    def prepare(self, input_dim: int) -> None:
        self.offset = torch.zeros(self.offset_shape(input_dim))

    def start(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The offset b for training data ``x`` (N, D) in data units."""
        raise NotImplementedError

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> None:
        self.offset = self.start(x).to(self.offset)

    def shifted(self, params: torch.Tensor) -> torch.Tensor:
        """Decoder output (..., D, k) → the distribution's parameters: (..., D) plus b for
        k = 1, (..., D, k) plus b otherwise."""
        out = params.squeeze(-1) if params.shape[-1] == 1 else params
        return out + self.offset if self.offset.numel() else out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "offset" not in state_dict and self.offset.numel():
            state_dict[prefix + "offset"] = torch.zeros_like(self.offset)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _logit_of_mean(x: torch.Tensor, top: float = 1.0) -> torch.Tensor:
    """logit(x̄_d / top) per feature, x̄ clamped to [10⁻³, 1 − 10⁻³] of the range so that a
    feature that never varies in the sample starts at a finite logit of ±6.9."""
    return torch.logit((x.mean(0) / top).clamp(1e-3, 1 - 1e-3))


@register_likelihood("bernoulli")
class BernoulliLikelihood(_MeanStart):
    """x_d ~ Bernoulli(σ(f_d(z))) for binary data.

    log p(x|z) = Σ_d x_d log σ(f_d) + (1 − x_d) log(1 − σ(f_d)) nats (Kingma & Welling 2014,
    appendix C.1). Grey levels in [0, 1] are read as probabilities and binarised before they are
    scored (``binarize`` ``"dynamic"`` or ``"static"``); with ``"none"`` the data must already
    be 0/1. The logits are f_d(z) + b_d with b_d = logit(x̄_d), x̄ the training data's mean
    (:class:`_MeanStart`).
    """

    summary = "binary data"
    discrete = True
    binary = True

    def start(self, x: torch.Tensor) -> torch.Tensor:
        # Grey levels are probabilities of a black-or-white draw: their mean is that of the
        # binarised data.
        return _logit_of_mean(x)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return IndependentBernoulli(self.shifted(params))

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        if binarize == "none":
            if not bool(((x == 0) | (x == 1)).all()):
                raise DataError(
                    f"{what} holds values other than 0 and 1, which --binarize none requires; "
                    "use --binarize dynamic or static for grey levels"
                )
        else:
            _check_unit_interval(x, what, "bernoulli")


class _FixedScaleLikelihood(Likelihood):
    """x_d ~ family(f_d(z), c) with one fixed scale c > 0 for every dimension."""

    family: type[dist.TorchDistribution]
    real_line = True
    scale = Option(float, 0.1, "Fixed scale c of the normal (N(f(z), c²I)) and laplace "
                   "likelihoods, in data units (with --standardize, in standard deviations of "
                   "each feature).", positive, flag="obs-scale")

    def __init__(self, scale: float = 0.1):
        super().__init__()
        self.scale = float(scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return self.family(params.squeeze(-1), self.scale).to_event(1)


@register_likelihood("normal")
class NormalLikelihood(_FixedScaleLikelihood):
    """x ~ N(f(z), c² I) with a fixed scale c, for real-valued data.

    log p(x|z) = −‖x − f(z)‖² / (2c²) − D log c − (D/2) log 2π nats: a squared error up to
    constants (Kingma & Welling 2014, appendix C.2; the Gaussian decoder with covariance c·I).

    Parameters
    ----------
    scale : float
        c > 0, in the units of the data.
    """

    summary = "fixed scale"
    family = dist.Normal


@register_likelihood("continuous-bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """x_d ~ ContinuousBernoulli(λ_d = σ(f_d(z))) on [0, 1]: the properly normalised density
    for grey levels that the Bernoulli likelihood only approximates.

    log p(x|λ) = log C(λ) + x log λ + (1 − x) log(1 − λ), C(λ) = 2 artanh(1 − 2λ)/(1 − 2λ)
    (Loaiza-Ganem & Cunningham 2019, eq. 7). Densities can be positive, so −log p can be < 0.
    """

    summary = "grey levels in [0, 1]"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params.squeeze(-1)).to_event(1)

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        _check_unit_interval(x, what, "continuous-bernoulli")


@register_likelihood("normal-learned")
class LearnedNormalLikelihood(Likelihood):
    """x ~ N(μ_θ(z), diag σ²_θ(z)): the decoder outputs a scale per dimension too.

    σ = s_min + softplus(raw), the floor s_min keeping the density from collapsing onto pixels
    that never vary (the decoder with learned variance of Goodfellow, Bengio & Courville 2016,
    §20.10.3). log p = Σ_d −(x_d − μ_d)²/(2σ_d²) − log σ_d − ½ log 2π nats.

    Parameters
    ----------
    min_scale : float
        s_min > 0.
    """

    summary = "learned scale per dimension"
    params_per_dim = 2
    real_line = True
    learns_scale = True
    min_scale = Option(float, 0.01, "Floor of the learned scale of normal-learned, against "
                       "collapse (for standardised data, in standard deviations of each "
                       "feature).", positive, flag="min-obs-scale")

    def __init__(self, min_scale: float = 0.01):
        super().__init__()
        self.min_scale = float(min_scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = params.unbind(-1)
        scale = self.min_scale + torch.nn.functional.softplus(raw_scale)
        return dist.Normal(loc, scale).to_event(1)


@register_likelihood("laplace")
class LaplaceLikelihood(_FixedScaleLikelihood):
    """x ~ Laplace(f(z), c) per dimension: an L1 reconstruction error in nats.

    log p(x|z) = −‖x − f(z)‖₁ / c − D log(2c).

    Parameters
    ----------
    scale : float
        c > 0, in the units of the data.
    """

    summary = "L1 error"
    family = dist.Laplace


@register_likelihood("categorical")
class CategoricalLikelihood(_MeanStart):
    """x_d ∈ {0, …, 255} ~ Categorical(softmax(f_d(z))): a free distribution over the 256 grey
    levels of each pixel (the softmax output unit for discrete values, Goodfellow, Bengio &
    Courville 2016, §6.2.2.3; van den Oord et al. 2016, §2.2).

    Data in [0, 1] are scored as levels round(255·x); −log p(x) converts to bits per dimension
    as −log p(x) / (D ln 2). The logits are f_d(z) + b_d with b_{d,l} the log frequency of
    level l at feature d in the training data, smoothed by adding one to every count
    (Laplace's rule of succession), so that the model starts at the data's per-pixel level
    histograms (:class:`_MeanStart`).
    """

    summary = "256 grey levels"
    params_per_dim = 256
    discrete = True

    def offset_shape(self, input_dim: int) -> tuple[int, ...]:
        return (input_dim, 256)

    def start(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.to_obs(x).clamp(0, 255).long()
        cells = levels + 256 * torch.arange(x.shape[1], device=x.device)
        counts = torch.bincount(cells.flatten(), minlength=x.shape[1] * 256)
        counts = counts.reshape(x.shape[1], 256).to(torch.float32) + 1.0
        return counts.log() - counts.sum(-1, keepdim=True).log()

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Categorical(logits=self.shifted(params)).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        levels = torch.arange(256, dtype=params.dtype, device=params.device)
        return (self.shifted(params).softmax(-1) * levels).sum(-1) / 255.0

    def to_obs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255.0)

    def to_data(self, obs: torch.Tensor) -> torch.Tensor:
        return obs / 255.0

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        _check_unit_interval(x, what, "categorical")
        if bool(((x * 255.0 - torch.round(x * 255.0)).abs() > 1e-3).any()):
            raise DataError(
                f"{what} are not on the 256 grey levels that the categorical likelihood scores; "
                "give uint8 images or use --likelihood continuous-bernoulli"
            )


class _CountLikelihood(Likelihood):
    """Base of the likelihoods over counts x_d ∈ {0, 1, 2, …}, read in the data's own units.

    With ``library = "observed"`` the decoder gives proportions ρ(z) = softmax(f(z)) over the D
    features and the mean count is μ_d = ℓ ρ_d, ℓ = Σ_d x_d the row's observed library size
    (total count), an observed covariate as in scVI (Lopez et al. 2018, §Methods, with
    ``use_observed_lib_size``): log-likelihoods are then log p(x | z, ℓ), conditional on ℓ,
    and do not compare with those of ``"none"`` or of other models. When sampling, ℓ is the
    mean library size of the training data. With ``"none"``, μ_d = exp(f_d(z)), a proper
    model of x whose NLL compares with any other.
    """

    counts = True
    discrete = True
    picture_max = 255.0  # count images are mostly 8-bit levels
    library = Option(str, "observed", "Count likelihoods: observed (mean = library size x "
                     "softmax(decoder), the scVI size factor; library = the row's total count) "
                     "or none (mean = exp(decoder)).", choices=("observed", "none"),
                     flag="library")

    def __init__(self, library: str = "observed"):
        super().__init__()
        self.library = library
        self.reads_observation = library == "observed"  # the row's library size
        self.register_buffer("library_size", torch.tensor(1.0))
        self.register_buffer("log_offset", torch.zeros(0))

    def prepare(self, input_dim: int) -> None:
        self.log_offset = torch.zeros(input_dim)

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> None:
        totals = x.sum(-1)
        self.library_size.fill_(float(totals.mean().clamp(min=1.0)))
        # The decoder starts near zero output: an offset of log mean count (or proportion)
        # starts the model at the data's mean, as the output bias of most reference models.
        mean = x.mean(0).clamp(min=1e-6)
        if self.library == "observed":
            mean = mean / mean.sum()
        self.log_offset = mean.log().to(self.log_offset)

    def log_rate(self, params: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """log μ (..., D) from the decoder output (..., D, k) and the observed batch."""
        f = params[..., 0] + self.log_offset if self.log_offset.numel() else params[..., 0]
        if self.library == "none":
            return f.clamp(max=30.0)
        # An all-zero row keeps a vanishing mean, so that it scores log p = 0 under a Poisson.
        library = self.library_size if x is None else x.sum(-1, keepdim=True).clamp(min=1e-8)
        return f.log_softmax(-1) + torch.log(library)

    def mean(self, params: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_rate(params, x).exp()

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(x)  # as scVI's encoder reads counts

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        _check_counts(x, what, self.name)


@register_likelihood("poisson")
class PoissonLikelihood(_CountLikelihood):
    """x_d ~ Poisson(μ_d(z)) for counts.

    log p(x|z) = Σ_d x_d log μ_d − μ_d − log x_d! nats.
    """

    summary = "counts"

    def forward(self, params: torch.Tensor, x: torch.Tensor | None = None):
        return dist.Poisson(self.log_rate(params, x).exp()).to_event(1)


class _Dispersed(_CountLikelihood):
    """A learned inverse dispersion θ_d > 0 per feature (``log_theta``, (D,))."""

    def __init__(self, library: str = "observed"):
        super().__init__(library)
        self.log_theta = nn.Parameter(torch.zeros(0))

    def prepare(self, input_dim: int) -> None:
        super().prepare(input_dim)
        self.log_theta = nn.Parameter(torch.zeros(input_dim))

    def _nb_logits(self, params, x):
        """NB logits log(μ/θ): torch's NegativeBinomial(θ, logits) has mean θ·e^logits = μ."""
        return self.log_rate(params, x) - self.log_theta


@register_likelihood("negbinomial")
class NegativeBinomialLikelihood(_Dispersed):
    """x_d ~ NB(mean μ_d(z), inverse dispersion θ_d) for over-dispersed counts, θ learned per
    feature: Var x_d = μ_d + μ_d²/θ_d.

    log p = log Γ(x+θ) − log Γ(θ) − log x! + θ log(θ/(θ+μ)) + x log(μ/(θ+μ)) nats (Lopez et al.
    2018, Methods, the NB of scVI; Pyro's ``NegativeBinomial(θ, logits=log μ − log θ)``).
    """

    summary = "over-dispersed counts"

    def forward(self, params: torch.Tensor, x: torch.Tensor | None = None):
        return dist.NegativeBinomial(self.log_theta.exp(),
                                     logits=self._nb_logits(params, x)).to_event(1)


@register_likelihood("zinb")
class ZINBLikelihood(_Dispersed):
    """Zero-inflated negative binomial: x_d = 0 with probability π_d(z), else NB(μ_d, θ_d).

    p(x_d) = π_d 1[x_d = 0] + (1 − π_d) NB(x_d; μ_d, θ_d), the scVI likelihood (Lopez et al.
    2018, Methods, eq. for ZINB); the decoder gives the mean and the dropout logit of each
    feature, θ_d is learned per feature. Pyro's ``ZeroInflatedNegativeBinomial``.
    """

    summary = "zero-inflated counts, as scVI"
    params_per_dim = 2

    def forward(self, params: torch.Tensor, x: torch.Tensor | None = None):
        return dist.ZeroInflatedNegativeBinomial(
            self.log_theta.exp(), logits=self._nb_logits(params, x),
            gate_logits=params[..., 1]).to_event(1)

    def mean(self, params: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(-params[..., 1]) * self.log_rate(params, x).exp()


@register_likelihood("binomial")
class BinomialLikelihood(_MeanStart):
    """x_d ~ Binomial(n, σ(f_d(z))) for bounded counts 0…n, e.g. 8-bit grey levels with
    n = 255 (uint8 data are read as levels 0–255, not scaled).

    log p(x|z) = Σ_d log C(n, x_d) + x_d log p_d + (n − x_d) log(1 − p_d) nats; −log p(x)
    converts to bits/dim as −log p(x) / (D ln 2).
    """

    summary = "bounded counts 0..n"
    counts = True
    discrete = True
    trials = Option(int, 255, "Number of trials n of the binomial likelihood: the largest "
                    "count (255 for 8-bit levels).", positive_int, flag="binomial-trials")

    def __init__(self, trials: int = 255):
        super().__init__()
        self.trials = int(trials)

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return _logit_of_mean(x, self.trials)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Binomial(self.trials, logits=self.shifted(params)).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.trials * torch.sigmoid(self.shifted(params))

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.trials

    @property
    def picture_max(self) -> float:
        return float(self.trials)

    def check_support(self, x: torch.Tensor, what: str, binarize: str | None) -> None:
        _check_counts(x, what, "binomial")
        if bool((x > self.trials).any()):
            raise DataError(f"{what} holds counts up to {float(x.max()):g} but the binomial "
                            f"likelihood has {self.trials} trials; raise --binomial-trials")


def _check_counts(x: torch.Tensor, what: str, name: str) -> None:
    if bool((x < 0).any()):
        raise DataError(f"{what} holds {int((x < 0).sum())} negative values but the {name} "
                        "likelihood scores counts ≥ 0; give counts or use --likelihood normal")
    if bool((x != torch.round(x)).any()):
        raise DataError(f"{what} holds values that are not whole numbers, but the {name} "
                        "likelihood scores counts; give integer counts or use --likelihood "
                        "normal for measurements")


def _check_unit_interval(x: torch.Tensor, what: str, name: str) -> None:
    if bool((x < 0).any()) or bool((x > 1).any()):
        lo, hi = float(x.min()), float(x.max())
        raise DataError(
            f"{what} has values in [{lo:g}, {hi:g}] but the {name} likelihood needs grey "
            "levels in [0, 1] (or uint8 0-255); rescale the data or use --likelihood normal"
        )
