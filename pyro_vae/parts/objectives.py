"""Objectives: Pyro's ELBO estimators, chosen with ``--elbo`` and ``--particles``.

- ``trace``: ``Trace_ELBO``, the Monte Carlo ELBO (1/R) Σ_r [log p(x, z_r) − log q(z_r|x)]
  over R reparameterised samples (Kingma & Welling 2014, eq. 6).
- ``meanfield``: ``TraceMeanField_ELBO``, the same with KL(q‖p) in closed form wherever one is
  registered (Kingma & Welling 2014, eq. 7); other sites fall back to sampling.
- ``iwae``: ``RenyiELBO(alpha=0)``, the importance-weighted bound
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) per data point (Burda, Grosse & Salakhutdinov 2016, eq. 8).
- ``iwae-dreg``: the same bound with the doubly-reparameterised gradient of Tucker, Lawson, Gu
  & Maddison (2019, eq. 5 and 7) for the guide (:class:`DReGIWAE_ELBO`), whose signal-to-noise
  ratio grows with K where plain IWAE's falls (Rainforth et al. 2018).

Particles are vectorised: the model and guide run once on a leading particle dimension.

Models with a discrete latent site (the class y of the semi-supervised model) are trained with
the objective's enumerated form, where it has one: ``trace`` becomes ``TraceEnum_ELBO``, which
sums the site out exactly over its values in parallel instead of sampling it (Kingma et al.
2014, eq. 7; the guide marks the site ``infer={"enumerate": "parallel"}``).

- ``tc``: β-TCVAE (Chen, Li, Grosse & Duvenaud 2018, eq. 2 and 4), the ELBO with the total
  correlation of the aggregate posterior weighted by ``--beta`` (:class:`TCTrace_ELBO`).

Free bits (``--free-bits λ``; Kingma et al. 2016, §C.8 "free bits"): ``trace`` and
``meanfield`` become :class:`FreeBitsTrace_ELBO` and :class:`FreeBitsTraceMeanField_ELBO`, the
same estimators with each latent dimension's KL term, averaged over the batch, counted as at
least λ nats.

Compiled objective: ``build_elbo(config, jit=True)`` gives, under ``--compiler torchscript``
(the default), Pyro's ``JitTrace_ELBO``, which traces the model, the guide and the loss once
with ``torch.jit.trace`` and then replays the recorded graph, without Pyro's per-step Python
work; under ``--compiler inductor``, :class:`InductorTrace_ELBO`, which records the same loss
with ``make_fx`` and compiles it with ``torch.compile``. The loss is still Pyro's ELBO of the
same model and guide, with the same numbers (to float tolerance under Inductor). Each
objective is a part registered with :func:`~pyro_vae.registry.register_objective`.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import (ELBO, JitTrace_ELBO, JitTraceEnum_ELBO, RenyiELBO, Trace_ELBO,
                        TraceEnum_ELBO, TraceMeanField_ELBO)
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.util import prune_subsample_sites

from ..errors import ConfigError
from ..registry import OBJECTIVES, Part, register_objective


class Objective(Part):
    """Base class: a Pyro ELBO estimator, configured by its constructor as Pyro's are.

    Capabilities: ``has_kl_term`` (β and KL warm-up reweight a KL term), ``needs_density``
    (the guide must have a density), ``needs_gaussian_guide`` (q(z|x) a diagonal Gaussian whose
    parameters the estimator can stop), ``min_particles``, ``analytic_kl`` (KL terms in closed
    form where torch has them), ``data_parallel`` (a differentiable loss that
    DistributedDataParallel can average), ``enumerates`` (:meth:`enumerated` gives a form that
    sums discrete sites out), and :meth:`compiled`.
    """

    has_kl_term: bool = True
    needs_density: bool = False
    needs_gaussian_guide: bool = False
    #: Why it needs a diagonal Gaussian guide, and the objective to use instead, for the
    #: refusal.
    gaussian_reason: str = ""
    fallback: str = "trace"
    needs_factorised_prior: bool = False
    #: A term estimated over the whole batch (β-TCVAE's aggregate posterior), which a batch
    #: split over torchrun processes would change.
    batch_statistic: bool = False
    #: ``--beta`` weighs a term of the objective's own (β-TCVAE's total correlation) instead of
    #: scaling the KL term of the model and guide.
    own_beta: bool = False
    min_particles: tuple[int, str] = (1, "")
    analytic_kl: bool = False
    data_parallel: bool = True
    enumerates: bool = False
    #: Written for a guide with one latent site (refused for ``--latent-layers`` ≥ 2, as is
    #: ``analytic_kl``), why, and the objective to use there instead.
    one_latent_site: bool = False
    one_site_reason: str = ("takes each site's KL term in closed form, which is right for a "
                            "mean-field guide only, not for layers whose guide reads the layer "
                            "below")
    layers_fallback: str = "trace"
    #: With several latent sites it runs the model and guide a second time, replayed at the
    #: same draws (DReG), so the guide may draw nothing outside its sample sites.
    replays_layers: bool = False

    def estimator(self, **kwargs) -> ELBO:  # pragma: no cover - abstract
        """The Pyro ELBO, with Pyro's keyword arguments (``num_particles`` …)."""
        raise NotImplementedError

    def compiled(self, **kwargs) -> ELBO | None:
        """Its compiled form (traced once per batch size), or None when Pyro has none."""
        return None

    def enumerated(self, **kwargs) -> ELBO | None:
        """Its form for models with enumerated discrete sites, or None when Pyro has none."""
        return None

    def compiled_enumerated(self, **kwargs) -> ELBO | None:
        """The compiled form of :meth:`enumerated`, or None."""
        return None


