"""Training with ``pyro.infer.SVI``: the loss is Pyro's ELBO of the model and guide."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from . import checkpoint, distributed, plots
from .config import Config
from .data import Data, binarize, binarize_fixed, load_data, prepare_data
from .errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from .model import VAE
from .objectives import build_elbo, jit_unsupported, sampled_kl_sites
from .optim import JointOptim
from .priors import FlatPrior

#: Columns of ``metrics.csv``; losses in nats per image, times in seconds. Discrete likelihoods
#: with a stochastic guide add ``test_bits_per_dim``.
METRIC_COLUMNS = ("epoch", "train_seconds", "train_neg_elbo", "test_neg_elbo")
#: Images drawn in ``samples.png`` and test images shown in ``reconstructions.png``.
NUM_SAMPLES, NUM_RECONSTRUCTIONS = 64, 32


class FitResult(NamedTuple):
    """What :func:`fit` returns: the trained model and one metrics dict per epoch."""

    model: VAE
    metrics: list[dict]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU.

    Raises
    ------
    ConfigError
        If ``"cuda"`` is asked for and no CUDA device is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    return torch.device(name)


@torch.no_grad()
def neg_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Single-sample estimate of −ELBO(x) by ``Trace_ELBO``, averaged over x (nats per image).

    ``x`` is (N, D) on the model's device, already binarised where the likelihood needs it.
    The model is scored in evaluation mode: the plain ELBO, without β, corruption or
    contractive penalty.
    """
    elbo, total, was_training = Trace_ELBO(), 0.0, vae.training
    vae.eval()
    for start in range(0, x.shape[0], batch_size):
        total += elbo.loss(vae.model, vae.guide, x[start : start + batch_size])
    vae.train(was_training)
    return total / x.shape[0]


