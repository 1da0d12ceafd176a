"""Training with ``pyro.infer.SVI``: the training plan and :func:`fit`.

The loss is always Pyro's ELBO of the model and guide. :class:`TrainingPlan` holds what lives
across steps and epochs (the optimiser, the KL schedule, progress, the stop request, the run
directory, the data-parallel group) in short methods, in the spirit of scvi-tools' training
plan and pythae's trainer; :func:`fit` is a thin wrapper that reads the data and builds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from tqdm.auto import tqdm

from .. import plots
from ..evaluation import pictures
from ..evaluation.evaluate import KL_TERMS_IMAGES, classifier_accuracy, kl_terms
from ..config import (
    IN_MEMORY, Config, DataConfig, TrainConfig, data_unit, is_table_file, section_options,
    section_values)
from ..devices import resolve_device
from ..errors import (
    CheckpointError, ConfigError, DataError, PyroVAEError, TrainingError, TrainingInterrupted,
)
from ..io import checkpoint
from ..io.lock import RunLock
from ..io.data import (
    TEST_BINARIZE_SEED, Data, as_float, binarize_fixed, binarize_rows, draw_binary, hide_labels,
    load_data, num_classes, prepare_data, read_validation, sample_rows)
from ..io.stream import MappedRows
from ..model import VAE
from ..parts.objectives import jit_unsupported, sampled_kl_sites
from ..registry import OBJECTIVES
from . import distributed
from .board import TENSORBOARD_DIR, TensorBoardLog
from .lr_schedule import build_scheduler, current_lr, parse_lr_schedule
from .optim import JointOptim, adam_args
from .schedules import kl_weight, scheduled
from .signals import StopRequest, stop_on_signals
from .step import DistributedStep, TrainingStep, regularisers

#: Columns of ``metrics.csv``; losses in nats per image, times in seconds. Discrete likelihoods
#: with a stochastic guide add ``test_bits_per_dim``, the semi-supervised model with test
#: labels ``test_accuracy`` (of its classifier q(y|x)).
METRIC_COLUMNS = ("epoch", "train_seconds", "train_neg_elbo", "test_neg_elbo")
#: Images drawn in ``samples.png`` and test images shown in ``reconstructions.png``.
NUM_SAMPLES, NUM_RECONSTRUCTIONS = 64, 32


class FitResult(NamedTuple):
    """What :func:`fit` returns: the trained model and one metrics dict per epoch.

    With a validation set the model is that of :attr:`kept_epoch`, the epoch of the lowest
    validation −ELBO; without one, that of the last epoch.
    """

    model: VAE
    metrics: list[dict]

    @property
    def kept_epoch(self) -> int:
        """The epoch whose weights :attr:`model` holds (and ``model.safetensors``)."""
        return kept_epoch(self.metrics)

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping ended the run before ``epochs``."""
        return bool(self.metrics) and bool(self.metrics[-1].get("stopped_early"))


def kept_epoch(rows: list[dict]) -> int:
    """The epoch of the lowest validation −ELBO in the metrics ``rows`` (the first of ties; a
    non-finite value never counts), or the last epoch when they have no validation column."""
    scored = [(row["validation_neg_elbo"], row["epoch"]) for row in rows
              if math.isfinite(row.get("validation_neg_elbo", math.nan))]
    if not scored:
        return rows[-1]["epoch"] if rows else 0
    return min(scored)[1]


def epochs_without_improvement(rows: list[dict], min_delta: float) -> int:
    """Epochs since the validation −ELBO last fell by more than ``min_delta`` below the value
    it fell to before (Keras' and Lightning's rule; the first epoch always improves)."""
    reference, waited = math.inf, 0
    for row in rows:
        value = row.get("validation_neg_elbo", math.nan)
        if value < reference - min_delta:
            reference, waited = value, 0
        else:
            waited += 1
    return waited