@register_objective("trace")
class TraceObjective(Objective):
    """``Trace_ELBO``: the Monte Carlo ELBO (Kingma & Welling 2014, eq. 6)."""

    def estimator(self, **kwargs) -> ELBO:
        return Trace_ELBO(**kwargs)

    enumerates = True

    def compiled(self, **kwargs) -> ELBO:
        return JitTrace_ELBO(ignore_jit_warnings=True, **kwargs)

    def enumerated(self, **kwargs) -> ELBO:
        return TraceEnum_ELBO(**kwargs)

    def compiled_enumerated(self, **kwargs) -> ELBO:
        return JitTraceEnum_ELBO(ignore_jit_warnings=True, **kwargs)


@register_objective("meanfield")
class MeanFieldObjective(Objective):
    """``TraceMeanField_ELBO``: closed-form KL(q‖p) where registered (Kingma & Welling 2014,
    eq. 7). Not compiled: in pyro 1.9 ``JitTraceMeanField_ELBO`` checks for a cached trace under
    one attribute name and stores it under another, so it traces again on every call."""

    analytic_kl = True

    def estimator(self, **kwargs) -> ELBO:
        return TraceMeanField_ELBO(**kwargs)


@register_objective("iwae")
class IWAEObjective(Objective):
    """``RenyiELBO(alpha=0)``, the IWAE bound (Burda, Grosse & Salakhutdinov 2016, eq. 8)."""

    has_kl_term = False
    needs_density = True
    min_particles = (2, "with one particle is the ordinary ELBO")
    data_parallel = False  # RenyiELBO has no differentiable_loss in pyro 1.9

    def estimator(self, **kwargs) -> ELBO:
        return RenyiELBO(alpha=0.0, **kwargs)


@register_objective("iwae-dreg")
class DReGObjective(IWAEObjective):
    """The IWAE bound with doubly-reparameterised gradients (Tucker et al. 2019), for a
    diagonal Gaussian guide: :class:`DReGIWAE_ELBO`."""

    needs_gaussian_guide = True
    gaussian_reason = "stops the gradient through q's parameters, which it can"
    fallback = "iwae"
    replays_layers = True
    layers_fallback = "iwae"

    def estimator(self, **kwargs) -> ELBO:
        return DReGIWAE_ELBO(**kwargs)