def kl_weight(config: Config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """β, or during the first ``kl_warmup`` epochs β·t/T rising linearly per step.

    KL annealing of Bowman et al. (2016, §3.1) and Sønderby et al. (2016, §2.4). ``epoch``
    counts from 1, ``step`` from 0.
    """
    if config.kl_warmup == 0:
        return config.beta
    progress = ((epoch - 1) * steps_per_epoch + step + 1) / (config.kl_warmup * steps_per_epoch)
    return config.beta * min(1.0, progress)


class TrainingStep:
    """One SVI step on a batch, as :func:`fit` takes it: Pyro's ELBO of ``vae.model`` and
    ``vae.guide``, its gradient, and one step of ``optim``.

    Steps called with ``validate=True`` (``fit`` does so on the first step of every epoch) run
    the uncompiled objective with Pyro's validation on, so every distribution's parameters and
    values are checked. The others run the compiled objective (:func:`build_elbo` with
    ``jit=True``) where ``config.jit`` allows it, and the uncompiled one otherwise. Both give
    the same numbers from the same random stream: Pyro records a new trace for each new batch
    size by running the objective a few times, and that happens here on a copy of the random
    state, so compiling consumes none of it.

    Parameters
    ----------
    vae : VAE
        The model, in training mode.
    optim : pyro.optim.PyroOptim
        Its optimiser, e.g. :class:`~pyro_vae.optim.JointOptim`.
    config : Config
        Gives the objective, particles and ``jit``.

    Calling it with a batch (batch, D) returns the loss, −ELBO summed over the batch, in nats.
    """

    def __init__(self, vae: VAE, optim, config: Config):
        self.svi = SVI(vae.model, vae.guide, optim, build_elbo(config))
        self.compiled = self._compiled_elbo = None
        if config.jit or (config.jit is None and jit_unsupported(config) is None):
            self._compiled_elbo = build_elbo(config, jit=True)
            self.compiled = SVI(vae.model, vae.guide, optim, self._compiled_elbo)
        self._traced_sizes: set[int] = set()

    def __call__(self, batch: torch.Tensor, validate: bool = False) -> float:
        if validate or self.compiled is None:
            with pyro.validation_enabled(validate):
                return self.svi.step(batch)
        size = batch.shape[0]
        # The plain interpreter runs the recorded graph, and autograd differentiates it as it
        # does eager code: TorchScript's optimising executor is slower for these graphs.
        with pyro.validation_enabled(False), torch.jit.optimized_execution(False):
            if size not in self._traced_sizes:
                self._trace(batch)
            return self.compiled.step(batch, num=size)

    def _trace(self, batch: torch.Tensor) -> None:
        """Record the objective for this batch size, on a copy of the random state."""
        devices = [batch.device] if batch.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # torch 2.9+ announces the end of TorchScript; Pyro's JIT objectives still use it.
            warnings.filterwarnings("ignore", message=".*torch.jit.trace", category=FutureWarning)
            # SVI's own bound methods: Pyro keys its traces on the model's and guide's ids.
            self._compiled_elbo.differentiable_loss(
                self.compiled.model, self.compiled.guide, batch, num=batch.shape[0])
        self._traced_sizes.add(batch.shape[0])


def fit(
    config: Config | None = None,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    data: Data | None = None,
    resume: str | Path | None = None,
    **options,
) -> FitResult:
    """Train a VAE with SVI and the objective ``config.elbo`` names, and return it.

    Parameters
    ----------
    config : Config, optional
        The run; ``options`` (any :class:`Config` field, e.g. ``epochs=5``) override it.
    out : path, optional
        Run directory to write: ``config.json`` and ``model.safetensors`` after every epoch,
        ``metrics.csv``, ``training_curve.png``, and at the end ``samples.png`` and
        ``reconstructions.png`` for image data. Nothing is written when ``out`` is None.
    overwrite : bool
        Replace the run already in ``out`` (only its files; folders that are not pyro_vae
        runs are refused).
    progress : bool
        Show a tqdm progress bar and a line per epoch.
    data : Data, optional
        Data already in memory, instead of loading ``config.dataset``; ``config.limit`` and
        the checks of :func:`pyro_vae.data.check_data` still apply.
    resume : path, optional
        Continue the run in this directory from its last completed epoch, with its own
        configuration; only ``epochs`` (the total) may be given. On the CPU the continued run
        reproduces the uninterrupted one: same metrics, same weights.

    Returns
    -------
    FitResult
        ``(model, metrics)``: the trained :class:`VAE` in eval mode and a list of dicts with
        the keys :data:`METRIC_COLUMNS` (losses in nats per image). ``train_neg_elbo`` is the
        training objective's value (the negative IWAE bound for ``elbo="iwae"``, the weighted
        objective under ``beta`` and warm-up); ``test_neg_elbo`` is always the plain
        single-sample −ELBO, so runs with different objectives compare.

    Raises
    ------
    ConfigError, DataError, RunDirError
        For invalid options, data or output folders, before anything in ``out`` changes.
    TrainingError
        If the loss or a gradient becomes non-finite (after ``config.skip_nonfinite`` skipped
        batches). An old run in ``out`` is only replaced once the new run has a checkpoint to
        write, and the last checkpoint stays loadable.
    CheckpointError
        With ``resume``, if the run has no usable training state; and if a checkpoint cannot
        be written (disk full, folder no longer writable), the previous one staying intact.
    TrainingInterrupted
        On SIGINT or SIGTERM, after the current step; with a run directory, the state is saved
        first (``training_state.safetensors``) and the message says how to resume.
    """
    state = None
    if resume is not None:
        config, out, state = _resume(resume, config, options)
        overwrite, options = False, {}
    config = (config or Config()).replace(**options)
    device = resolve_device(config.device)
    cluster = distributed.cluster_from_env()
    if cluster is not None and state is not None:
        raise ConfigError("resuming a run under torchrun is not supported yet; resume it in "
                          "one process")
    if cluster is not None and config.elbo == "iwae":
        raise ConfigError("--elbo iwae is not supported under torchrun yet (Pyro's RenyiELBO has "
                          "no differentiable loss for DistributedDataParallel); use one process")
    if cluster is not None and config.jit:
        raise ConfigError("--jit is not supported under torchrun yet; drop --jit")
    if cluster is not None and config.checkpoint_every:
        raise ConfigError("--checkpoint-every is not supported under torchrun yet (runs are "
                          "saved after every epoch); drop it")
    if cluster is not None:  # launched by torchrun: one process of a data-parallel group
        distributed.check_batch(config.batch_size, cluster)
        device = distributed.start(cluster, device)
        if not cluster.is_main:
            out, progress = None, False  # rank 0 alone writes and reports
    if out is not None and state is None:
        checkpoint.check_run_dir(out, overwrite)
    if data is None:
        data = load_data(config)
    else:
        data = prepare_data(data, config)
        config = config.replace(dataset=data.source or "in-memory data")
    config = config.replace(data_shape=data.data_shape)
    # Parameters live in the modules; the param-store scope keeps Pyro's global store as it was.
    with pyro.validation_enabled(True), pyro.get_param_store().scope(), \
            _stop_on_signals(enabled=cluster is None) as stop:
        return _fit(config, data, device, out, overwrite, progress, cluster, state, stop)


def _resume(run_dir, config, options) -> tuple[Config, Path, dict]:
    """The config, run directory and training state of the run to continue."""
    if config is not None or set(options) - {"epochs"}:
        raise ConfigError(
            "--resume takes every option from the run's config.json; give only --epochs "
            "(the new total)"
        )
    config = checkpoint.read_config(run_dir)
    state = checkpoint.load_training_state(run_dir)
    if state["progress"].get("world", 1) != 1:
        raise ConfigError(
            f"the run in {run_dir} was trained by {state['progress']['world']} processes under "
            "torchrun; resuming such runs is not supported yet"
        )
    done = state["progress"]["epoch"]
    epochs = options.get("epochs", config.epochs)
    if epochs <= done:
        raise ConfigError(
            f"the run in {run_dir} has trained {done} epochs already; give --epochs N with "
            f"N > {done} to continue it"
        )
    checkpoint.remove_stale_temporaries(run_dir)  # after every check: a refusal changes nothing
    return config.replace(epochs=epochs), Path(run_dir), state


class _StopRequest:
    """Set by the first SIGINT or SIGTERM: finish the current step, save, stop."""

    requested = False


class _Stopped(Exception):
    """A stop request honoured after ``partial["step"]`` steps of the current epoch."""

    def __init__(self, partial: dict):
        super().__init__(partial["step"])
        self.partial = partial


class _Diverged(Exception):
    def __init__(self, step: int, reason: str):
        super().__init__(reason)
        self.step, self.reason = step, reason


@contextlib.contextmanager
def _stop_on_signals(enabled: bool = True):
    """Turn SIGINT and SIGTERM into a request to stop after the current step; a second SIGINT
    quits at once (every file is written atomically, so the last checkpoint stays whole).
    Signal handlers can only be set from the main thread; elsewhere nothing changes."""
    stop = _StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        stop.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stderr.write("\nstopping after this step and saving the run; "
                         "press Ctrl-C again to quit at once\n")

    # A process started with SIGINT ignored (nohup, background jobs) keeps ignoring it.
    watched = [sig for sig in (signal.SIGINT, signal.SIGTERM)
               if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, request) for sig in watched}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fit(config, data, device, out, overwrite, progress, cluster=None, state=None,
         stop=None) -> FitResult:
    pyro.set_rng_seed(config.seed)
    vae = VAE.from_config(config).to(device)
    if out is not None:
        checkpoint.check_free_space(out, vae)
    train_x, test_x = data.train.to(device), data.test.to(device)
    if config.binarization in ("dynamic", "static"):
        test_x = binarize_fixed(test_x)
    if config.binarization == "static":  # one draw of its own, kept for the whole run
        generator = torch.Generator().manual_seed(config.seed)
        train_x = binarize(train_x.cpu(), generator).to(device)

    optim = JointOptim(torch.optim.Adam, vae, {"lr": config.lr}, clip_norm=config.clip_norm)
    if cluster is None:
        step_fn = TrainingStep(vae, optim, config)
    else:
        step_fn = _ddp_step(vae, optim, config, cluster, device)
        pyro.set_rng_seed(config.seed + cluster.rank)  # own noise per rank; DDP syncs weights
    if config.elbo == "meanfield":
        probe = train_x[: config.batch_size]
        probe = binarize_fixed(probe) if config.binarization == "dynamic" else probe
        for site in sampled_kl_sites(vae.model, vae.guide, probe):
            message = f"meanfield: no closed-form KL for {site}; it is estimated by sampling"
            if progress:
                tqdm.write(message)
            else:
                warnings.warn(message, stacklevel=3)
    bits = vae.likelihood.discrete and config.guide != "delta"
    run_dir, rows, first, partial, skipped = None, [], 1, None, 0
    if state is not None:  # continue where the run stopped, with its exact RNG states
        try:
            vae.load_state_dict(state["model"])
            optim.set_state(state["optimizer"])
        except (RuntimeError, ValueError, KeyError):
            raise CheckpointError(
                f"the training state in {out} does not match its config.json; the run cannot "
                "be resumed, start a new one"
            ) from None
        run_dir, rows = Path(out), state["progress"]["rows"]
        first = state["progress"]["epoch"] + 1
        skipped = state["progress"].get("skipped", 0)
        partial = state["progress"].get("partial")
        if partial is None:
            checkpoint.restore_rng(state["rng"])
        else:  # stopped mid-epoch: redraw that epoch's data order, then go on from its step
            checkpoint.restore_rng(state["epoch_start_rng"])
            partial = {**partial, "rng": state["rng"]}
    for epoch in range(first, config.epochs + 1):
        if stop is not None and stop.requested and run_dir is not None:  # between epochs
            raise TrainingInterrupted(
                f"interrupted after epoch {epoch - 1}; the state is saved, continue with: "
                f"pyro-vae fit --resume {run_dir} --epochs {config.epochs}"
            )
        epoch_start_rng = checkpoint.capture_rng()
        x_epoch = binarize(train_x) if config.binarization == "dynamic" else train_x

        def save_partial(state_now: dict) -> Path | None:
            """The mid-epoch training state; a new run's folder is made at its first save."""
            nonlocal run_dir
            if out is None:
                return None
            if run_dir is None:
                run_dir = checkpoint.prepare_run_dir(out, overwrite)
                checkpoint.write_config(config, run_dir)
            checkpoint.save_training_state(
                run_dir, vae, optim.get_state(),
                {"epoch": epoch - 1, "rows": rows, "partial": state_now,
                 "skipped": state_now["skipped"]},
                epoch_start_rng=epoch_start_rng)
            return run_dir

        try:
            total, seen, seconds, skipped = _train_epoch(
                step_fn, optim, vae, x_epoch, config, epoch, progress, cluster, stop, partial,
                skipped, save_partial if cluster is None else None)
        except _Stopped as stopped:
            # A stop before the first epoch ends saves nothing, unless --checkpoint-every made
            # the folder already: an old run in --out is replaced only by saved progress.
            saved = save_partial(stopped.partial) if run_dir is not None else None
            raise _interrupted(saved, epoch, stopped.partial["step"], config) from None
        except _Diverged as diverged:
            raise _diverged(epoch, diverged.step, diverged.reason, run_dir, rows,
                            config) from None
        partial = None
        if cluster is not None:
            total, seen = (distributed.all_sum(v, device) for v in (total, seen))
        vae.eval()
        row = {
            "epoch": epoch,
            "train_seconds": round(seconds, 3),
            "train_neg_elbo": round(total / seen, 4),
            "test_neg_elbo": round(_test_neg_elbo(vae, test_x, cluster, device), 4),
        }
        if bits:
            row["test_bits_per_dim"] = round(
                row["test_neg_elbo"] / (config.input_dim * math.log(2)), 5
            )
        rows.append(row)
        if progress:
            tqdm.write(
                f"epoch {epoch}/{config.epochs}: train -ELBO {row['train_neg_elbo']:.2f}, "
                f"test -ELBO {row['test_neg_elbo']:.2f} nats/image ({seconds:.1f} s)"
            )
        if out is not None:
            if run_dir is None:  # the old run goes only once a new epoch is ready to replace it
                run_dir = checkpoint.prepare_run_dir(out, overwrite)
            # The self-contained training state first: a kill between the writes leaves a run
            # that both loads (the previous weights) and resumes (the new state).
            world = cluster.world if cluster is not None else 1
            checkpoint.save_training_state(
                run_dir, vae, optim.get_state(),
                {"epoch": epoch, "rows": rows, "world": world, "skipped": skipped})
            checkpoint.save(vae, run_dir)
            checkpoint.write_metrics(run_dir, rows)
            plots.save_training_curve(rows, run_dir / "training_curve.png")
    if run_dir is not None and data.is_image:
        _save_pictures(vae, data, test_x, run_dir)
    return FitResult(vae, rows)


