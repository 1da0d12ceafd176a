"""KL schedules: the weight of the ELBO's KL term at each step, passed into the model and guide
as their ``kl_weight`` argument (``poutine.scale`` on the z sites), so compiled objectives and
resumed runs follow it exactly.

- constant β (``--beta``, default 1; Higgins et al. 2017);
- linear warm-up over the first E epochs (``--kl-warmup E``; Bowman et al. 2016, §3.1;
  Sønderby et al. 2016, §2.4);
- cyclical annealing (``--kl-schedule cyclical:M,R``; Fu et al. 2019, eq. 7).
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from ..registry import OBJECTIVES


def parse_kl_schedule(spec: str) -> tuple[int, float]:
    """``"cyclical:M,R"`` → (M cycles, ratio R): M ≥ 1 whole cycles, 0 < R ≤ 1.

    Raises
    ------
    ConfigError
        In one line, for anything else.
    """
    usage = "give --kl-schedule cyclical:M,R, e.g. cyclical:4,0.5 (M cycles, rising for R of each)"
    kind, _, rest = str(spec).partition(":")
    if kind != "cyclical":
        raise ConfigError(f"unknown --kl-schedule {spec!r}; {usage}")
    try:
        cycles_text, ratio_text = rest.split(",")
        cycles, ratio = int(cycles_text), float(ratio_text)
    except ValueError:
        raise ConfigError(f"--kl-schedule {spec!r} is not cyclical:M,R; {usage}") from None
    if cycles < 1 or not 0 < ratio <= 1:
        raise ConfigError(f"--kl-schedule {spec!r} needs M ≥ 1 cycles and 0 < R ≤ 1; {usage}")
    return cycles, ratio


def kl_weight(config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The KL weight of a step: β (1 for an objective with its own β, ``--elbo tc``); during the first ``kl_warmup`` epochs β·t/T rising linearly
    per step; or, for ``kl_schedule`` cyclical:M,R, Fu et al.'s (2019, eq. 7) cyclical
    schedule over the run's T = epochs · steps_per_epoch steps,

        τ = ((t − 1) mod ⌈T/M⌉ + 1) / (T/M),   β_t = β · min(1, τ/R),   t = 1 … T,

    which rises anew in each of the M cycles and holds β for its last 1 − R. τ counts the
    step itself (Fu et al.'s τ is one step lower), as the warm-up does, so the weight is never 0,
    which ``poutine.scale`` refuses. ``epoch`` counts
    from 1, ``step`` from 0; ``config`` is a :class:`~pyro_vae.config.Config` with its epochs
    set (by :meth:`~pyro_vae.config.Config.for_data`).

    Raises
    ------
    ConfigError
        For more cycles than the run has steps.
    """
    train = config.train
    beta = 1.0 if OBJECTIVES[train.elbo].own_beta else train.beta  # β-TCVAE's is on the TC
    t = (epoch - 1) * steps_per_epoch + step + 1
    if train.kl_schedule is not None:
        cycles, ratio = parse_kl_schedule(train.kl_schedule)
        if cycles > train.epochs * steps_per_epoch:
            raise ConfigError(
                f"--kl-schedule {train.kl_schedule} asks for {cycles} cycles in a run of "
                f"{train.epochs * steps_per_epoch} steps; give at most that many cycles")
        period = train.epochs * steps_per_epoch / cycles
        tau = ((t - 1) % math.ceil(period) + 1) / period
        return beta * min(1.0, tau / ratio)
    if train.kl_warmup == 0:
        return beta
    return beta * min(1.0, t / (train.kl_warmup * steps_per_epoch))


def scheduled(config) -> bool:
    """Whether the KL weight of ``config`` is ever other than 1."""
    train = config.train
    beta = 1.0 if OBJECTIVES[train.elbo].own_beta else train.beta
    return beta != 1.0 or train.kl_warmup > 0 or train.kl_schedule is not None