class DReGIWAE_ELBO(RenyiELBO):
    """The IWAE bound of Burda et al. (2016, eq. 8) with the doubly-reparameterised gradient
    estimator (DReG) of Tucker, Lawson, Gu & Maddison (2019), as a Pyro ELBO.

    Its value (:meth:`loss`) is ``RenyiELBO(alpha=0)``'s, −Σ_n log (1/K) Σ_k w_nk with
    w_nk = p(x_n, z_nk)/q(z_nk|x_n), in nats summed over the batch. Its gradient differs for the
    guide's parameters φ only. With w̃_nk = w_nk / Σ_j w_nj, plain IWAE uses
    Σ_k w̃_k ∇_φ log w_k, whose score-function part ∂log q/∂φ makes its signal-to-noise ratio
    fall as O(1/√K) (Rainforth et al. 2018, Theorem 1). DReG rewrites that part by a second
    reparameterisation (Tucker et al. 2019, eq. 5 and 7), which gives

        ∇_φ = Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ,   log w_k with q's parameters stopped,
        ∇_θ = Σ_k w̃_k ∇_θ log w_k                (the model's, as IWAE's),

    unbiased for the same gradient of E[bound]; at the exact posterior every w_k is p(x) and
    the guide's gradient is exactly zero. For a guide with one latent site it is computed in
    one pass: the surrogate Σ_k w̃_k log w_k (w̃ held constant) with q's density parameters
    detached, and a gradient hook on each reparameterised sample z_k that multiplies what
    reaches it by w̃_k. For several sites, whose parameters depend on the draws before them
    (a hierarchical guide), a second pass of the model and guide at the stopped draws gives
    the same estimator (:meth:`_stopped_pass`).

    Each guide site must be reparameterised and a (possibly ``Independent``) distribution whose
    parameters can be detached, such as the diagonal Gaussian ``Normal(loc, scale)``; a
    flow's parameters live in its transforms and cannot (``--guide iaf`` is refused).
    Keyword arguments are RenyiELBO's, without ``alpha``.

    Raises
    ------
    ConfigError
        At the first step, for a guide site that is not reparameterised or whose distribution
        has no parameters to stop.
    """

    def __init__(self, **kwargs):
        super().__init__(alpha=0.0, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−bound, whose gradient is the DReG estimator: a 0-d tensor (nats, summed over the
        batch)."""
        log_weights, surrogates, samples = [], [], []
        for k, (model_trace, guide_trace) in enumerate(self._get_traces(model, guide, args,
                                                                        kwargs)):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            sites = [(name, site) for name, site in guide_trace.nodes.items()
                     if site["type"] == "sample"]
            for name, site in sites:
                if not bool(torch.all(torch.as_tensor(site["scale"]) == 1)):
                    raise ConfigError(
                        f"--elbo iwae-dreg weights the samples of site {name!r} by w̃², which "
                        "holds only for an unscaled site (no poutine.scale, KL weight or "
                        "subsampled plate); use --elbo iwae")
            log_p = _log_prob_sum(model_trace, sum_dims)
            if len(sites) > 1:  # several latent sites: the second pass at the stopped draws
                log_weights.append(log_p - _log_prob_sum(guide_trace, sum_dims))
                surrogates.append(self._stopped_pass(model, guide, guide_trace, sites, args,
                                                     kwargs))
                continue
            log_w = log_p
            for name, site in sites:
                log_q = stopped(site["fn"], name).log_prob(site["value"])
                log_w = log_w - torch_sum(scale_and_mask(log_q, site["scale"], site["mask"]),
                                          sum_dims)
                samples.append((k, site["value"], site["fn"].event_dim))
            log_weights.append(log_w)
            surrogates.append(None)
        vectorized = self.vectorize_particles and self.num_particles > 1
        log_w = log_weights[0] if vectorized else torch.stack(log_weights)
        normalised = torch.softmax(log_w.detach(), dim=0)  # w̃: (K, batch) or (K,)
        for k, value, event_dim in samples:
            weight = normalised if vectorized else normalised[k]
            weight = weight.reshape(weight.shape + (1,) * event_dim)
            if value.requires_grad:
                value.register_hook(lambda grad, weight=weight: grad * weight)
        bound = (torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()
        surrogate = 0.0
        for k, (log_w_k, parts) in enumerate(zip(log_weights, surrogates)):
            weight = normalised if vectorized else normalised[k]
            if parts is None:  # one site: q's parameters stopped, w̃ applied by the hook
                surrogate = surrogate + (weight * log_w_k).sum()
            else:
                log_p_stopped, log_q_stopped = parts
                surrogate = surrogate + (weight**2 * (log_w_k + log_q_stopped)
                                         + (weight - weight**2) * log_p_stopped).sum()
        return -(bound.detach() + surrogate - surrogate.detach())

    def _stopped_pass(self, model, guide, guide_trace, sites, args, kwargs):
        """For a guide with several latent sites, whose densities' parameters depend on the
        draws of the sites before (a hierarchical guide: q(z_2|z_1)), stopping the parameters
        of each site would also stop part of the path gradient. Instead the model and guide run
        a second time at the draws with their gradient stopped, z̄ = stop(z), which gives the
        two terms that the path-gradient identity needs (Tucker et al. 2019, eq. 5):

            ∇ log q(z̄)  = ∂log q/∂ψ at fixed z           (q's score),
            ∇ log p(x, z̄) = ∂log p/∂ψ at fixed z          (the model's own gradient),

        so that, with log w = log p(x, z) − log q(z) of the first pass (every path live),

            ∇ [w̃² (log w + log q(z̄)) + (w̃ − w̃²) log p(x, z̄)]
              = w̃ ∂log p/∂ψ + w̃² ∂log w/∂z · dz/dψ,

        the DReG gradient for every parameter ψ, the model's, the guide's and those they share
        (the VampPrior's encoder). Returns (log p(x, z̄), log q(z̄)), summed as log w is. The
        second pass costs one more forward pass of the model and guide; one-site guides do
        without it. Randomness outside the sample sites (torch draws inside the guide, such
        as a corruption of x) is not replayed: :class:`~pyro_vae.config.Config` refuses
        ``--corrupt`` here."""
        for name, site in sites:
            if not site["fn"].has_rsample:
                raise ConfigError(f"--elbo iwae-dreg needs a reparameterised guide, and site "
                                  f"{name!r} ({type(site['fn']).__name__}) is not; use --elbo "
                                  "iwae")
        held = guide_trace.copy()
        for name, _ in sites:
            held.nodes[name] = dict(held.nodes[name], value=held.nodes[name]["value"].detach())
        vectorized = self.vectorize_particles and self.num_particles > 1
        model_fn = self._vectorized_num_particles(model) if vectorized else model
        guide_fn = self._vectorized_num_particles(guide) if vectorized else guide
        model_trace, stopped_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model_fn, poutine.replay(guide_fn, trace=held),
            args, kwargs)
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        return _log_prob_sum(model_trace, sum_dims), _log_prob_sum(stopped_trace, sum_dims)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:  # no parameter to train: nothing to differentiate
            loss.backward()
        return loss.item()


def _log_prob_sum(trace, sum_dims) -> torch.Tensor:
    """Σ of the sample sites' log densities (scaled and masked, as the trace holds them),
    summed over every dimension but ``sum_dims``' complement: (K, batch) or (batch,)."""
    return sum(torch_sum(site["log_prob"], sum_dims) for site in trace.nodes.values()
               if site["type"] == "sample")


def stopped(fn: dist.Distribution, name: str = "z") -> dist.Distribution:
    """``fn`` with its parameters detached, for a density of the sample with the gradient
    through the parameters stopped: ``Independent`` wrappers kept, the base rebuilt from the
    parameters it was built with (``Normal(loc, scale)`` → ``Normal(loc.detach(), …)``).

    Raises
    ------
    ConfigError
        For a site that is not reparameterised, or a distribution without such parameters
        (a transformed one: a flow keeps its parameters in its transforms).
    """
    if not fn.has_rsample:
        raise ConfigError(f"--elbo iwae-dreg needs a reparameterised guide, and site {name!r} "
                          f"({type(fn).__name__}) is not; use --elbo iwae")
    if isinstance(fn, dist.Independent):
        return dist.Independent(stopped(fn.base_dist, name), fn.reinterpreted_batch_ndims)
    params = {k: v for k, v in vars(fn).items() if k in fn.arg_constraints}
    if isinstance(fn, dist.TransformedDistribution) or not params:
        raise ConfigError(f"--elbo iwae-dreg stops the gradient through q's parameters, which "
                          f"it cannot for site {name!r} ({type(fn).__name__}); use a diagonal "
                          "Gaussian guide (--guide normal) or --elbo iwae")
    try:
        return type(fn)(**{k: v.detach() for k, v in params.items()}, validate_args=False)
    except (TypeError, ValueError):  # e.g. a MultivariateNormal holding two parametrisations
        raise ConfigError(f"--elbo iwae-dreg cannot rebuild site {name!r} "
                          f"({type(fn).__name__}) from its parameters to stop them; use a "
                          "diagonal Gaussian guide (--guide normal) or --elbo iwae") from None


class FreeBits:
    """Mixin for ``Trace_ELBO`` and ``TraceMeanField_ELBO``: the free-bits objective of
    Kingma et al. (2016, appendix C.8),

        L_λ = Σ_n E_q[log p(x_n|z_n)] − B Σ_j max(λ, KL̄_j),   KL̄_j = (1/B) Σ_n KL_nj,

    for a batch of B data points, KL_nj the KL term of latent dimension j of data point n as
    the estimator has it (log q(z_j|x) − log p(z_j) at the sampled z for ``Trace_ELBO``, the
    closed form for ``TraceMeanField_ELBO``). It is the ELBO minus the shortfall
    B Σ_j max(0, λ − KL̄_j) (:func:`free_bits_shortfall`), so a dimension whose mean KL is
    below λ gets no gradient from its KL term, and the ELBO's value where every KL̄_j ≥ λ.
    ``loss`` is −L_λ in nats summed over the batch (and ``kl_weight``-scaled with the z sites).
    Each latent site must factorise over its last dimension in the guide and the prior
    (``Independent`` over a distribution with one factor per dimension).
    """

    def __init__(self, free_bits: float, **kwargs):
        super().__init__(**kwargs)
        self.free_bits = free_bits

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        shortfall = free_bits_shortfall(model_trace, guide_trace, self.free_bits,
                                        analytic=isinstance(self, TraceMeanField_ELBO))
        return loss + float(shortfall.detach()), surrogate + shortfall

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        return float(self.differentiable_loss(model, guide, *args, **kwargs))


class FreeBitsTrace_ELBO(FreeBits, Trace_ELBO):
    """``Trace_ELBO`` with free bits (:class:`FreeBits`)."""


class FreeBitsTraceMeanField_ELBO(FreeBits, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` with free bits (:class:`FreeBits`)."""


def free_bits_shortfall(model_trace, guide_trace, free_bits: float,
                        analytic: bool = False) -> torch.Tensor:
    """B Σ_j max(0, λ − KL̄_j) over the latent sites of a guide trace and its model trace: a
    0-d tensor, scaled as the site is (the KL weight), summed over vectorised particles.

    KL_nj per data point and dimension is log q(z_j|x) − log p(z_j) at the sampled value,
    or, with ``analytic``, the closed form where torch has one; z has shape (…, B, z_dim),
    the batch its second-to-last dimension.

    Raises
    ------
    ConfigError
        For a site that does not factorise over its last dimension in the guide or the prior.
    """
    total = torch.zeros(())
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or name not in model_trace.nodes:
            continue
        prior = model_trace.nodes[name]
        q, p = _factors(site["fn"], name, "guide"), _factors(prior["fn"], name, "prior")
        kl = None
        if analytic:
            try:
                kl = kl_divergence(q, p)
            except NotImplementedError:
                pass
        if kl is None:
            kl = q.log_prob(site["value"]) - p.log_prob(site["value"])
        kl = kl.expand(site["value"].shape)
        mean = kl.mean(-2)  # KL̄_j: (…, z_dim)
        total = total.to(kl.device) + prior["scale"] * kl.shape[-2] * torch.relu(
            free_bits - mean).sum()
    return total


def _factors(fn, name: str, where: str, flag: str = "free-bits"):
    """The per-dimension distribution of a latent site that factorises over its last
    dimension: the base of ``Independent(…, 1)``."""
    if isinstance(fn, dist.Independent) and fn.reinterpreted_batch_ndims == 1 and not isinstance(
            fn.base_dist, (dist.Independent, dist.TransformedDistribution)):
        return fn.base_dist
    raise ConfigError(f"--{flag} needs site {name!r} to factorise over its dimensions, and "
                      f"its {where} is {type(fn).__name__}; use a diagonal Gaussian guide and a "
                      "normal, laplace or studentt prior")


@register_objective("tc")
class TCObjective(Objective):
    """β-TCVAE (Chen et al. 2018): ``Trace_ELBO`` with ``--beta`` on the total correlation
    (:class:`TCTrace_ELBO`), for a diagonal Gaussian guide and a prior that factorises."""

    needs_gaussian_guide = True
    gaussian_reason = "splits q(z|x) into one factor per latent dimension, which it can"
    needs_factorised_prior = True
    own_beta = True
    batch_statistic = True
    one_latent_site = True
    one_site_reason = "splits the KL term of one latent site into MI, TC and dimension-wise KL"

    def estimator(self, beta: float = 1.0, **kwargs) -> ELBO:
        return TCTrace_ELBO(beta=beta, **kwargs)


def kl_decomposition(q: dist.Distribution, p: dist.Distribution, z: torch.Tensor,
                     rows: slice | None = None) -> dict[str, torch.Tensor]:
    """The three terms of the KL term log q(z|x) − log p(z) of Chen et al. (2018, eq. 2) at
    samples ``z`` (…, M, D) of q(z|x) for a batch of M data points, each (…, M) in nats:

    - ``mi``, index-code mutual information: log q(z_i|x_i) − log q(z_i);
    - ``tc``, total correlation: log q(z_i) − Σ_d log q(z_id);
    - ``dim_kl``, dimension-wise KL: Σ_d [log q(z_id) − log p(z_id)];

    which add up to log q(z_i|x_i) − log p(z_i). The aggregate posterior q(z) = (1/N) Σ_n
    q(z|x_n) and its marginals q(z_d) are estimated on the batch by minibatch weighted
    sampling (their eq. 4), log q(z_i) ≈ log Σ_j q(z_i|x_j) − log M. Their eq. 4 writes
    −log(NM) for a data set of N, a constant (log N in log q(z), (D − 1)·log N in the TC)
    that moves no gradient; with −log M the estimate is exact when the batch is the whole
    evaluated set, and the three terms add up to the KL term. ``rows`` (a slice of the M)
    gives the terms of those samples only, still against all M rows of q: (…, len(rows)), for
    large sets in pieces. ``q`` and ``p`` factorise over the last dimension (``Independent``
    over per-dimension distributions, batch shape broadcastable to (…, M, D)).

    Raises
    ------
    ConfigError
        For a guide or prior that does not factorise over the dimensions.
    """
    q1, p1 = _factors(q, "z", "guide", "tc"), _factors(p, "z", "prior", "tc")
    params = {k: v for k, v in vars(q1).items() if k in q1.arg_constraints}
    if not params:
        raise ConfigError("--elbo tc needs a guide with per-dimension parameters (a diagonal "
                          "Gaussian); use --guide normal")
    m, rows = z.shape[-2], slice(None) if rows is None else rows
    full = {k: v.expand(z.shape) for k, v in params.items()}
    picked = z[..., rows, :]
    # log q(z_id | x_j): the samples (…, R, 1, D) against every row's parameters (…, 1, M, D).
    pairs = type(q1)(**{k: v.unsqueeze(-3) for k, v in full.items()},
                     validate_args=False).log_prob(picked.unsqueeze(-2))     # (…, R, M, D)
    log_q_zx = type(q1)(**{k: v[..., rows, :] for k, v in full.items()},
                        validate_args=False).log_prob(picked).sum(-1)        # (…, R)
    log_q_dims = torch.logsumexp(pairs, dim=-2) - math.log(m)               # (…, R, D)
    log_q_z = torch.logsumexp(pairs.sum(-1), dim=-1) - math.log(m)          # (…, R)
    log_p_dims = p1.expand(z.shape).log_prob(z)[..., rows, :]
    return {"mi": log_q_zx - log_q_z, "tc": log_q_z - log_q_dims.sum(-1),
            "dim_kl": (log_q_dims - log_p_dims).sum(-1)}


class TCTrace_ELBO(Trace_ELBO):
    """β-TCVAE (Chen, Li, Grosse & Duvenaud 2018, eq. 2 and 4) as a Pyro ELBO:

        L = ELBO − (β − 1) · Σ_i TC_i,

    i.e. E_q log p(x|z) − MI − β·TC − dimension-wise KL (their α = γ = 1), the total
    correlation TC_i = log q(z_i) − Σ_d log q(z_id) of :func:`kl_decomposition`, estimated
    on the batch by minibatch weighted sampling. ``beta`` β (``--beta``) weighs the TC alone;
    β = 1 is the ELBO. Under a KL weight w (``--kl-warmup``, ``--kl-schedule``: ``poutine.scale``
    on the z sites) the added term is scaled by w too, so the TC weighs w·β. The model and guide are Pyro's; only this term is added, to both the
    loss and its surrogate. Keyword arguments are Trace_ELBO's.
    """

    def __init__(self, beta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        if self.beta == 1.0:
            return loss, surrogate
        extra = 0.0
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or name not in model_trace.nodes:
                continue
            terms = kl_decomposition(site["fn"], model_trace.nodes[name]["fn"], site["value"])
            # Scaled as the site is: under a KL weight w the TC weighs w·β, as MI and dim-KL w.
            extra = extra + site["scale"] * (self.beta - 1.0) * terms["tc"].sum()
        return loss + float(torch.as_tensor(extra).detach()), surrogate + extra

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        return float(self.differentiable_loss(model, guide, *args, **kwargs))


class InductorTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` compiled without TorchScript: the loss of the model and guide recorded
    once per batch shape and keywords as a graph of torch operations
    (``torch.fx.experimental.proxy_tensor.make_fx``), then compiled by ``torch.compile``
    (TorchInductor) with its backward pass.

    The recording runs Pyro's model and guide as ``Trace_ELBO`` does, so the graph is Pyro's
    single-sample ELBO (Kingma & Welling 2014, eq. 6) of that model and guide, with every
    Python step of Pyro's (handlers, traces, site bookkeeping) done once at recording instead
    of at every step, as Pyro's ``JitTrace_ELBO`` does with ``torch.jit.trace``. Parameters
    enter the graph by reference, so the optimiser's updates are seen and gradients reach
    them. Random draws use torch's generator (Inductor's ``fallback_random``), so the loss is
    ``Trace_ELBO``'s on the same draws to float tolerance (not bit for bit: the compiled
    kernels sum in another order). Recording and compiling run on a copy of the random state.

    Like ``JitTrace_ELBO`` it needs a model of static structure: every tensor input passed
    positionally, keywords hashable (one graph per distinct set), every guide site
    reparameterised, no data-dependent Python control flow; Pyro's validation is off inside
    the graph. Keyword arguments are ``Trace_ELBO``'s.

    Raises
    ------
    ConfigError
        At the first call, for a guide site that is not reparameterised.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._graphs: dict = {}

    def _negative_elbo(self, model, guide, args, kwargs) -> torch.Tensor:
        """−ELBO, as Trace_ELBO's, with tensors only (no ``.item()`` to record)."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    elbo = elbo + site["log_prob_sum"]
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not site["fn"].has_rsample:
                        raise ConfigError(f"--compiler inductor compiles reparameterised guides, "
                                          f"and site {name!r} is not; use --no-jit")
                    elbo = elbo - site["log_prob_sum"]
            loss = loss - elbo / self.num_particles
        return loss

    def _graph(self, model, guide, args, kwargs):
        from torch.fx.experimental.proxy_tensor import make_fx

        positions = [i for i, a in enumerate(args) if torch.is_tensor(a)]

        def loss(*tensors):
            full = list(args)
            for i, t in zip(positions, tensors):
                full[i] = t
            return self._negative_elbo(model, guide, tuple(full), kwargs)

        inputs = [args[i] for i in positions]
        devices = [t.device for t in inputs if t.device.type == "cuda"]
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
            with poutine.block(), poutine.trace(param_only=True) as params:
                loss(*inputs)  # registers every parameter, fixes the plate nesting
            with poutine.block():
                graph = make_fx(loss)(*inputs)
        compiled = torch.compile(graph, options={"fallback_random": True})
        names = list(params.trace.nodes)

        def run(*a):
            for name in names:  # the param sites SVI collects the parameters to step from
                pyro.param(name)
            return compiled(*[a[i] for i in positions])

        return run

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−ELBO summed over the batch (nats), a 0-d tensor whose gradient is Trace_ELBO's."""
        key = (_identity(model), _identity(guide), tuple(
            (tuple(a.shape), a.dtype, a.device) if torch.is_tensor(a) else a for a in args),
            tuple(sorted(kwargs.items())))
        if key in self._graphs:
            return self._graphs[key](*args)
        self._graphs[key] = self._graph(model, guide, args, kwargs)
        # The first call compiles; on a machine without CUDA torch's C++ builder logs a
        # warning that it found none, which is no news to a CPU run, and Inductor's own
        # lowering of some operations (the contractive penalty's) calls a function torch
        # deprecates.
        builder = logging.getLogger("torch.utils.cpp_extension")
        level = builder.level
        builder.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\._prims_common\.check`",
                                        category=FutureWarning)
                return self._graphs[key](*args)
        finally:
            builder.setLevel(level)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


def _identity(fn):
    """What a program is, for caching its graph: a bound method by its object and function
    (each attribute access makes a new method object), anything else by id."""
    owner = getattr(fn, "__self__", None)
    return (id(owner), fn.__func__) if owner is not None else id(fn)


def jit_unsupported(config) -> str | None:
    """Why the training objective of ``config`` (a :class:`~pyro_vae.config.Config`) cannot be
    compiled here, or None when it can.

    Under ``--compiler inductor`` the reasons are :func:`_inductor_unsupported`'s. Under
    ``--compiler torchscript`` compiling needs TorchScript (Python < 3.14) and a compiled form
    of the objective (only ``Trace_ELBO`` has one that works); there the contractive penalty's
    ``torch.func`` Jacobian cannot be traced (``make_fx`` records it: ``--compiler
    inductor`` compiles it), nor can a step under bf16 autocast (the tracer refuses the weights'
    bf16 copies as constants). A KL warm-up can: its weight is an argument of the model and
    guide.
    """
    if config.train.compiler == "inductor":
        return _inductor_unsupported(config)
    if sys.version_info >= (3, 14):
        return "TorchScript, which Pyro's compiled objectives use, does not support Python 3.14+"
    objective = OBJECTIVES[config.train.elbo]()
    form = objective.compiled_enumerated() if config.model.semi_supervised else objective.compiled()
    if form is None:
        return f"only --elbo trace is compiled, not --elbo {config.train.elbo}"
    if config.train.free_bits:
        return "--free-bits has no compiled form (Pyro's JitTrace_ELBO is Trace_ELBO's)"
    if config.train.contractive:
        return ("the --contractive penalty's Jacobian (torch.func) cannot be traced by "
                "TorchScript; --compiler inductor compiles it")
    if config.train.precision != "float32":
        return (f"--precision {config.train.precision} runs under torch.autocast, which "
                "torch.jit.trace cannot record")
    return None


def _inductor_unsupported(config) -> str | None:
    """Why ``--compiler inductor`` cannot compile the objective of ``config``, or None."""
    if config.train.elbo != "trace":
        return ("--compiler inductor compiles Trace_ELBO (--elbo trace), not --elbo "
                f"{config.train.elbo}")
    if config.train.free_bits:
        return "--compiler inductor compiles Trace_ELBO, without --free-bits"
    if config.model.semi_supervised:
        return "--compiler inductor does not compile the enumerated class of --labelled"
    if config.train.precision != "float32":
        return f"--precision {config.train.precision} is not compiled"
    return None


def build_elbo(config, jit: bool = False) -> ELBO:
    """The Pyro ELBO that ``config.train.elbo`` and ``config.train.particles`` name, in its
    enumerated form for the semi-supervised model (``config.model.semi_supervised``).

    With ``jit=True``, its compiled form. Call that one with the batch size as a keyword
    (``num=x.shape[0]``): Pyro compiles once per distinct set of keywords, and a trace holds
    the shapes it was recorded with.

    Raises
    ------
    ConfigError
        With ``jit=True``, if :func:`jit_unsupported` gives a reason.
    """
    particles = config.train.particles
    kwargs = dict(
        num_particles=particles,
        vectorize_particles=particles > 1,
        max_plate_nesting=1,  # the model's one plate over the batch
    )
    objective = OBJECTIVES[config.train.elbo]()
    enumerated = config.model.semi_supervised
    if jit:
        reason = jit_unsupported(config)
        if reason is not None:
            raise ConfigError(f"the objective cannot be compiled: {reason}")
        if config.train.compiler == "inductor":
            return InductorTrace_ELBO(**kwargs)
        return (objective.compiled_enumerated if enumerated else objective.compiled)(**kwargs)
    if objective.own_beta:
        kwargs["beta"] = config.train.beta
    elbo = (objective.enumerated if enumerated else objective.estimator)(**kwargs)
    if config.train.free_bits:
        free = {Trace_ELBO: FreeBitsTrace_ELBO, TraceMeanField_ELBO: FreeBitsTraceMeanField_ELBO}
        if type(elbo) not in free:  # pragma: no cover - Config refuses these
            raise ConfigError(f"--free-bits works with --elbo trace or meanfield, not "
                              f"{config.train.elbo}")
        elbo = free[type(elbo)](config.train.free_bits, **kwargs)
    return elbo


@torch.no_grad()
def sampled_kl_sites(model, guide, x: torch.Tensor) -> list[str]:
    """Latent sites for which ``TraceMeanField_ELBO`` has no closed-form KL(q‖p).

    Traces ``guide`` and ``model`` once on ``x`` and returns one description per site whose KL
    is estimated by sampling instead, e.g. ``"z (Normal guide, Laplace prior)"``.
    """
    guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(x))
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace = prune_subsample_sites(model_trace)
    sampled = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in guide_trace.nodes:
            continue
        q, p = guide_trace.nodes[name]["fn"], site["fn"]
        try:
            kl_divergence(q, p)
        except NotImplementedError:
            sampled.append(f"{name} ({_family(q)} guide, {_family(p)} prior)")
    return sampled


def _family(d) -> str:
    """Name of a distribution without ``Independent`` wrappers."""
    while hasattr(d, "base_dist") and type(d).__name__ == "Independent":
        d = d.base_dist
    return type(d).__name__