def _test_neg_elbo(vae: VAE, test_x: torch.Tensor, cluster, device) -> float:
    """:func:`neg_elbo` of the test set; under torchrun each rank scores every world-th image
    and the sums are added up, so the evaluation is split rather than repeated."""
    if cluster is None:
        return neg_elbo(vae, test_x)
    part = test_x[cluster.rank :: cluster.world]
    total = neg_elbo(vae, part) * part.shape[0] if part.shape[0] else 0.0
    return distributed.all_sum(total, device) / test_x.shape[0]


def _interrupted(run_dir: Path | None, epoch: int, step: int, config: Config):
    """The message of a stop request: where the state was saved and how to resume."""
    if run_dir is None:
        return TrainingInterrupted(
            f"interrupted in epoch {epoch} after step {step}; no run directory held a "
            "finished epoch yet, so nothing was saved"
        )
    return TrainingInterrupted(
        f"interrupted in epoch {epoch} after step {step}; the state is saved, continue "
        f"with: pyro-vae fit --resume {run_dir} --epochs {config.epochs}"
    )


def _train_epoch(step_fn, optim, vae, x, config, epoch, progress, cluster=None, stop=None,
                 partial=None, skipped=0, save_partial=None):
    """One pass of SVI steps over a random permutation of x.

    Under torchrun every rank draws the same permutation (seeded by seed and epoch) and steps
    through its own shard with its share of the batch. ``partial`` continues an epoch stopped
    after ``partial["step"]`` steps. A batch whose loss or gradient is not finite is skipped
    (``optim`` leaves the parameters as they were) while fewer than ``config.skip_nonfinite``
    have been, counting ``skipped`` from earlier epochs; the next raises :class:`_Diverged`.
    Every ``config.checkpoint_every`` steps ``save_partial`` receives the epoch's progress;
    after each step a set ``stop`` request raises :class:`_Stopped`. Returns (summed loss,
    images counted, seconds, skipped batches so far).
    """
    if cluster is None:
        order = torch.randperm(x.shape[0], device=x.device)
        batch_size = config.batch_size
    else:
        generator = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        order = distributed.shard(torch.randperm(x.shape[0], generator=generator), cluster)
        order = order.to(x.device)
        batch_size = distributed.check_batch(config.batch_size, cluster)
    n = order.shape[0]
    steps = math.ceil(n / batch_size)
    vae.train()
    first_step, total, seen, earlier = 0, 0.0, 0, 0.0
    if partial is not None:  # the permutation is drawn again above; now the later RNG state
        checkpoint.restore_rng(partial["rng"])
        first_step, total, earlier = partial["step"], partial["total"], partial["seconds"]
        seen = partial.get("seen", min(n, first_step * batch_size))
    start_time = time.perf_counter() - earlier

    def progress_now(step: int) -> dict:
        return {"epoch": epoch, "step": step, "total": total, "seen": seen,
                "seconds": time.perf_counter() - start_time, "skipped": skipped}

    with tqdm(
        # disable=None hides the bar when stderr is not a terminal (CI logs, pipes).
        total=n, desc=f"epoch {epoch}/{config.epochs}", unit="img",
        disable=None if progress else True, leave=False, dynamic_ncols=True,
        initial=min(n, first_step * batch_size),
    ) as bar:
        for step in range(first_step, steps):
            batch = x[order[step * batch_size : (step + 1) * batch_size]]
            vae.kl_weight = kl_weight(config, epoch, step, steps)
            # Pyro checks every distribution's arguments and values on the first step of each
            # epoch; the data were checked on loading, and non-finite losses and gradients are
            # caught below, so later steps skip those checks.
            try:
                loss = step_fn(batch, validate=step == 0)
            except ValueError as err:  # Pyro's validation: a parameter left its support
                raise _Diverged(step, str(err).splitlines()[0]) from None
            reason = None
            if optim.skipped:  # the same on every rank under torchrun: gradients are averaged
                reason = ("a gradient is not finite" if math.isfinite(loss)
                          else f"the loss is {loss}")
            elif not math.isfinite(loss) and cluster is None:
                reason = f"the loss is {loss}"
            if reason is not None:
                skipped += 1
                if skipped > config.skip_nonfinite:
                    raise _Diverged(step, reason)
                tqdm.write(f"epoch {epoch}, step {step + 1}: {reason}; batch skipped "
                           f"({skipped} of --skip-nonfinite {config.skip_nonfinite})")
            else:
                total += loss
                seen += batch.shape[0]
            bar.update(batch.shape[0])
            if step % 20 == 0 and reason is None:
                bar.set_postfix_str(f"-ELBO {loss / batch.shape[0]:.1f}", refresh=False)
            if step + 1 < steps:
                if stop is not None and stop.requested:
                    raise _Stopped(progress_now(step + 1))
                every = config.checkpoint_every
                if save_partial is not None and every and (step + 1) % every == 0:
                    save_partial(progress_now(step + 1))
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return total, seen, time.perf_counter() - start_time, skipped