@torch.no_grad()
def neg_elbo(vae: VAE, x: torch.Tensor, batch_size: int | None = None,
             y: torch.Tensor | None = None) -> float:
    """Single-sample estimate of −ELBO(x) by ``Trace_ELBO``, averaged over x (nats per image).

    ``x`` is (N, D) on the model's device, already binarised where the likelihood needs it:
    float32 values, or rows as :class:`~pyro_vae.io.data.Data` stores them (uint8 grey levels,
    bool), converted batch by batch. ``y`` holds the conditions of a conditional model (N
    labels or (N, C) covariates): the −ELBO of log p(x|y). The semi-supervised model is scored
    without labels, its class summed out by ``TraceEnum_ELBO``: U(x) of Kingma et al. (2014,
    eq. 7, whose bound on log p(x) is −U(x)), a bound on −log p(x). The model and guide are
    called without schedule arguments: the plain ELBO, without β, corruption or contractive
    penalty. By default
    ``batch_size`` is 1000 rows, fewer for wide data (at most 2^22 values per batch; for the
    semi-supervised model K times fewer), which bounds the memory the model's intermediate
    values take.
    """
    enumerated = vae.semi_supervised
    if batch_size is None:
        batch_size = min(1000, max(1, (1 << 22) // max(1, x.shape[-1])))
        if enumerated:
            batch_size = max(1, batch_size // vae.num_classes)
    elbo = TraceEnum_ELBO(max_plate_nesting=1) if enumerated else Trace_ELBO()
    total, was_training = 0.0, vae.training
    device = next(vae.parameters()).device  # rows streamed from a file are read on the CPU
    vae.eval()
    for start in range(0, x.shape[0], batch_size):
        batch = as_float(x[start : start + batch_size]).to(device)
        given = () if y is None or enumerated else (None, y[start : start + batch_size])
        total += elbo.loss(vae.model, vae.guide, batch, *given)
    vae.train(was_training)
    return total / x.shape[0]


#: Importance samples per image of ``validation_nll`` (``--validation-nll-every``).
VALIDATION_NLL_SAMPLES = 100


def validation_nll(vae: VAE, x, y=None) -> float:
    """−log p̂(x), the importance-sampled estimate with :data:`VALIDATION_NLL_SAMPLES` samples
    (Burda et al. 2016, eq. 8), averaged over the rows ``x`` (nats per image); its draws are
    taken aside, so that training draws as without it."""
    from ..evaluation.evaluate import evaluate

    device = next(vae.parameters()).device
    was_training = vae.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        result = evaluate(vae, as_float(x).to(device), iwae_samples=VALIDATION_NLL_SAMPLES,
                          progress=False, y=y)
    vae.train(was_training)
    return result["nll"]


class RunWriter:
    """The run directory of a training run, made at its first save.

    Each file is written atomically, the training state first: a kill between writes leaves a
    run that both loads (the previous weights) and resumes (the new state). An old run in
    ``out`` is replaced (``overwrite``) only once the new run's first checkpoint is whole on
    disk: that checkpoint is written into ``out/.incoming`` while the old run stays untouched,
    then renamed into place (:func:`~pyro_vae.io.checkpoint.swap_in`).
    """

    def __init__(self, out, overwrite: bool, config: Config, existing: bool = False):
        self.out, self.overwrite, self.config = Path(out), overwrite, config
        self.dir: Path | None = self.out if existing else None
        self.staging: Path | None = None

    def ensure(self) -> Path:
        """Where the next save goes: the run directory, or on the first save of an
        ``overwrite`` of an old run the staging folder beside its files."""
        if self.dir is not None:
            return self.dir
        if self.staging is not None:
            return self.staging
        if self.overwrite and checkpoint.is_run_dir(self.out):
            target = self.staging = checkpoint.prepare_staging(self.out)
        else:
            target = self.dir = checkpoint.prepare_run_dir(self.out, self.overwrite)
        checkpoint.write_config(self.config, target)
        return target

    def _settle(self, written: Path) -> Path:
        """After a save into the staging folder, put the new checkpoint in place."""
        if self.dir is None:
            checkpoint.swap_in(written, self.out)
            self.dir, self.staging = self.out, None
        return self.dir

    @contextlib.contextmanager
    def _saving(self):
        """The folder to save into; a staging folder that a failed save leaves is removed."""
        run_dir = self.ensure()
        try:
            yield run_dir
        except BaseException:
            if self.dir is None:
                shutil.rmtree(run_dir, ignore_errors=True)
                self.staging = None
            raise
        self._settle(run_dir)

    def save_epoch(self, vae: VAE, optim: JointOptim, progress: dict, rows: list,
                   kept: tuple[dict | None, int] = (None, 0)) -> None:
        """Training state, config, weights, metrics and training curve after an epoch.

        ``kept``: the weights that ``model.safetensors`` holds and their epoch, those of the
        best epoch by validation −ELBO; (None, _) for the model as it is now."""
        with self._saving() as run_dir:
            checkpoint.save_training_state(run_dir, vae, optim.get_state(), progress)
            checkpoint.write_config(self.config, run_dir)
            state, epoch = kept
            checkpoint.save_weights(vae, run_dir, state=state,
                                    epoch=epoch if state is not None else progress["epoch"])
            checkpoint.write_metrics(run_dir, rows)
            plots.save_training_curve(rows, run_dir / "training_curve.png",
                                      data_unit(self.config.model.data_shape),
                                      kept=kept_epoch(rows))

    def save_partial(self, vae: VAE, optim: JointOptim, progress: dict, start_rng) -> Path:
        """The training state in the middle of an epoch (``progress["partial"]``)."""
        with self._saving() as run_dir:
            checkpoint.save_training_state(run_dir, vae, optim.get_state(), progress,
                                           epoch_start_rng=start_rng)
        return self.dir


class _Stream(NamedTuple):
    """One stream of an epoch's batches (:meth:`TrainingPlan._orders`)."""

    order: torch.Tensor  #: its rows in the order its batches take them (this rank's shard)
    size: int  #: batch size per rank
    labelled: bool  #: whether its batches carry labels
    cycled: bool  #: whether a row comes more than once an epoch (binarised afresh each time)
    at: dict[int, int] | None  #: {step: batch} where it skips steps; None for every step


@dataclasses.dataclass
class _Epoch:
    """Progress through one epoch: steps taken, loss summed, images counted, time."""

    number: int
    start_rng: dict
    step: int = 0
    total: float = 0.0
    seen: int = 0
    started: float = 0.0

    def progress(self, skipped: int) -> dict:
        return {"epoch": self.number, "step": self.step, "total": self.total, "seen": self.seen,
                "seconds": time.perf_counter() - self.started, "skipped": skipped}


class TrainingPlan:
    """Trains a :class:`~pyro_vae.model.VAE` with SVI, epoch by epoch, as :func:`fit` runs it.

    The plan owns the optimiser (one Adam over every parameter, :class:`JointOptim`), the
    training step (compiled where possible, :class:`~pyro_vae.training.step.TrainingStep`),
    the KL schedule that it passes to the model and guide as an argument, the metrics rows,
    the run directory and the stop request. Each epoch draws a fresh binarisation (dynamic),
    a permutation, takes its steps, scores the test set with the plain −ELBO and saves.

    Parameters
    ----------
    vae : VAE
        The model, built and seeded.
    data : Data
        Training and test data, checked.
    config : Config
        The run (its ``data_shape`` set).
    run : RunWriter, optional
        Where to save; None saves nothing.
    progress : bool
        Show a progress bar and a line per epoch.
    cluster : Cluster, optional
        This process's place in a torchrun group.
    stop : StopRequest, optional
        Set by a signal: finish the step, save, raise :class:`TrainingInterrupted`.
    device : torch.device
        Where parameters and data live.
    """

    def __init__(self, vae: VAE, data: Data, config: Config, *, run: RunWriter | None = None,
                 progress: bool = True, cluster=None, stop: StopRequest | None = None,
                 device: torch.device = torch.device("cpu")):
        self.vae, self.data, self.config, self.run = vae.to(device), data, config, run
        self.progress, self.cluster, self.stop = progress, cluster, stop or StopRequest()
        self.device, self.unit = device, data_unit(data.data_shape)
        self.train_x, self.test_x, self.valid_x = self._place(data)
        condition = config.model.condition
        self.train_y, self.test_y, self.valid_y = (
            None if y is None else y.to(device)
            for y in (data.conditions(condition, split=split)
                      for split in ("train", "test", "valid")))
        self.streams = self._streams()
        train = config.train
        self.optim = JointOptim(torch.optim.Adam, vae, adam_args(train.lr, vae),
                                clip_norm=train.clip_norm)
        #: How the epoch's dynamic binarisation is drawn: ``levels`` (:func:`draw_binary`), or
        #: ``bernoulli`` (:func:`binarize_rows`, the draw of releases before it) for a training
        #: state they saved, so that such a run resumes with the draws it would have made.
        self.binary_draw = "levels"
        self.scheduler = build_scheduler(train.lr_schedule, self.optim.optimizer, train.epochs)
        #: The weights of the epoch of lowest validation −ELBO so far (on the CPU), with one.
        self.best_state: dict | None = None
        self.board = None  # TensorBoardLog, made at the first save (--tensorboard)
        self._resumed = False
        self.optim.track_grad_norm = bool(train.tensorboard) and run is not None
        extra = regularisers(config)
        if cluster is None:
            self.step = TrainingStep(vae, self.optim, config, extra)
        else:
            self.step = DistributedStep(vae, self.optim, config, extra, cluster, device)
            pyro.set_rng_seed(train.seed + cluster.rank)  # own noise per rank; DDP syncs weights
        self.rows: list[dict] = []
        self.first_epoch, self.skipped, self.partial = 1, 0, None
        self.bits = vae.likelihood.discrete and vae.family.has_density
        if OBJECTIVES[train.elbo].analytic_kl:
            self._warn_sampled_kl()

    def _place(self, data: Data):
        """Training, test and validation rows (or None) on the device as stored (uint8 grey
        levels stay uint8, and binary draws are bool: converted batch by batch), binarised as
        the run asks; streamed rows stay in their file."""
        train_x, test_x = data.train_rows.to(self.device), data.test_rows.to(self.device)
        valid_x = None if data.valid_rows is None else data.valid_rows.to(self.device)
        binarization = self.config.binarization
        if self.config.binarizes:  # the draws of binarize_fixed, as evaluate makes them
            generator = torch.Generator().manual_seed(TEST_BINARIZE_SEED)
            test_x = binarize_rows(test_x.cpu(), generator).to(self.device)
            if valid_x is not None:
                generator = torch.Generator().manual_seed(TEST_BINARIZE_SEED)
                valid_x = binarize_rows(valid_x.cpu(), generator).to(self.device)
        if binarization == "static":  # one draw of its own, kept for the whole run
            generator = torch.Generator().manual_seed(self.config.train.seed)
            train_x = binarize_rows(train_x.cpu(), generator).to(self.device)
        return train_x, test_x, valid_x

    def _streams(self) -> list[tuple[torch.Tensor | None, bool]]:
        """The training rows an epoch steps through, as one or two streams of (rows, labelled):
        every row (rows None), or for the semi-supervised model the unlabelled rows and the
        labelled ones, a batch of each per step (:meth:`_orders`)."""
        if not self.vae.semi_supervised:
            return [(None, self.train_y is not None)]
        known = self.train_y >= 0
        streams = [(torch.nonzero(~known).flatten(), False), (torch.nonzero(known).flatten(), True)]
        return [(rows, labelled) for rows, labelled in streams if rows.numel()]

    def _warn_sampled_kl(self) -> None:
        probe = as_float(self.train_x[: self.config.train.batch_size]).to(self.device)
        probe = binarize_fixed(probe) if self.config.binarization == "dynamic" else probe
        given = () if self.train_y is None else (None, self.train_y[: probe.shape[0]])
        for site in sampled_kl_sites(self.vae.model, self.vae.guide, probe, *given):
            message = f"meanfield: no closed-form KL for {site}; it is estimated by sampling"
            if self.progress:
                tqdm.write(message)
            else:
                warnings.warn(message, stacklevel=4)

    def resume(self, state: dict) -> None:
        """Continue from a saved training state, with its exact RNG states.

        Raises
        ------
        CheckpointError
            If the state does not fit this model.
        """
        try:
            self.vae.load_state_dict(state["model"])
            self.optim.set_state(state["optimizer"])
        except (RuntimeError, ValueError, KeyError):
            raise CheckpointError(
                f"the training state in {self.run.dir} does not match its config.json; the run "
                "cannot be resumed, start a new one") from None
        progress = state["progress"]
        self._resumed = True
        self.rows, self.first_epoch = progress["rows"], progress["epoch"] + 1
        self.skipped, self.partial = progress.get("skipped", 0), progress.get("partial")
        self.binary_draw = progress.get("binary_draw", "bernoulli")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(progress["lr_schedule"])
        if self.valid_x is not None and self.rows:
            self.best_state = self._saved_best(state)
        if self.partial is None:
            checkpoint.restore_rng(state["rng"])
        else:  # stopped mid-epoch: redraw that epoch's data order, then go on from its step
            checkpoint.restore_rng(state["epoch_start_rng"])
            self.partial = {**self.partial, "rng": state["rng"]}

    def _saved_best(self, state: dict) -> dict:
        """The kept weights of a resumed run: ``model.safetensors``, written at the end of the
        last epoch; the training state's own weights where a kill came between the two files
        of the epoch that set the new best."""
        best = kept_epoch(self.rows)
        weights = checkpoint.read_weights(self.run.dir)
        if weights is not None and weights[1].get("epoch") == str(best):
            return weights[0]
        if best == self.rows[-1]["epoch"] and self.partial is None:
            kept = {k: v.clone() for k, v in state["model"].items()}
            # Written at once: a later mid-epoch save replaces the training state it came from.
            checkpoint.save_weights(self.vae, self.run.dir, state=kept, epoch=best)
            return kept
        raise CheckpointError(
            f"{self.run.dir / checkpoint.WEIGHTS_FILE} does not hold the weights of epoch {best}, "
            "the best one so far; the run cannot be resumed, start a new one")

    def fit(self) -> list[dict]:
        """Train for the remaining epochs, or until early stopping; returns the metrics rows.
        With a validation set the model ends with the weights of its best epoch.

        Raises
        ------
        TrainingError, TrainingInterrupted, CheckpointError
            As :func:`fit`.
        """
        try:
            for epoch in range(self.first_epoch, self.config.train.epochs + 1):
                if self.stop.requested and self.run is not None and self.run.dir is not None:
                    raise TrainingInterrupted(
                        f"interrupted after epoch {epoch - 1}; the state is saved, continue "
                        f"with: pyro-vae fit --resume {self.run.dir} --epochs "
                        f"{self.config.train.epochs}")
                self._run_epoch(epoch)
                if self.rows[-1].get("stopped_early"):
                    break
        finally:
            if self.board is not None:
                self.board.close()
        patience = self.config.train.early_stopping
        if patience is not None and self.progress and self.rows and \
                not self.rows[-1].get("stopped_early"):
            waited = epochs_without_improvement(self.rows, self.config.train.min_delta)
            if waited < patience:
                tqdm.write(f"early stopping was not needed: after {len(self.rows)} epochs the "
                           f"validation -ELBO had improved within the last {patience}")
            else:
                tqdm.write(f"reached --epochs {len(self.rows)} as the validation -ELBO stopped "
                           f"improving ({waited} epochs without)")
        if self.best_state is not None:
            self.vae.load_state_dict(self.best_state)
            if self.progress and self.rows:
                row = self.rows[kept_epoch(self.rows) - 1]
                tqdm.write(f"kept the model of epoch {row['epoch']}, the lowest validation "
                           f"-ELBO ({row['validation_neg_elbo']:.2f} nats/{self.unit})")
        if self.run is not None and self.run.dir is not None and self.data.is_image:
            self.save_pictures(self.run.dir)
        if self.board is not None and self.rows:
            self.board.finish(self.config, self.rows[kept_epoch(self.rows) - 1],
                              self.run.dir / TENSORBOARD_DIR)
        return self.rows

    def _after_epoch(self, row: dict) -> None:
        """The learning-rate schedule's step, the kept weights and the early-stopping check,
        after the epoch's metrics ``row``."""
        value = row.get("validation_neg_elbo")
        if self.scheduler is not None:
            if parse_lr_schedule(self.config.train.lr_schedule).needs_validation:
                self.scheduler.step(value)
            else:
                self.scheduler.step()
        if value is None:
            return
        if kept_epoch(self.rows) == row["epoch"]:
            self.best_state = {k: v.detach().cpu().clone()
                               for k, v in self.vae.state_dict().items()}
        patience = self.config.train.early_stopping
        if patience is not None and row["epoch"] < self.config.train.epochs and \
                epochs_without_improvement(self.rows, self.config.train.min_delta) >= patience:
            row["stopped_early"] = 1
            if self.progress:
                tqdm.write(
                    f"early stopping after epoch {row['epoch']}: the validation -ELBO has not "
                    f"fallen by more than {self.config.train.min_delta:g} nats/{self.unit} "
                    f"for {patience} epochs")

    def _run_epoch(self, number: int) -> None:
        # The epoch's time counts every training cost: its binarisation draw, its permutation,
        # moving batches and the steps (not the scoring and saving after it).
        epoch = _Epoch(number, checkpoint.capture_rng(), started=time.perf_counter())
        x = self.train_x
        if self.config.binarization == "dynamic" and not isinstance(x, MappedRows):
            x = self._draw(x)  # a fresh draw of the whole set (streamed: batch by batch)
        self._train_epoch(epoch, x)
        total, seen = epoch.total, epoch.seen
        if self.cluster is not None:
            total, seen = (distributed.all_sum(v, self.device) for v in (total, seen))
        seconds = time.perf_counter() - epoch.started
        try:
            row = self._metrics(number, seconds, total / seen)
        except PyroVAEError:
            raise
        except ValueError as err:  # Pyro's validation: the trained parameters left the support
            raise self._diverged(number, None, str(err).splitlines()[0]) from None
        self.rows.append(row)
        if self.progress:
            row = self.rows[-1]
            accuracy = (f", test accuracy {row['test_accuracy']:.1%}" if "test_accuracy" in row
                        else "")
            valid = (f", validation -ELBO {row['validation_neg_elbo']:.2f}"
                     if "validation_neg_elbo" in row else "")
            tqdm.write(
                f"epoch {number}/{self.config.train.epochs}: train -ELBO "
                f"{row['train_neg_elbo']:.2f}, test -ELBO {row['test_neg_elbo']:.2f}{valid} "
                f"nats/{self.unit}{accuracy} ({seconds:.1f} s)")
        self._after_epoch(self.rows[-1])
        self._record(number)
        if self.run is not None:
            world = self.cluster.world if self.cluster is not None else 1
            progress = {"epoch": number, "rows": self.rows, "world": world,
                        "skipped": self.skipped, **self._carried_state()}
            self.run.save_epoch(self.vae, self.optim, progress, self.rows,
                                kept=(self.best_state, kept_epoch(self.rows)))

    def _record(self, number: int) -> None:
        """The epoch's TensorBoard events (``--tensorboard``), written before its checkpoint
        into the folder that the checkpoint goes to: a kill between the two makes the resumed
        run repeat the epoch, whose stale events TensorBoard then drops (``purge_step``)."""
        grad_norm = self.optim.take_grad_norm()
        if not self.config.train.tensorboard or self.run is None:
            return
        if self.board is None:
            self.board = TensorBoardLog(self.first_epoch, resumed=self._resumed)
        last = bool(self.rows[-1].get("stopped_early")) or number == self.config.train.epochs
        self.board.epoch(self, self.rows[-1], grad_norm, last,
                         self.run.ensure() / TENSORBOARD_DIR)

    def _carried_state(self) -> dict:
        """What the training state carries besides the weights, optimiser, RNG and rows: the
        binarisation draw and the learning-rate scheduler's state (plain numbers)."""
        carried = {"binary_draw": self.binary_draw}
        if self.scheduler is not None:
            carried["lr_schedule"] = self.scheduler.state_dict()
        return carried

    def _metrics(self, epoch: int, seconds: float, train_loss: float) -> dict:
        """One row of ``metrics.csv``, with the test (and validation) set's plain −ELBO and
        the epoch's learning rate."""
        self.vae.eval()
        row = {"epoch": epoch, "train_seconds": round(seconds, 3),
               "train_neg_elbo": round(train_loss, 4),
               "test_neg_elbo": round(self._test_split(neg_elbo), 4)}
        if self.valid_x is not None:
            row["validation_neg_elbo"] = round(
                self._test_split(neg_elbo, self.valid_x, self.valid_y), 4)
            every = self.config.train.validation_nll_every
            if every and (epoch % every == 0 or epoch == self.config.train.epochs):
                row["validation_nll"] = round(
                    self._test_split(validation_nll, self.valid_x, self.valid_y), 4)
        row["lr"] = current_lr(self.optim.optimizer)
        if self.bits:
            row["test_bits_per_dim"] = round(
                row["test_neg_elbo"] / (self.test_x.shape[-1] * math.log(2)), 5)
        if self.vae.semi_supervised and self.test_y is not None:
            row["test_accuracy"] = round(self._test_split(classifier_accuracy), 5)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # training draws as without it
            y = self.test_y[:KL_TERMS_IMAGES] if self.test_y is not None else None
            terms = kl_terms(self.vae, self.test_x[:KL_TERMS_IMAGES],
                             y if self.vae.condition is not None else None)
        if terms is not None:
            row.update({f"test_{k}": round(v, 4) for k, v in terms.items()})
        return row

    def _test_split(self, score, x=None, y=None) -> float:
        """``score`` (:func:`neg_elbo` or
        :func:`~pyro_vae.evaluation.evaluate.classifier_accuracy`) of the test set (or of the
        rows ``x`` with conditions ``y``: the validation set), a mean over its rows; under
        torchrun each rank scores every world-th image and the sums are added up, so the
        evaluation is split rather than repeated."""
        if x is None:
            x, y = self.test_x, self.test_y

        def scored(x, y):
            if score is classifier_accuracy:
                return classifier_accuracy(self.vae, x, y)
            return score(self.vae, x, y=y)

        if self.cluster is None:
            return scored(x, y)
        rank, world = self.cluster.rank, self.cluster.world
        part = x[rank::world]
        y = y[rank::world] if y is not None else None
        total = scored(part, y) * part.shape[0] if part.shape[0] else 0.0
        return distributed.all_sum(total, self.device) / x.shape[0]

    def _order(self, x: torch.Tensor, epoch: int) -> tuple[torch.Tensor, int]:
        """The epoch's permutation of x's rows (this rank's shard) and the batch size.

        Under torchrun every rank draws the same permutation (seeded by seed and epoch) and
        steps through its own shard with its share of the batch."""
        streamed = isinstance(x, MappedRows)  # shuffled in blocks, to read the file in runs
        if self.cluster is None:
            order = x.order() if streamed else torch.randperm(x.shape[0], device=x.device)
            return order, self.config.train.batch_size
        generator = torch.Generator().manual_seed(self.config.train.seed * 100003 + epoch)
        order = (x.order(generator) if streamed
                 else torch.randperm(x.shape[0], generator=generator))
        order = distributed.shard(order, self.cluster)
        return order.to(x.device), distributed.check_batch(self.config.train.batch_size,
                                                           self.cluster)

    def _orders(self, x, epoch: int) -> tuple[list[_Stream], int]:
        """The epoch's streams of batches (:class:`_Stream`) and its number of steps.

        One stream (every row) is one permutation (:meth:`_order`). The semi-supervised
        model's two streams take a batch each per step: the longer stream is one permutation
        of its rows, the shorter is cycled through alongside it, a fresh permutation each
        pass, as implementations of Kingma et al. (2014) pair labelled and unlabelled
        minibatches; its batch is the whole stream when that is smaller than --batch-size.
        With ``--labelled-passes P`` the labelled stream is P permutations instead, its
        batches spread evenly over the epoch's steps (batch j at step ⌊j·steps/batches⌋), as
        Pyro's ss_vae_M2.py interleaves one pass of them (P = 1); at most one a step, the last
        holding what is left of the P passes.

        Raises
        ------
        ConfigError
            If ``--labelled-passes`` asks for more labelled batches than the epoch has steps.
        """
        if self.streams[0][0] is None:
            order, batch_size = self._order(x, epoch)
            return [_Stream(order, batch_size, self.streams[0][1], False, None)], math.ceil(
                order.shape[0] / batch_size)
        world = self.cluster.world if self.cluster is not None else 1
        generator = None
        if self.cluster is not None:  # the same orders on every rank
            generator = torch.Generator().manual_seed(self.config.train.seed * 100003 + epoch)
        batch = self.config.train.batch_size
        if self.cluster is not None:  # a global batch that splits over the processes
            distributed.check_batch(batch, self.cluster)
        sizes = [min(batch, rows.numel() - rows.numel() % world) for rows, _ in self.streams]
        if min(sizes) < world:
            raise ConfigError(f"fewer labelled or unlabelled images than the {world} processes; "
                              "train in fewer processes")
        steps = max(math.ceil(rows.numel() / size) for (rows, _), size in zip(self.streams, sizes))
        orders = []
        for (rows, labelled), size in zip(self.streams, sizes):
            longest = math.ceil(rows.numel() / size) == steps
            passes = 1 if longest else math.ceil(steps * size / rows.numel())
            at = None
            spread = self.config.train.labelled_passes
            if labelled and spread is not None:
                passes, batches = spread, math.ceil(spread * rows.numel() / size)
                if batches > steps:
                    raise ConfigError(
                        f"--labelled-passes {spread} needs {batches} labelled batches an epoch "
                        f"but an epoch has {steps} steps; give at most "
                        f"{steps * size // rows.numel()} (or leave it out for a labelled batch "
                        "every step)")
                at = {j * steps // batches: j for j in range(batches)}
            order = torch.cat([rows[torch.randperm(rows.numel(), generator=generator).to(
                rows.device)] for _ in range(passes)])
            if not longest and at is None:
                order = order[: steps * size]
            if self.cluster is not None:
                order = distributed.shard(order, self.cluster)
            cycled = passes > 1 if at is not None else not longest
            orders.append(_Stream(order, size // world, labelled, cycled, at))
        return orders, steps

    def _train_epoch(self, epoch: _Epoch, x: torch.Tensor) -> None:
        """One epoch of SVI steps over the orders of :meth:`_orders`, from where a stopped
        epoch left off."""
        orders, steps = self._orders(x, epoch.number)
        n = sum(stream.order.shape[0] for stream in orders)
        self.vae.train()
        if self.partial is not None:  # the permutation is drawn again above; now the later RNG
            checkpoint.restore_rng(self.partial["rng"])
            epoch.step, epoch.total = self.partial["step"], self.partial["total"]
            done = sum(min(s.order.shape[0], s.size * (epoch.step if s.at is None else sum(
                step < epoch.step for step in s.at))) for s in orders)
            epoch.seen = self.partial.get("seen", done)
            epoch.started -= self.partial["seconds"]  # the stopped process's share
            if self.optim.track_grad_norm and self.partial.get("grad_norm"):
                total, steps_taken = self.partial["grad_norm"]
                self.optim.grad_norm_sum = torch.tensor(total, dtype=torch.float32)
                self.optim.grad_norm_steps = steps_taken
            self.partial = None
        else:
            done = 0
        with tqdm(total=n, desc=f"epoch {epoch.number}/{self.config.train.epochs}", unit="img",
                  # disable=None hides the bar when stderr is not a terminal (CI logs, pipes).
                  disable=None if self.progress else True, leave=False, dynamic_ncols=True,
                  initial=done) as bar:
            for step in range(epoch.step, steps):
                for order, size, labelled, cycled, at in orders:
                    j = step if at is None else at.get(step)
                    if j is None:  # a labelled stream spread over the epoch, not at this step
                        continue
                    positions = order[j * size : (j + 1) * size]
                    if not positions.numel():
                        continue
                    batch = self._batch(x, positions, fresh=cycled)
                    y = self.train_y[positions] if labelled else None
                    loss = self._take_step(batch, y, epoch, step, steps)
                    bar.update(batch.shape[0])
                    if step % 20 == 0 and loss is not None:
                        bar.set_postfix_str(f"-ELBO {loss / batch.shape[0]:.1f}", refresh=False)
                epoch.step = step + 1
                if step + 1 < steps:
                    self._between_steps(epoch)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    def _batch(self, x: torch.Tensor | MappedRows, positions: torch.Tensor,
               fresh: bool = False) -> torch.Tensor:
        """The rows at ``positions`` as float32 on the device: read from the file when
        streamed (and binarised here, under dynamic binarisation), converted from uint8 grey
        levels or bool draws on the device.

        ``fresh``: the rows of a stream cycled through several times an epoch (the
        semi-supervised model's labelled images, when fewer than the unlabelled ones). Under
        dynamic binarisation they are drawn again from the stored grey levels at every
        presentation, as every image is once an epoch: the epoch's one draw of the training
        set, ``x``, would show the decoder and the classifier the same binary image each time
        round, and both fit those few draws instead of the images."""
        dynamic = self.config.binarization == "dynamic"
        if fresh and dynamic and not isinstance(x, MappedRows):
            return as_float(self._draw(self.train_x[positions]))
        batch = x[positions]
        if isinstance(x, MappedRows):
            batch = batch.to(self.device, non_blocking=True)
            return as_float(self._draw(batch) if dynamic else batch)
        return as_float(batch)

    def _draw(self, rows: torch.Tensor) -> torch.Tensor:
        """The dynamic binarisation of stored rows (N, D) → (N, D) bool, as :attr:`binary_draw`
        says, from the global RNG."""
        return draw_binary(rows) if self.binary_draw == "levels" else binarize_rows(rows)

    def kl_weight(self, epoch: int, step: int, steps: int, device) -> torch.Tensor | None:
        """The KL weight of this step as a 0-d tensor (an argument of the model and guide, so
        the compiled objective follows the schedule), or None when it is always 1."""
        if not scheduled(self.config):
            return None
        return torch.tensor(kl_weight(self.config, epoch, step, steps), device=device)

    def _take_step(self, batch: torch.Tensor, y: torch.Tensor | None, epoch: _Epoch, step: int,
                   steps: int):
        """One SVI step on ``batch`` (and its conditions ``y``, for a conditional model or the
        labelled batches of the semi-supervised one); returns its loss, or None for a skipped
        non-finite batch."""
        weight = self.kl_weight(epoch.number, step, steps, batch.device)
        # Pyro checks every distribution's arguments and values on the first step of each
        # epoch; the data were checked on loading, and non-finite losses and gradients are
        # caught below, so later steps skip those checks.
        try:
            loss = self.step(batch, weight, y, validate=step == 0)
        except PyroVAEError:  # a ValueError too, but the user's to fix, not a divergence
            raise
        except ValueError as err:  # Pyro's validation: a parameter left its support
            raise self._diverged(epoch.number, step, str(err).splitlines()[0]) from None
        reason = None
        if self.optim.skipped:  # the same on every rank under torchrun: gradients are averaged
            reason = "a gradient is not finite" if math.isfinite(loss) else f"the loss is {loss}"
        elif not math.isfinite(loss) and self.cluster is None:
            reason = f"the loss is {loss}"
        if reason is None:
            epoch.total += loss
            epoch.seen += batch.shape[0]
            return loss
        self.skipped += 1
        allowed = self.config.train.skip_nonfinite
        if self.skipped > allowed:
            raise self._diverged(epoch.number, step, reason)
        tqdm.write(f"epoch {epoch.number}, step {step + 1}: {reason}; batch skipped "
                   f"({self.skipped} of --skip-nonfinite {allowed})", file=sys.stderr)
        return None

    def _between_steps(self, epoch: _Epoch) -> None:
        """Honour a stop request (save, then raise) and ``--checkpoint-every``."""
        every = self.config.train.checkpoint_every
        if self.stop.requested:
            # A stop before the first epoch ends saves nothing, unless --checkpoint-every made
            # the folder already: an old run in --out is replaced only by saved progress.
            saved = None
            if self.run is not None and self.run.dir is not None:
                saved = self._save_partial(epoch)
            raise _interrupted(saved, epoch.number, epoch.step, self.config)
        if every and self.run is not None and self.cluster is None and epoch.step % every == 0:
            self._save_partial(epoch)

    def _save_partial(self, epoch: _Epoch) -> Path:
        partial = epoch.progress(self.skipped)
        if self.optim.grad_norm_steps:  # the epoch's gradient norms so far (--tensorboard)
            partial["grad_norm"] = [float(self.optim.grad_norm_sum), self.optim.grad_norm_steps]
        return self.run.save_partial(self.vae, self.optim, {
            "epoch": epoch.number - 1, "rows": self.rows, "partial": partial,
            "skipped": self.skipped, **self._carried_state()}, epoch.start_rng)

    def _diverged(self, epoch: int, step: int | None, reason: str) -> TrainingError:
        """The one-line message of a stop on a non-finite loss or gradient (``step`` None:
        on scoring the test set after the epoch's steps)."""
        run_dir = self.run.dir if self.run is not None else None
        if run_dir is not None and self.rows:
            saved = f"the checkpoint of epoch {self.rows[-1]['epoch']} in {run_dir} is intact"
        elif run_dir is not None:
            saved = f"{run_dir} holds only a mid-epoch training state"
        else:
            saved = "no epoch had finished, so nothing was saved"
        skip = ("" if self.config.train.skip_nonfinite or step is None
                else ", or skip a few such batches with --skip-nonfinite N")
        where = f"step {step + 1}" if step is not None else "scoring the test set"
        return TrainingError(
            f"training diverged at epoch {epoch}, {where} ({reason}); lower --lr, add "
            f"--clip-norm, or check the likelihood's scale{skip}; {saved}")

    def save_pictures(self, run_dir: Path) -> None:
        """``samples.png`` (for a prior that can be sampled; for a label-conditioned model
        one row per class) and ``reconstructions.png``."""
        vae, shape = self.vae, self.data.data_shape
        if vae.can_sample:
            y = pictures.class_rows(vae, min(vae.num_classes or 0, 16))
            num = NUM_SAMPLES if y is None else y.shape[0]
            pictures.save_grid(vae, vae.sample(num, mean=True, y=y), shape,
                               run_dir / "samples.png")
        shown = as_float(self.data.test_rows[:NUM_RECONSTRUCTIONS]).to(self.device)
        seen = (as_float(self.test_x[:NUM_RECONSTRUCTIONS]) if self.config.binarizes else None)
        y = (None if self.test_y is None or vae.semi_supervised
             else self.test_y[:NUM_RECONSTRUCTIONS])
        grid, per_row = pictures.reconstructions(vae, shown, seen, NUM_RECONSTRUCTIONS, y=y)
        pictures.save_grid(vae, grid, shape, run_dir / "reconstructions.png", nrow=per_row)


def _interrupted(run_dir: Path | None, epoch: int, step: int, config: Config):
    """The message of a stop request: where the state was saved and how to resume."""
    if run_dir is None:
        return TrainingInterrupted(
            f"interrupted in epoch {epoch} after step {step}; no run directory held a "
            "finished epoch yet, so nothing was saved")
    return TrainingInterrupted(
        f"interrupted in epoch {epoch} after step {step}; the state is saved, continue "
        f"with: pyro-vae fit --resume {run_dir} --epochs {config.train.epochs}")


def fit(
    model: Config | VAE | None = None,
    out: str | Path | None = None,
    *,
    data: Data | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **options,
) -> FitResult:
    """Train a VAE with SVI and the objective ``--elbo`` names, and return it.

    Parameters
    ----------
    model : Config or VAE, optional
        A :class:`Config` of a built-in model (``options``, any flat option such as
        ``epochs=5``, override it), or a :class:`VAE` of your own networks and prior, which
        is trained as it is with the data and training ``options``.
    out : path, optional
        Run directory to write: ``config.json``, ``model.safetensors`` and
        ``training_state.safetensors`` after every epoch, ``metrics.csv``,
        ``training_curve.png``, and at the end ``samples.png`` and ``reconstructions.png``
        for image data. Nothing is written when ``out`` is None.
    data : Data, optional
        Data already in memory, instead of loading ``dataset``; ``limit`` and the checks of
        :func:`pyro_vae.io.data.check_data` still apply.
    resume : path, optional
        Continue the run in this directory from its last completed epoch (or mid-epoch
        save), with its own configuration; only ``epochs`` (the new total) may be given, and
        ``model`` only for a user-built run (the same VAE, built again). On the CPU the
        continued run reproduces the uninterrupted one: same metrics, same weights.
    overwrite : bool
        Replace the run already in ``out`` (only its files; folders that are not pyro_vae
        runs are refused).
    progress : bool
        Show a tqdm progress bar and a line per epoch.

    Returns
    -------
    FitResult
        ``(model, metrics)``: the trained :class:`VAE` in eval mode and a list of dicts with
        the keys :data:`METRIC_COLUMNS` (losses in nats per image). ``train_neg_elbo`` is the
        training objective's value (the negative IWAE bound for ``elbo="iwae"``, the weighted
        objective under ``beta`` and warm-up; for the semi-supervised model U(x) of the
        unlabelled images and, for the labelled ones, their −ELBO plus −α·log q(y|x), over
        every row a step took, labelled rows counted as often as they are cycled through);
        ``test_neg_elbo`` is always the plain single-sample −ELBO (U(x) of the class summed
        out, for the semi-supervised model), so runs with different objectives compare.
        Where the guide and the prior factorise over the latent dimensions (not for the
        semi-supervised model), ``test_mi``, ``test_tc`` and ``test_dim_kl`` split the KL term
        on the first 1000 test images into index-code mutual information, total correlation
        and dimension-wise KL (Chen et al. 2018, eq. 2; nats per image;
        :func:`~pyro_vae.evaluation.evaluate.kl_terms`).

    Raises
    ------
    ConfigError, DataError, RunDirError
        For invalid options, data or output folders, before anything in ``out`` changes;
        RunDirError also at once if another process is writing ``out`` (or ``resume``): the
        run directory is locked for the whole call (:class:`~pyro_vae.io.lock.RunLock`).
    TrainingError
        If the loss or a gradient becomes non-finite (after ``skip_nonfinite`` skipped
        batches). An old run in ``out`` is only replaced once the new run has a checkpoint to
        write, and the last checkpoint stays loadable.
    CheckpointError
        With ``resume``, if the run has no usable training state; and if a checkpoint cannot
        be written (disk full, folder no longer writable), the previous one staying intact.
    TrainingInterrupted
        On SIGINT or SIGTERM, after the current step; with a run directory, the state is saved
        first (``training_state.safetensors``) and the message says how to resume.
    """
    cluster = distributed.cluster_from_env()
    if resume is not None:
        if out is not None or overwrite:
            raise ConfigError("--resume continues the run in its own folder; drop --out and "
                              "--overwrite")
        target, command, config = resume, "pyro-vae fit --resume", None
    else:
        if data is not None:  # checked as the data are, not as the default dataset
            options = {**options, "dataset": _dataset_of(data)}
        config = _run_config(model, options)
        target = out
        command = "pyro-vae fit --overwrite" if overwrite else "pyro-vae fit"
        if out is not None and not (Path(out) / checkpoint.PREVIOUS_DIR).exists():
            checkpoint.check_run_dir(out, overwrite)  # before the lock makes the folder
    writes = (target is not None and (cluster is None or cluster.is_main)
              and (resume is None or Path(resume).is_dir()))  # else _resume says what is wrong
    # One writer per run directory, from before the first read to the last write.
    with RunLock(target, command) if writes else contextlib.nullcontext():
        if writes:
            checkpoint.recover_swap(target)  # a killed --overwrite's, before anything reads
        return _fit(model, config, out, data, resume, overwrite, progress, cluster, options)


def _fit(model, config, out, data, resume, overwrite, progress, cluster, options) -> FitResult:
    """:func:`fit`, with the run directory locked."""
    vae = model if isinstance(model, VAE) else None
    state = None
    if resume is not None:
        config, out, state = _resume(resume, model, options)
    device = _check_cluster(config, cluster, resuming=state is not None)
    if cluster is not None and not cluster.is_main:
        out, progress = None, False  # rank 0 alone writes and reports
    if out is not None and state is None:
        checkpoint.check_run_dir(out, overwrite)
    config, data = _data_for(config, data)
    if vae is None:
        pyro.set_rng_seed(config.train.seed)
        vae = VAE.from_config(config)
    else:
        _fit_user_model(vae, data)
        pyro.set_rng_seed(config.train.seed)
    if state is None and not vae.adapted:
        vae.adapt(sample_rows(data.train_rows), data.train_covariates)
    if out is not None:
        checkpoint.check_free_space(out, vae)
    run = RunWriter(out, overwrite, config, existing=state is not None) if out else None
    # Parameters live in the modules; the param-store scope keeps Pyro's global store as it was.
    with pyro.validation_enabled(True), pyro.get_param_store().scope(), \
            stop_on_signals(enabled=cluster is None) as stop:
        plan = TrainingPlan(vae, data, config, run=run, progress=progress, cluster=cluster,
                            stop=stop, device=device)
        if state is not None:
            plan.resume(state)
        rows = plan.fit()
    return FitResult(vae.eval(), rows)


def _run_config(model, options: dict) -> Config:
    """The run's :class:`Config`: a built-in model's, or a user-built model's sections."""
    if isinstance(model, VAE):
        sections = {**section_options(DataConfig), **section_options(TrainConfig)}
        foreign = sorted(set(options) - set(sections))
        if foreign:
            raise ConfigError(
                f"option {foreign[0]!r} describes a built-in model; a VAE you built brings its "
                "own networks and parts, so give only data and training options")
        return Config.of(model.describe(), DataConfig(**section_values(options, DataConfig)),
                         TrainConfig(**section_values(options, TrainConfig)))
    if model is not None and not isinstance(model, Config):
        raise ConfigError(f"fit takes a Config or a VAE, not {type(model).__name__}")
    return (model or Config()).replace(**options)


def _dataset_of(data: Data) -> str:
    """The ``dataset`` of a run on data given in memory that are not stored as a named
    dataset (:func:`_data_for`): their source (a file that ``evaluate`` and ``encode`` read
    again), or :data:`IN_MEMORY` where they have none, are a named dataset's rows that its
    name alone does not give back, or are a table whose source is not a table file (its
    columns, not the source's name, decide what ``--condition NAMES`` may take)."""
    if not data.source or data.dataset is not None or (
            data.columns is not None and not is_table_file(data.source)):
        return IN_MEMORY
    return data.source


def _data_for(config: Config, data: Data | None) -> tuple[Config, Data]:
    """The data (loaded or given, checked) and the config with their shape."""
    if data is None:
        data = load_data(config)
    else:
        # A named dataset's first `given` training images (load_data's, with no validation
        # rows held out of them yet) are stored as such, so that a resumed run, evaluate and
        # encode read the same rows again.
        named = data.dataset if data.valid_rows is None else None
        given = data.train_rows.shape[0]
        data = prepare_data(read_validation(data, config), config)
        config = (config.replace(dataset=_dataset_of(data)) if named is None else
                  config.replace(dataset=named, limit=config.data.limit or given))
    _check_validation(config, data)
    if data.columns is not None and config.data.columns is None:  # a table's names
        config = config.replace(columns=data.columns, classes=data.classes)
    if config.data.stream is None and config.data.dataset.lower().endswith(".npy"):
        config = config.replace(stream=data.streamed)  # stored as decided
    if data.streamed and config.binarization == "static":
        raise ConfigError("--binarize static keeps one draw of every training image in memory, "
                          "which streamed data cannot; use --binarize dynamic (drawn batch by "
                          "batch) or --no-stream")
    if config.model.condition == "label" and config.model.num_classes is None:
        config = config.replace(num_classes=num_classes(data))  # as the labels decide
    if config.model.semi_supervised:
        data = hide_labels(data, config.data.labelled_count, config.train.seed,
                           config.model.num_classes)
        if config.train.classifier_weight == 0 and bool((data.train_labels >= 0).all()):
            raise ConfigError(f"--labelled {config.data.labelled} keeps the label of every "
                              "training image, so the classifier q(y|x) learns only from the "
                              "classification term; give --classifier-weight > 0")
    return config.for_data(data.data_shape, data.train_rows.shape[0]), data  # as decided


def _check_validation(config: Config, data: Data) -> None:
    """Refuse early stopping or a plateau schedule without a validation set."""
    train = config.train
    needs = [name for name, needed in (
        (f"--early-stopping {train.early_stopping}", train.early_stopping is not None),
        (f"--lr-schedule {train.lr_schedule}",
         parse_lr_schedule(train.lr_schedule).needs_validation),
        (f"--validation-nll-every {train.validation_nll_every}",
         train.validation_nll_every is not None)) if needed]
    if needs and data.valid_rows is None:
        raise ConfigError(f"{needs[0]} goes by the validation -ELBO, and --validation-fraction 0 "
                          "leaves no validation set; give a share such as 0.1 or "
                          "--validation-dataset PATH")
    if train.validation_nll_every is not None and not (
            config.model.guide.cls.has_density and config.model.prior.name != "none"):
        raise ConfigError("--validation-nll-every needs a guide with a density and a proper "
                          "prior (the importance weights p(x, z)/q(z|x)); drop it")
    if train.min_delta and train.early_stopping is None:
        raise ConfigError("--min-delta applies to --early-stopping; give --early-stopping "
                          "PATIENCE or drop --min-delta")


def _fit_user_model(vae: VAE, data: Data) -> None:
    """Give a user-built model its data shape, or refuse data of another shape."""
    if vae.data_shape is None:
        vae.set_data_shape(data.data_shape)
    elif tuple(vae.data_shape) != tuple(data.data_shape):
        raise DataError(f"the model was built for data of shape {vae.data_shape} but the data "
                        f"have shape {data.data_shape}")


def _check_cluster(config: Config, cluster, resuming: bool) -> torch.device:
    """The device; under torchrun, what the group supports, and this rank's device."""
    device = resolve_device(config.train.device)
    if config.train.jit:
        reason = jit_unsupported(config)
        if reason is not None:
            raise ConfigError(f"--jit is not possible here: {reason}; drop --jit")
    if cluster is None:
        return device
    refusals = [
        (resuming, "resuming a run under torchrun is not supported yet; resume it in one "
                   "process"),
        (not OBJECTIVES[config.train.elbo].data_parallel,
         f"--elbo {config.train.elbo} is not supported under torchrun yet (its estimator is not "
         "wired to DistributedDataParallel); use one process"),
        (OBJECTIVES[config.train.elbo].batch_statistic or config.train.free_bits,
         f"{'--free-bits' if config.train.free_bits else '--elbo ' + config.train.elbo} "
         "estimates its term from the whole batch, which torchrun splits over processes, so "
         "the objective would change; use one process"),
        (config.train.jit, "--jit is not supported under torchrun yet; drop --jit"),
        (config.train.checkpoint_every, "--checkpoint-every is not supported under torchrun "
         "yet (runs are saved after every epoch); drop it"),
    ]
    for refused, message in refusals:
        if refused:
            raise ConfigError(message)
    if config.train.batch_size is not None:  # else decided by the data, and checked then
        distributed.check_batch(config.train.batch_size, cluster)
    return distributed.start(cluster, device)


def _resume(run_dir, model, options: dict) -> tuple[Config, Path, dict]:
    """The config, run directory and training state of the run to continue."""
    if isinstance(model, Config) or set(options) - {"epochs"}:
        raise ConfigError(
            "--resume takes every option from the run's config.json; give only --epochs "
            "(the new total)")
    config = checkpoint.read_config(run_dir)
    if config.model.user_built != isinstance(model, VAE):
        raise ConfigError(
            "this run holds a user-built model: pass the same VAE, built again, as "
            "fit(vae, resume=run_dir)" if config.model.user_built else
            "this run holds a built-in model: resume it without passing a model")
    state = checkpoint.load_training_state(run_dir)
    if state["progress"].get("world", 1) != 1:
        raise ConfigError(
            f"the run in {run_dir} was trained by {state['progress']['world']} processes under "
            "torchrun; resuming such runs is not supported yet")
    done = state["progress"]["epoch"]
    epochs = options.get("epochs", config.train.epochs)
    stopped = state["progress"]["rows"][-1:] and state["progress"]["rows"][-1].get("stopped_early")
    if stopped:
        raise ConfigError(
            f"the run in {run_dir} stopped early after epoch {done}: its validation -ELBO had "
            f"stopped improving, so there is nothing to continue; start a new run to train more")
    if config.train.lr_schedule.startswith("cosine") and epochs != config.train.epochs:
        raise ConfigError(
            f"the run in {run_dir} anneals its learning rate (--lr-schedule "
            f"{config.train.lr_schedule}) over its {config.train.epochs} epochs; resume it with "
            f"--epochs {config.train.epochs}, or start a new run for a longer one")
    if epochs <= done:
        raise ConfigError(
            f"the run in {run_dir} has trained {done} epochs already; give --epochs N with "
            f"N > {done} to continue it")
    checkpoint.remove_stale_temporaries(run_dir)  # after every check: a refusal changes nothing
    return config.replace(epochs=epochs), Path(run_dir), state
