"""Evaluation as papers report it: −ELBO, importance-sampled log-likelihood, bits per dimension,
reconstruction and KL terms, active units and KL per latent dimension.

The log-likelihood of each image is estimated with K importance samples from the guide,

    log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x)

(Burda, Grosse & Salakhutdinov 2016, eq. 8), a lower bound that tightens as K grows. The
weights come from Pyro traces of the model and guide under a plate over samples, and are
combined per image with a running log-sum-exp over chunks of samples, so memory depends on the
chunk, not on K.
"""

from __future__ import annotations

import math
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from tqdm.auto import tqdm

from ..config import data_unit
from ..errors import ConfigError, DataError
from ..devices import resolve_device
from ..io.checkpoint import load_run, read_weights
from ..io.data import as_float, eval_data, known_factors, validation_share
from ..model import VAE
from .disentanglement import mutual_information_gap

#: Unit u is active when Cov_x(E_q[z_u|x]) exceeds this (Burda et al. 2016, §5.2).
ACTIVE_UNIT_THRESHOLD = 0.01
#: Float budget of one chunk of samples × images × likelihood parameters (256 MiB of float32).
_CHUNK_ELEMENTS = 2**26


def gaussian_proposal(vae: VAE, scale: float):
    """q(z|x) = N(f(x), scale² I) around a point-mass guide's code f(x), as a Pyro guide.

    A point mass has no density away from f(x), so it cannot be an importance proposal; this
    Gaussian can, and any proposal keeps the estimate a lower bound on log p(x).
    """

    def proposal(x: torch.Tensor, kl_weight=None, y: torch.Tensor | None = None,
                 num: int | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            code = vae.encode(x, y)[0]
            return pyro.sample("z", dist.Normal(code, scale).to_event(1))

    return proposal


@torch.no_grad()
def log_importance_weights(vae: VAE, x: torch.Tensor, num_samples: int, proposal=None,
                           y: torch.Tensor | None = None):
    """K importance samples per image from the guide (or ``proposal``), vectorised.

    Parameters
    ----------
    vae : VAE
        Scored in evaluation mode (the plain model and guide).
    x : Tensor
        (batch, D) data, binarised where the likelihood needs it.
    num_samples : int
        K.
    proposal : callable, optional
        A Pyro guide to sample z from instead of ``vae.guide``.
    y : Tensor, optional
        The conditions of a conditional model (labels (batch,) or covariates (batch, C)),
        given to model and guide. For the semi-supervised model they are classes scored by
        p(y) too: the weights are then of p(x, y, z)/q(z|x, y).

    Returns
    -------
    log_w, log_lik, z : Tensor
        log p(x, z_k) − log q(z_k|x) and log p(x|z_k), each (K, batch), and z (K, batch, z_dim).

    Raises
    ------
    ConfigError
        For the semi-supervised model without ``y``: its weights are per class; sum them over
        the classes with :func:`evaluate` (or give each class as ``y``).
    """
    if vae.semi_supervised and y is None:
        raise ConfigError("the semi-supervised model's importance weights are per class: give "
                          "y (each class in turn), or use evaluate(), which sums the class out")
    log_w, log_lik, sites = importance_terms(vae, x, num_samples, proposal, y)
    return log_w, log_lik, sites["z"][0]


@torch.no_grad()
def importance_terms(vae: VAE, x: torch.Tensor, num_samples: int, proposal=None,
                     y: torch.Tensor | None = None):
    """:func:`log_importance_weights` with every latent site's share: returns ``log_w``,
    ``log_lik`` (each (K, batch)) and ``{site: (z, log q − log p, q)}`` for each of
    :attr:`VAE.latent_sites` (z (K, batch, d), the KL term's sample (K, batch), nats, and the
    guide's distribution of the site), so that log w = log p(x|z) − Σ_sites (log q − log p)
    (+ log p(y) for a given class)."""
    vae.eval()
    guide = proposal or vae.guide
    args = (x,) if y is None else (x, None, y)
    with pyro.plate("samples", num_samples, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(*args)
    log_lik = model_trace.nodes["x"]["fn"].log_prob(model_trace.nodes["x"]["value"])
    log_w = log_lik
    sites = {}
    for name in vae.latent_sites:
        z = guide_trace.nodes[name]["value"]
        kl = guide_trace.nodes[name]["fn"].log_prob(z) - model_trace.nodes[name]["fn"].log_prob(z)
        sites[name] = (z, kl, guide_trace.nodes[name]["fn"])
        log_w = log_w - kl
    if "y" in model_trace.nodes:  # the semi-supervised model's class, given: log p(y)
        site = model_trace.nodes["y"]
        log_w = log_w + site["fn"].log_prob(site["value"])
    return log_w, log_lik, sites


def default_chunk(vae: VAE, batch: int, input_dim: int) -> int:
    """Samples per chunk so that one chunk of likelihood parameters (batch, D, k) fits
    :data:`_CHUNK_ELEMENTS`."""
    per_sample = batch * input_dim * vae.likelihood.params_per_dim
    return max(1, _CHUNK_ELEMENTS // per_sample)


@torch.no_grad()
def evaluate(
    vae: VAE,
    x: torch.Tensor,
    iwae_samples: int = 1000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    proposal_scale: float | None = None,
    progress: bool = True,
    y: torch.Tensor | None = None,
) -> dict:
    """Held-out figures of a trained VAE on data ``x`` (N, D), in nats per image.

    Parameters
    ----------
    iwae_samples : int
        K importance samples per image.
    batch_size : int
        Images per pass.
    chunk_size : int, optional
        Samples per pass; by default as many as fit a fixed memory budget.
    proposal_scale : float, optional
        For a point-mass guide, the scale of the Gaussian proposal around its code
        (:func:`gaussian_proposal`); required there, refused elsewhere.
    y : Tensor, optional
        The conditions of a conditional model (N labels or (N, C) covariates): the figures are
        then of p(x|y). For the semi-supervised model, labels are optional and only scored
        against its classifier (``accuracy``): its figures are of p(x), the class summed out.

    Returns
    -------
    dict
        ``neg_elbo`` (−ELBO, the mean of −log w over the K samples), ``nll`` and ``nll_stderr``
        (−log p(x) by importance sampling, and its standard error over images),
        ``bits_per_dim`` (nll / (D ln 2), for discrete likelihoods, else None),
        ``reconstruction`` (−E_q log p(x|z)), ``kl`` (neg_elbo − reconstruction),
        ``active_units`` and ``kl_per_dim`` (a list, or None where q or p(z) do not factorise),
        ``iwae_samples``, ``num_images``, ``nll_per_image`` (a tensor of N values), and for
        the semi-supervised model ``accuracy`` (None without labels).

        For a hierarchical model (:class:`~pyro_vae.hierarchical.HierarchicalVAE`) the weights
        are over every layer, p(x, z_1, …, z_L)/q(z_1, …, z_L|x); ``active_units`` counts the
        units of all layers, and ``layer_dims``, ``active_units_per_layer`` and
        ``kl_per_layer`` (E_q[log q(z_l|z_{l−1}) − log p(z_l|z_{l+1})], nats per image, from
        the importance samples; they add up to ``kl``) give them per layer, bottom first.
        E[z_l|x] of the layers above z_1 is the mean over the K samples of E_q[z_l|z_{l−1}].

        For the semi-supervised model each image is scored under each of its C classes, with
        S = ``iwae_samples`` importance samples of q(z|x, y) each: log p(x) ≈
        log Σ_y p(y) (1/S) Σ_s p(x, z_s|y) / q(z_s|x, y), a bound that sums y out exactly;
        the −ELBO is U(x) of Kingma et al. (2014, eq. 7, whose bound is −U(x)),
        −Σ_y q(y|x) ELBO(x, y) − H(q(y|x));
        E[z|x] (for active units) and the KL per dimension are averages over q(y|x). It costs
        K times a model without y (K classes).

    Raises
    ------
    ConfigError
        For a point-mass guide without ``proposal_scale``, a proposal scale with another guide,
        or a flat prior (p(x) is not defined).
    DataError
        For non-finite data or values the likelihood cannot score (a binarising Bernoulli model
        needs the binary draw, as :func:`pyro_vae.io.data.eval_data` returns it).
    """
    delta = _check_evaluable(vae, x, proposal_scale)
    vae.eval()
    proposal = gaussian_proposal(vae, proposal_scale) if delta else None
    chunk = chunk_size or default_chunk(vae, batch_size, x.shape[-1])
    kl_dims = _KLPerDim(vae)
    layers = _Layers(vae)
    parts = []
    batches = tqdm(range(0, x.shape[0], batch_size), desc="evaluate", unit="batch",
                   disable=None if progress else True, leave=False)
    for start in batches:
        xb = x[start : start + batch_size]
        yb = y[start : start + batch_size] if y is not None else None
        if vae.semi_supervised:
            parts.append(_summed_over_classes(vae, xb, iwae_samples, chunk, proposal, kl_dims))
        else:
            parts.append(_evaluate_batch(vae, xb, iwae_samples, chunk, proposal, yb, kl_dims,
                                         layers=layers))
    log_px, log_w, log_lik, means = (torch.cat(t) for t in zip(*parts))
    nll = -log_px
    n_img, d = x.shape[0], x.shape[-1]
    result = {
        "neg_elbo": -float(log_w.mean()),
        "nll": float(nll.mean()),
        "nll_stderr": float(nll.std() / math.sqrt(n_img)) if n_img > 1 else float("nan"),
        "bits_per_dim": float(nll.mean()) / (d * math.log(2)) if vae.likelihood.discrete else None,
        "reconstruction": -float(log_lik.mean()),
        "kl": float(log_lik.mean() - log_w.mean()),
        "active_units": active_units(means),
        "kl_per_dim": kl_dims.result(),
        "iwae_samples": iwae_samples,
        "num_images": n_img,
        "nll_per_image": nll.cpu(),
    }
    if vae.hierarchical:
        result.update(layers.result(means))
        result["active_units"] = sum(result["active_units_per_layer"])
    if vae.semi_supervised:
        result["accuracy"] = classifier_accuracy(vae, x, y) if y is not None else None
    return result


@torch.no_grad()
def classifier_accuracy(vae: VAE, x: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 1000) -> float:
    """The share of the images ``x`` (N, D; float values, or rows as
    :class:`~pyro_vae.io.data.Data` stores them) whose most probable class under q(y|x) is
    their label (``labels`` (N,))."""
    device = next(vae.parameters()).device
    predicted = torch.cat([vae.classify(as_float(xb).to(device)).argmax(-1)
                           for xb in x.split(batch_size)])
    return float((predicted == labels.to(device)).float().mean()) if x.shape[0] else 0.0


#: Images on which the KL decomposition of ``metrics.csv`` is estimated.
KL_TERMS_IMAGES = 1000


@torch.no_grad()
def kl_terms(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
             chunk: int = 250) -> dict[str, float] | None:
    """The decomposition of the KL term of Chen et al. (2018, eq. 2) on the images ``x``
    (N, D), nats per image: ``mi`` (index-code mutual information), ``tc`` (total
    correlation), ``dim_kl`` (dimension-wise KL), adding up to the sampled KL term; ``y`` the
    conditions of a conditional model. The aggregate posterior is that of these N images,
    summed exactly (:func:`~pyro_vae.parts.objectives.kl_decomposition` with the batch = the
    set), at one sample of z per image, the samples taken ``chunk`` images at a time against
    all N. None for a model whose guide or prior does not factorise over the latent
    dimensions, for the semi-supervised model (its class is summed out) and for hierarchical
    models (the prior of z_1 is p(z_1|z_2), not one distribution).
    """
    from ..parts.objectives import kl_decomposition

    if vae.semi_supervised or vae.hierarchical or x.shape[0] < 2:
        return None
    device = next(vae.parameters()).device
    x = as_float(x).to(device)
    given = {} if y is None else {"y": y.to(device)}
    guide = poutine.trace(vae.guide).get_trace(x, **given)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, **given)
    q, p, z = guide.nodes["z"]["fn"], model.nodes["z"]["fn"], guide.nodes["z"]["value"]
    totals = {"mi": 0.0, "tc": 0.0, "dim_kl": 0.0}
    n = x.shape[0]
    try:
        for start in range(0, n, chunk):
            terms = kl_decomposition(q, p, z, slice(start, min(n, start + chunk)))
            for key in totals:
                totals[key] += float(terms[key].sum())
    except (ConfigError, RuntimeError, ValueError):  # a guide or prior of yours that does not
        return None                                  # split into per-dimension factors
    return {key: value / n for key, value in totals.items()}


def _check_evaluable(vae: VAE, x: torch.Tensor, proposal_scale: float | None) -> bool:
    """Refuse what :func:`evaluate` cannot score; returns whether a proposal is needed."""
    delta = not vae.family.has_density
    if not vae.prior.proper:
        raise ConfigError(
            f"p(x) is not defined under the flat prior (--prior {vae.prior.name}), so there is "
            "no log-likelihood to estimate; evaluate a model with a proper prior"
        )
    if delta and proposal_scale is None:
        raise ConfigError(
            f"a point-mass guide (--guide {vae.family.name}) has no density, so it cannot be an "
            "importance proposal; give --proposal-scale S to sample from N(f(x), S²I) instead"
        )
    if not delta and proposal_scale is not None:
        raise ConfigError("--proposal-scale is for point-mass guides (--guide delta) only")
    # The data are checked once here, so Pyro's checks of every chunk's values can be skipped.
    what = "the data to evaluate"
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{what} contain NaN or infinite values; remove or impute them first")
    vae.likelihood.check_support(x, what, "none" if vae.likelihood.binary else None)
    return delta


def _evaluate_batch(vae, xb, iwae_samples, chunk, proposal, yb, kl_dims, weight=None,
                    layers=None):
    """Per image of one batch (B images, conditions ``yb``): log p̂(x) by a running
    log-sum-exp over chunks of samples, the mean over samples of log w and of log p(x|z),
    and E_q[z|x] (B, z_dim): the location for Gaussian and point-mass guides, a sample mean for
    flows. Adds the batch's KL per dimension to ``kl_dims``, each image counted with
    ``weight`` (B,) (default 1)."""
    running = torch.full((xb.shape[0],), -math.inf, device=xb.device)
    sum_w = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
    sum_lik = torch.zeros_like(sum_w)
    exact = vae.family.exact_mean
    sum_z = torch.zeros(xb.shape[0], vae.z_dim, device=xb.device)
    for k in range(0, iwae_samples, chunk):
        n = min(chunk, iwae_samples - k)
        with pyro.validation_enabled(False):
            log_w, log_lik, sites = importance_terms(vae, xb, n, proposal, yb)
        z = sites["z"][0]
        if layers is not None:
            layers.add(sites)
        running = torch.logaddexp(running, log_w.logsumexp(0))
        sum_w += log_w.sum(0)
        sum_lik += log_lik.sum(0)
        if not exact:
            sum_z += z.sum(0)
        kl_dims.add(xb, z, yb, weight)
    mean = vae.encode(xb, yb)[0] if exact else sum_z / iwae_samples
    if layers is not None:
        layers.end_batch(iwae_samples)
    return (running - math.log(iwae_samples), sum_w / iwae_samples, sum_lik / iwae_samples,
            mean)


def _summed_over_classes(vae, xb, iwae_samples, chunk, proposal, kl_dims):
    """:func:`_evaluate_batch` of the semi-supervised model, its class summed out: each of the
    K classes scored with its own samples of q(z|x, y), combined as :func:`evaluate` says."""
    q_y = vae.classify(xb)  # (B, K)
    per_class = []
    for k in range(vae.num_classes):
        yb = torch.full((xb.shape[0],), k, dtype=torch.int64, device=xb.device)
        per_class.append(_evaluate_batch(vae, xb, iwae_samples, chunk, proposal, yb, kl_dims,
                                         weight=q_y[:, k]))
    log_px, log_w, log_lik, means = (torch.stack(t, -1) for t in zip(*per_class))
    entropy = -(q_y * q_y.clamp_min(1e-30).log()).sum(-1)
    return (log_px.logsumexp(-1), (q_y * log_w).sum(-1) + entropy, (q_y * log_lik).sum(-1),
            (means * q_y[:, None, :]).sum(-1))


def active_units(mean_codes: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Units u with Cov_x(E_q[z_u|x]) > threshold (Burda et al. 2016, §5.2).

    ``mean_codes`` is (N, z_dim), the posterior means of N images.
    """
    if mean_codes.shape[0] < 2:
        return 0
    return int((mean_codes.var(dim=0) > threshold).sum())


class _Layers:
    """Per stochastic layer of a hierarchical model, from the importance samples: E_q[z_l|x]
    of each image as the mean over the samples of E_q[z_l|z_{l−1}] (Rao-Blackwellised: the
    guide's mean given the sample below, not the sample of z_l itself, whose noise alone would
    pass the active-unit threshold at K ≈ 100), and the KL term's samples per layer. Does
    nothing for a one-layer model."""

    def __init__(self, vae: VAE):
        self.vae = vae
        self.sites = vae.latent_sites if vae.hierarchical else ()
        self.means: dict[str, list[torch.Tensor]] = {site: [] for site in self.sites}
        self.kl = {site: 0.0 for site in self.sites}
        self.count = 0
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, sites: dict) -> None:
        """One chunk: ``{site: (z (n, B, d), log q − log p (n, B), q)}``."""
        for site in self.sites:
            value, kl, q = sites[site]
            self.kl[site] += float(kl.double().sum())
            if site == "z":  # z_1's mean comes from the family (an IAF's q has no .mean)
                continue
            total = q.mean.expand(value.shape).sum(0)
            self._sums[site] = self._sums[site] + total if site in self._sums else total
        if self.sites:
            self.count += sites["z"][1].numel()

    def end_batch(self, samples: int) -> None:
        """The batch's E_q[z_l|x], the mean of its ``samples`` draws."""
        for site in self.sites[1:]:
            self.means[site].append(self._sums.pop(site) / samples)

    def result(self, bottom: torch.Tensor) -> dict:
        """``layer_dims``, ``active_units_per_layer`` (z_1's from ``bottom``, the exact
        E_q[z_1|x] (N, d_1) where the family has it) and ``kl_per_layer``."""
        codes = [bottom] + [torch.cat(self.means[site]) for site in self.sites[1:]]
        return {"layer_dims": list(self.vae.layer_dims),
                "active_units_per_layer": [active_units(c) for c in codes],
                "kl_per_layer": [self.kl[site] / max(self.count, 1) for site in self.sites]}


class _KLPerDim:
    """Accumulates E_x KL(q(z_u|x) ‖ p(z_u)) per latent unit u, in nats.

    Defined when q is a diagonal Gaussian and p(z) factorises over units (normal, laplace,
    studentt priors): in closed form where torch has it, else by Monte Carlo over the samples.
    Each chunk of n samples for B images counts with weight n·B, so both agree in expectation;
    an image given a weight w (the semi-supervised model's q(y|x) of the class scored) counts
    w times.
    """

    def __init__(self, vae: VAE):
        self.vae = vae
        prior = vae.prior()
        factorised = (isinstance(prior, dist.Independent) and prior.base_dist.event_shape == ()
                      and not vae.hierarchical)  # p(z_1|z_2) is no fixed prior
        gaussian = vae.family.gaussian
        self.units = prior.base_dist if factorised and gaussian else None
        self.total = torch.zeros(vae.z_dim, device=next(vae.buffers()).device)
        self.count = 0.0
        self._key, self._kl = None, None
        if self.units is not None:
            try:
                kl_divergence(dist.Normal(0.0, 1.0), self.units)
                self.analytic = True
            except NotImplementedError:
                self.analytic = False

    def add(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None,
            weight: torch.Tensor | None = None) -> None:
        """One chunk: images ``x`` (B, D), their conditions ``y`` and samples ``z``
        (n, B, z_dim), each image counted with ``weight`` (B,)."""
        if self.units is None:
            return
        n = z.shape[0]
        weight = torch.ones(x.shape[0], device=z.device) if weight is None else weight
        if self.analytic:  # the same for every chunk of one batch: computed once per batch
            if self._key is None or self._key[0] is not x or self._key[1] is not y:
                self._key = (x, y)
                self._kl = kl_divergence(dist.Normal(*self.vae.encode(x, y)), self.units)
            self.total += (self._kl * weight[:, None]).sum(0) * n
        else:
            q = dist.Normal(*self.vae.encode(x, y))
            self.total += ((q.log_prob(z) - self.units.log_prob(z)) * weight[:, None]).sum((0, 1))
        self.count += n * float(weight.sum())

    def result(self) -> list[float] | None:
        if self.units is None or self.count == 0:
            return None
        return (self.total / self.count).tolist()


def evaluate_run(run_dir, dataset: str | None = None, limit: int | None = None,
                 iwae_samples: int = 1000, batch_size: int = 100,
                 proposal_scale: float | None = None, seed: int = 0, device: str = "auto",
                 progress: bool = True, model: VAE | None = None) -> dict:
    """:func:`evaluate` of the run in ``run_dir`` on its test set (or ``dataset``), as
    ``pyro-vae evaluate`` reports it: the figures plus ``dataset`` (a description) and
    ``seconds``, without the per-image values.

    ``model`` is the VAE of a user-built run, built again (see :func:`pyro_vae.load`).

    Raises
    ------
    RunDirError, CheckpointError, DataError, ConfigError
        As :func:`pyro_vae.load`, :func:`pyro_vae.io.data.eval_data` and
        :func:`evaluate`.
    """

    device = resolve_device(device)
    vae, config = load_run(run_dir, device, model)
    held = eval_data(config, dataset, limit)
    y = held.conditions(config.model.condition)
    pyro.set_rng_seed(seed)
    started = time.perf_counter()
    result = evaluate(vae, held.x.to(device), iwae_samples=iwae_samples, batch_size=batch_size,
                      proposal_scale=proposal_scale, progress=progress,
                      y=y.to(device) if y is not None else None)
    result.pop("nll_per_image")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        terms = kl_terms(vae, held.x[:KL_TERMS_IMAGES],
                         y[:KL_TERMS_IMAGES] if y is not None else None)
    if terms is not None:
        result["kl_terms"] = terms
    # The factors go with the rows of the shapes test split only (not a --test-dataset of yours).
    own_split = dataset is None and config.data.test_dataset is None
    known = known_factors("shapes") if dataset == "shapes" or (
        own_split and config.data.dataset == "shapes") else None
    if known is not None:
        values, names = known
        values = values[:limit] if limit is not None else values
    if known is not None and vae.z_dim >= 2 and len(values) == held.x.shape[0] >= 2:
        codes = torch.cat([vae.encode(xb.to(device), yb if yb is None else yb.to(device))[0]
                           .cpu() for xb, yb in _batches(held.x, y, 1000)])
        mig = mutual_information_gap(codes, values)
        result["mig"] = mig["mig"]
        result["mig_per_factor"] = dict(zip(names, mig["per_factor"]))
    result["dataset"] = held.source
    result["condition"] = config.model.condition
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["z_dim"] = vae.z_dim
    result["unit"] = data_unit(config.model.data_shape)
    weights = read_weights(run_dir)
    if weights is not None and "epoch" in weights[1]:  # the kept model's epoch
        result["epoch"] = int(weights[1]["epoch"])
        result["kept_by"] = ("lowest validation -ELBO" if config.data.validation_dataset
                             or validation_share(config) else "last epoch")
    return result


def _batches(x: torch.Tensor, y: torch.Tensor | None, size: int):
    """(x, y) in batches of ``size`` rows, y None throughout where it is None."""
    for start in range(0, x.shape[0], size):
        yield x[start:start + size], (y[start:start + size] if y is not None else None)


def summary_lines(result: dict) -> list[str]:
    """The figures of :func:`evaluate_run` as aligned lines of text, in nats per image (per
    row for tables and other vectors: ``result["unit"]``)."""
    bits, kl = result["bits_per_dim"], result["kl_per_dim"]
    unit = result.get("unit", "image")
    of = {None: "", "label": " given the label"}.get(result.get("condition"),
                                                     " given the covariates")
    if "accuracy" in result:  # the semi-supervised model sums its class out
        of = ", class summed out"
    lines = [
        f"{unit + 's':<18}{result['num_images']} ({result['dataset']})",
        *([f"model             epoch {result['epoch']} ({result['kept_by']})"]
          if "epoch" in result else []),
        f"-ELBO             {result['neg_elbo']:.2f} nats/{unit} "
        f"(reconstruction {result['reconstruction']:.2f} + KL {result['kl']:.2f})",
        f"NLL               {result['nll']:.2f} ± {result['nll_stderr']:.2f} nats/{unit} "
        f"(importance sampled, K = {result['iwae_samples']}{of})",
        f"bits/dim          {bits:.4f}" if bits is not None else
        "bits/dim          - (continuous likelihood: a density, not bits)",
        f"active units      {result['active_units']} of "
        f"{sum(result.get('layer_dims') or [result['z_dim']])} (Cov_x E[z_u|x] > 0.01)"
        + ("; per layer, bottom up: " + ", ".join(
            f"{a} of {d}" for a, d in zip(result["active_units_per_layer"],
                                          result["layer_dims"])) if "layer_dims" in result
           else ""),
        "KL per dim        " + (" ".join(f"{v:.2f}" for v in kl) if kl is not None else
                                "- (per layer below: z_1's prior is p(z_1|z_2))"
                                if "kl_per_layer" in result else
                                "- (needs a Gaussian guide and a factorised prior)"),
    ]
    if "kl_per_layer" in result:
        lines.append("KL per layer      " + " + ".join(f"{v:.2f}" for v in
                                                    result["kl_per_layer"])
                     + f" nats/{unit} (z_1 up to z_{len(result['kl_per_layer'])})")
    if "kl_terms" in result:
        t = result["kl_terms"]
        lines.append(f"KL terms          MI {t['mi']:.2f} + TC {t['tc']:.2f} + dim-KL "
                     f"{t['dim_kl']:.2f} nats/{unit} (Chen et al. 2018; first "
                     f"{min(result['num_images'], KL_TERMS_IMAGES)})")
    if "mig" in result:
        each = ", ".join(f"{k} {v:.2f}" for k, v in result["mig_per_factor"].items())
        lines.append(f"MIG               {result['mig']:.3f} ({each})")
    if "accuracy" in result:
        accuracy = result["accuracy"]
        lines.append("accuracy          " + (f"{accuracy:.4f} (classifier q(y|x), most probable "
                                             "class)" if accuracy is not None else
                                             "- (the data have no labels)"))
    return lines


def encode_run(run_dir, dataset: str, limit: int | None = None, device: str = "auto",
               model: VAE | None = None) -> tuple[dict, str]:
    """Posterior locations and scales of q(z|x) for the images of ``dataset``, binarised as
    the run's test set was.

    For a conditional model these are of q(z|x, y), y the data's labels or covariates: codes
    with the condition's effect taken out, since the decoder receives y beside z. For the
    semi-supervised model y is the classifier's most probable class, and ``probs`` (N, K)
    holds q(y|x). For a hierarchical model ``loc`` and ``scale`` are z_1's, and ``loc_z2``,
    ``scale_z2`` (N, d_2), … those of the upper layers along the guide's mean path
    (:meth:`~pyro_vae.hierarchical.HierarchicalVAE.encode_layers`).

    Returns ``({"loc": (N, z_dim), "scale": (N, z_dim)[, "loc_z2": (N, d_2), "scale_z2": …]
    [, "labels": (N,)][, "probs": (N, K)]}, source)`` as NumPy arrays and a description of the
    data.

    Raises
    ------
    RunDirError, CheckpointError, DataError
        As :func:`pyro_vae.load` and :func:`pyro_vae.io.data.eval_data`.
    """

    device = resolve_device(device)
    from ..hierarchical import HierarchicalVAE

    vae, config = load_run(run_dir, device, model)
    held = eval_data(config, dataset, limit)
    y = None if vae.semi_supervised else held.conditions(config.model.condition)
    x = held.x
    rows = range(0, x.shape[0], 1000)
    # A hierarchical model's layers come from one pass up the guide, z_1's first; a user's
    # model of several sites has no such codes. (Hierarchical models take no condition.)
    layered = isinstance(vae, HierarchicalVAE)
    chunks = [vae.encode_layers(x[i : i + 1000].to(device)) if layered else
              {"z": vae.encode(x[i : i + 1000].to(device),
                               y[i : i + 1000].to(device) if y is not None else None)}
              for i in rows]
    codes = {}
    for site in vae.latent_sites if layered else ["z"]:
        name = "" if site == "z" else f"_{site}"
        codes[f"loc{name}"] = torch.cat([c[site][0] for c in chunks]).cpu().numpy()
        codes[f"scale{name}"] = torch.cat([c[site][1] for c in chunks]).cpu().numpy()
    if held.labels is not None:
        codes["labels"] = held.labels.numpy()
    if vae.semi_supervised:
        codes["probs"] = torch.cat([vae.classify(x[i : i + 1000].to(device))
                                    for i in rows]).cpu().numpy()
    return codes, held.source