def _ddp_step(vae, optim, config, cluster, device):
    """A training step under DistributedDataParallel: Pyro's −ELBO of this rank's batch
    through the DDP wrapper, gradients averaged over ranks, one joint optimiser step."""
    from torch.nn.parallel import DistributedDataParallel

    # Uncompiled: DDP needs differentiable_loss, and JitTrace_ELBO's (pyro 1.9) adds the
    # loss's own gradient to the surrogate's, doubling it.
    loss_module = distributed.ELBOLoss(vae, build_elbo(config), cluster.world)
    ddp = DistributedDataParallel(loss_module,
                                  device_ids=[device] if device.type == "cuda" else None)

    def step(batch: torch.Tensor, validate: bool = False) -> float:
        with pyro.validation_enabled(validate):
            loss = ddp(batch)
        loss.backward()
        optim(list(vae.parameters()))
        return loss.item() / cluster.world

    return step


def _diverged(epoch: int, step: int, reason: str, run_dir: Path | None, rows: list,
              config: Config) -> TrainingError:
    """The one-line message of a stop on a non-finite loss or gradient."""
    if run_dir is not None and rows:
        saved = f"the checkpoint of epoch {rows[-1]['epoch']} in {run_dir} is intact"
    elif run_dir is not None:
        saved = f"{run_dir} holds only a mid-epoch training state"
    else:
        saved = "no epoch had finished, so nothing was saved"
    skip = "" if config.skip_nonfinite else ", or skip a few such batches with --skip-nonfinite N"
    return TrainingError(
        f"training diverged at epoch {epoch}, step {step + 1} ({reason}); lower --lr, add "
        f"--clip-norm, or check the likelihood's scale{skip}; {saved}"
    )


def _save_pictures(vae: VAE, data: Data, test_x: torch.Tensor, run_dir: Path) -> None:
    """``samples.png`` (unless the prior is flat) and ``reconstructions.png``."""
    shape = vae.config.data_shape
    if not isinstance(vae.prior, FlatPrior):  # a flat prior has nothing to sample
        plots.save_image_grid(vae.sample(NUM_SAMPLES, mean=True), shape, run_dir / "samples.png")
    per_row = min(8, test_x.shape[0])
    count = min(NUM_RECONSTRUCTIONS, test_x.shape[0]) // per_row * per_row
    seen = test_x[:count]
    # When the model sees a binary draw of grey levels, show the grey levels above it.
    binarized = vae.config.binarization in ("dynamic", "static")
    grey = [data.test[:count].to(test_x.device)] if binarized else []
    grid = plots.interleave_rows([*grey, seen, vae.reconstruct(seen)], per_row)
    plots.save_image_grid(grid, shape, run_dir / "reconstructions.png")
