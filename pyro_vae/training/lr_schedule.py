"""Learning-rate schedules, stepped once per epoch: torch's own schedulers on the one torch
optimiser of :class:`~pyro_vae.training.optim.JointOptim`.

- ``constant``: the learning rate ``--lr`` throughout (the default);
- ``plateau[:FACTOR,PATIENCE]``: ``ReduceLROnPlateau`` on the validation −ELBO, the learning
  rate times FACTOR after PATIENCE epochs without improvement (scvi-tools' default schedule;
  default 0.5,2);
- ``cosine[:WARMUP]``: a linear warm-up (``LinearLR``) over WARMUP epochs from lr/(WARMUP+1),
  then cosine annealing (``CosineAnnealingLR``; Loshchilov & Hutter 2017, eq. 5 without
  restarts) over the remaining epochs; default 1;
- ``step[:EVERY,GAMMA]``: ``StepLR``, the learning rate times GAMMA every EVERY epochs;
  default 10,0.5.

The scheduler's ``state_dict`` is plain numbers, saved as JSON in the training state, so a
resumed run follows the schedule exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.optim import lr_scheduler

from ..errors import ConfigError

#: Schedule name → (its parameters' names, their defaults).
SCHEDULES = {
    "constant": ((), ()),
    "plateau": (("FACTOR", "PATIENCE"), (0.5, 2)),
    "cosine": (("WARMUP",), (1,)),
    "step": (("EVERY", "GAMMA"), (10, 0.5)),
}


class LRSchedule(NamedTuple):
    """A parsed ``--lr-schedule``: its name and parameters (defaults filled in)."""

    name: str
    params: tuple

    @property
    def needs_validation(self) -> bool:
        """Whether it reads the validation −ELBO (``plateau``)."""
        return self.name == "plateau"


def parse_lr_schedule(spec: str) -> LRSchedule:
    """``"plateau:0.5,2"`` → ``LRSchedule("plateau", (0.5, 2))``; parameters may be left out.

    Raises
    ------
    ConfigError
        In one line, for an unknown name or parameters out of range.
    """
    usage = ("give --lr-schedule constant, plateau[:FACTOR,PATIENCE], cosine[:WARMUP] or "
             "step[:EVERY,GAMMA], e.g. plateau:0.5,2")
    name, colon, rest = str(spec).partition(":")
    if name not in SCHEDULES:
        raise ConfigError(f"unknown --lr-schedule {spec!r}; {usage}")
    names, defaults = SCHEDULES[name]
    if not colon:
        return LRSchedule(name, defaults)
    texts = rest.split(",")
    if not names:
        raise ConfigError(f"--lr-schedule {spec!r}: constant takes no parameters; {usage}")
    if len(texts) != len(names):
        raise ConfigError(f"--lr-schedule {spec!r} takes {name}:{','.join(names)}; {usage}")
    try:
        params = tuple(type(d)(t) for d, t in zip(defaults, texts))
    except ValueError:
        raise ConfigError(f"--lr-schedule {spec!r}: {','.join(names)} must be numbers ("
                          f"{', '.join(type(d).__name__ for d in defaults)}); {usage}") from None
    checks = {
        "plateau": (0 < params[0] < 1 and params[-1] >= 0, "0 < FACTOR < 1 and PATIENCE ≥ 0"),
        "cosine": (params[0] >= 0, "WARMUP ≥ 0 epochs"),
        "step": (params[0] >= 1 and params[-1] > 0, "EVERY ≥ 1 epoch and GAMMA > 0"),
    }
    good, need = checks[name]
    if not good or not all(math.isfinite(p) for p in params):
        raise ConfigError(f"--lr-schedule {spec!r} needs finite numbers, {need}; {usage}")
    return LRSchedule(name, params)


def build_scheduler(spec: str, optimizer: torch.optim.Optimizer, epochs: int):
    """The torch scheduler of ``spec`` on ``optimizer`` for a run of ``epochs`` epochs, or
    None for ``constant``.

    Raises
    ------
    ConfigError
        For a cosine warm-up as long as the run.
    """
    schedule = parse_lr_schedule(spec)
    if schedule.name == "constant":
        return None
    if schedule.name == "plateau":
        factor, patience = schedule.params
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor,
                                              patience=patience)
    if schedule.name == "step":
        every, gamma = schedule.params
        return lr_scheduler.StepLR(optimizer, step_size=every, gamma=gamma)
    (warmup,) = schedule.params
    if warmup >= epochs:
        raise ConfigError(f"--lr-schedule {spec} warms up over {warmup} epochs of a run of "
                          f"{epochs}; give a shorter warm-up or more --epochs")
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup)
    if warmup == 0:
        return cosine
    warm = lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[warmup])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the optimiser's (one) parameter group."""
    return float(optimizer.param_groups[0]["lr"])
