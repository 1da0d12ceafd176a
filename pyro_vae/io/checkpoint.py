"""Run directories: ``config.json`` + ``model.safetensors`` (+ metrics and pictures).

Weights are stored with safetensors and configs as JSON, so loading a run never unpickles
anything. Every file is written atomically (temporary file in the same folder, flush, fsync,
rename), so a crash leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..config import FORMAT, FORMAT_VERSION, Config, DataConfig, TrainConfig
from ..errors import CheckpointError, ConfigError, RunDirError
from ..model import VAE
from .files import atomic_write_bytes
from .lock import LOCK_FILE

#: Format 1 kept the encoder network and the family's layers inside one guide module.
_V1_KEYS = (("encoder.body.", "encoder."), ("encoder.head.", "family.head."),
            ("encoder.flows.", "family.flows."))

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.csv"
TRAINING_STATE_FILE = "training_state.safetensors"
#: Every file ``fit`` writes; ``--overwrite`` removes these and nothing else, ``config.json``
#: last so that an interrupted removal still leaves a folder recognisable as a run.
RUN_FILES = (
    TRAINING_STATE_FILE,
    WEIGHTS_FILE,
    METRICS_FILE,
    "training_curve.png",
    "samples.png",
    "reconstructions.png",
    "tensorboard",  # a folder: the event files of --tensorboard
    "export",  # a folder: what pyro-vae export wrote from this run
    CONFIG_FILE,
)


def check_free_space(run_dir: str | os.PathLike, vae: VAE) -> None:
    """Refuse to start when the disk under ``run_dir`` cannot hold the run's checkpoints.

    Needed: the weights, the training state (weights and Adam's two moments), a temporary
    copy of the largest while it is replaced, and 16 MiB for pictures and metrics.

    Raises
    ------
    RunDirError
        If less is free.
    """
    weights = sum(t.numel() * t.element_size() for t in vae.state_dict().values())
    need = weights + 2 * (3 * weights) + 16 * 2**20
    free = shutil.disk_usage(_existing_parent(Path(run_dir))).free
    if free < need:
        raise RunDirError(
            f"--out {run_dir}: only {free / 2**20:.0f} MiB free on its disk, and the run's "
            f"checkpoints need about {need / 2**20:.0f} MiB; free some space or choose "
            "another folder"
        )


def save(vae: VAE, run_dir: str | os.PathLike, config: Config | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` of ``vae`` into ``run_dir``.

    ``config`` is the run's configuration; by default the model's own description with
    default data and training sections. A user-built model is saved as its weights, its z_dim,
    data shape and likelihood: no code is stored, and :func:`load` puts the weights back into a
    model the user builds again.

    Raises
    ------
    CheckpointError
        If a file cannot be written.
    ConfigError
        If a user-built model's likelihood is not a registered part.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(config or Config.of(vae.describe(), DataConfig(), TrainConfig()), run_dir)
    save_weights(vae, run_dir)


def save_weights(vae: VAE, run_dir: str | os.PathLike, state: dict | None = None,
                 epoch: int | None = None) -> None:
    """Write ``run_dir/model.safetensors``, atomically: the weights of ``vae``, or ``state``
    (a state dict of it, such as the best epoch's) instead; ``epoch``, the epoch they come
    from, goes into the file's metadata."""
    state = vae.state_dict() if state is None else state
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    if epoch is not None:
        metadata["epoch"] = str(epoch)
    atomic_write_bytes(Path(run_dir) / WEIGHTS_FILE, save_safetensors(state, metadata=metadata))


def read_weights(run_dir: str | os.PathLike) -> tuple[dict, dict] | None:
    """The tensors and metadata of ``run_dir/model.safetensors``, or None when it is missing
    or unreadable (nothing is unpickled)."""
    try:
        data = (Path(run_dir) / WEIGHTS_FILE).read_bytes()
        return load_safetensors(data), _metadata(data)
    except (SafetensorError, ValueError, OSError):
        return None


def write_config(config: Config, run_dir: str | os.PathLike) -> None:
    """Write ``config`` as ``run_dir/config.json``, atomically.

    Raises
    ------
    CheckpointError
        If the file cannot be written; an older ``config.json`` stays as it was.
    """
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    atomic_write_bytes(Path(run_dir) / CONFIG_FILE, text.encode())


def read_config(run_dir: str | os.PathLike, model_only: bool = False) -> Config:
    """The :class:`Config` stored in ``run_dir/config.json`` (any format version); with
    ``model_only`` its training section is not validated (see :meth:`Config.from_dict`).

    Raises
    ------
    RunDirError
        If ``run_dir`` is not a directory or has no ``config.json``.
    CheckpointError
        If ``config.json`` is not valid JSON or not a compatible pyro_vae config.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise RunDirError(
            f"{run_dir} is a file, not a run directory; give the --out of a 'fit' run"
        )
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; give the --out of a 'fit' run")
    return Config.from_dict(_read_payload(run_dir), model_only=model_only)


def _read_payload(run_dir: Path) -> dict:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} has no {CONFIG_FILE}, so it is not a pyro_vae run directory; "
            "give the --out folder of a finished 'pyro-vae fit'"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file is damaged") from None


def upgrade_weights(state: dict, version: int) -> dict:
    """Weights of a run written in format ``version``, under this version's names."""
    if version != 1:
        return state
    renamed = {}
    for key, value in state.items():
        for old, new in _V1_KEYS:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu",
         model: VAE | None = None) -> VAE:
    """Rebuild the trained VAE saved in ``run_dir``, in evaluation mode on ``device``: the
    model of :func:`load_run`. See there for ``model`` and the errors raised."""
    return load_run(run_dir, device, model)[0]


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu",
             model: VAE | None = None) -> tuple[VAE, Config]:
    """The trained VAE saved in ``run_dir``, in evaluation mode on ``device``, and the run's
    :class:`Config`.

    Only the model's section of ``config.json`` is validated, so a run loads wherever its
    model can be built. With ``model``, a VAE the user built (their own networks and prior),
    the weights are loaded into it instead: nothing in a run directory is code, and nothing is
    unpickled.

    Raises
    ------
    RunDirError
        If ``run_dir`` is missing or not a pyro_vae run directory.
    CheckpointError
        If ``config.json`` is incompatible, or ``model.safetensors`` is missing, truncated,
        corrupted, or does not match the config (or ``model``); if the run holds a user-built
        model and no ``model`` is given.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir, model_only=True)
    path = run_dir / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing; the run did not finish an epoch, train it again"
        )
    try:
        data = path.read_bytes()
        state = load_safetensors(data)
        # Files of format 1 carry no version; their layers are renamed on loading.
        version = int(_metadata(data).get("format_version", "1"))
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupted ({str(err).splitlines()[0]}); "
            "retrain or restore the file"
        ) from None
    vae = model if model is not None else build_model(config)
    if vae.data_shape is None:  # a user-built model: per-feature parts exist once it is known
        vae.set_data_shape(config.model.data_shape)
    restore_weights(vae, upgrade_weights(state, version), path)
    vae.adapted = True  # its data-dependent buffers came with the weights
    return vae.to(device).eval(), config


def build_model(config: Config) -> VAE:
    """:meth:`VAE.from_config`, with the errors of a damaged or user-built run as
    :class:`CheckpointError`."""
    try:
        return VAE.from_config(config)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    except (RuntimeError, MemoryError):  # e.g. an edited data_shape too large to allocate
        raise CheckpointError(
            f"the model described by {CONFIG_FILE} cannot be built in memory; the file was "
            "edited or damaged, restore it"
        ) from None


def restore_weights(vae: VAE, state: dict, source) -> None:
    """``vae.load_state_dict(state, strict=True)``, or :class:`CheckpointError` naming
    ``source``."""
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError:
        raise CheckpointError(
            f"{source} does not match {CONFIG_FILE} or the model given (different tensors or "
            "shapes); keep the two files of one run together"
        ) from None


def is_run_dir(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a ``config.json`` with pyro_vae's format marker (any version)."""
    try:
        payload = json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def check_run_dir(run_dir: str | os.PathLike, overwrite: bool) -> None:
    """Check, without touching the disk, that ``run_dir`` may receive a new run.

    A missing or empty folder is always fine. A non-empty one is refused unless ``overwrite``
    is set *and* it holds a pyro_vae run (a ``config.json`` with pyro_vae's format marker);
    even then only the files of :data:`RUN_FILES` are replaced, other files stay.

    Raises
    ------
    RunDirError
        If the folder is non-empty without ``overwrite``, foreign, a file, or not writable.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file; give a folder path")
    if run_dir.is_dir() and any(path.name != LOCK_FILE for path in run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"--out {run_dir} is not empty; choose a new folder or add --overwrite"
            )
        if not is_run_dir(run_dir):
            raise RunDirError(
                f"--out {run_dir} holds files that are not a pyro_vae run, which --overwrite "
                "never deletes; choose a new or empty folder"
            )
    parent = run_dir if run_dir.is_dir() else _existing_parent(run_dir)
    if not parent.is_dir():
        raise RunDirError(f"--out {run_dir}: {parent} is a file, not a folder; fix the path")
    if not os.access(parent, os.W_OK):
        raise RunDirError(f"--out {run_dir}: {parent} is not writable; pick another folder")


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Delete the temporary files that writes of a killed process left (our pattern only)."""
    pattern = re.compile(r"^\.(" + "|".join(map(re.escape, RUN_FILES)) + r")\.[0-9a-f]{32}\.tmp$")
    for path in Path(run_dir).iterdir():
        if pattern.match(path.name):
            path.unlink(missing_ok=True)


def prepare_run_dir(run_dir: str | os.PathLike, overwrite: bool) -> Path:
    """:func:`check_run_dir`, then create ``run_dir``, removing an old run's files."""
    check_run_dir(run_dir, overwrite)
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run_dir / name).is_dir():
                shutil.rmtree(run_dir / name)
            else:
                (run_dir / name).unlink(missing_ok=True)
    except OSError as err:
        raise RunDirError(
            f"cannot prepare --out {run_dir} ({err.strerror}); pick another folder"
        ) from None
    return run_dir


#: Inside a run directory being overwritten: the new run's first checkpoint while it is
#: written, and the old run's files for the moment of the swap.
STAGING_DIR, PREVIOUS_DIR = ".incoming", ".previous"
#: In ``.previous``: every old file has been moved out, so the swap can only go forward.
MOVED_MARK = ".moved"


def recover_swap(run_dir: str | os.PathLike) -> None:
    """Finish or undo a :func:`swap_in` that a kill interrupted, and drop a killed overwrite's
    staging folder. Call it holding the run's lock, before reading the run.

    Killed while the old files moved out: they go back, and the old run is whole again (the
    new run, which had trained one epoch or less, is dropped). Killed while the new files
    moved in: the rest follow, and the new run is whole.

    Raises
    ------
    RunDirError
        If a file cannot be moved back, naming where both runs' files are.
    """
    run_dir = Path(run_dir)
    previous, stage = run_dir / PREVIOUS_DIR, run_dir / STAGING_DIR
    try:
        if previous.is_dir():
            source = stage if (previous / MOVED_MARK).exists() else previous
            for name in RUN_FILES:
                if (source / name).exists():
                    os.replace(source / name, run_dir / name)
            shutil.rmtree(previous)
        if stage.is_dir():
            shutil.rmtree(stage)
    except OSError as err:
        raise RunDirError(f"cannot repair the interrupted --overwrite in {run_dir} "
                          f"({err.strerror}); its files are in {previous} and {stage}") from None


def prepare_staging(run_dir: str | os.PathLike) -> Path:
    """An empty ``run_dir/.incoming`` for the first checkpoint of a run that overwrites the
    run in ``run_dir`` (checked with :func:`check_run_dir` first), which stays untouched.

    Raises
    ------
    RunDirError
        As :func:`check_run_dir`, or if the folder cannot be made."""
    check_run_dir(run_dir, True)
    stage = Path(run_dir) / STAGING_DIR
    try:
        shutil.rmtree(stage, ignore_errors=True)  # a killed overwrite's, never a run's own
        stage.mkdir()
    except OSError as err:
        raise RunDirError(f"cannot prepare --out {run_dir} ({err.strerror}); pick another "
                          "folder") from None
    return stage


def swap_in(stage: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Replace the old run's files in ``run_dir`` by the whole checkpoint in ``stage``.

    Renames only, no data written: the old run's :data:`RUN_FILES` move into
    ``run_dir/.previous``, the new ones in (``config.json`` last, so a folder with one holds a
    whole checkpoint), then ``.previous`` and ``stage`` are removed. A kill in between leaves
    every file of both runs in ``run_dir``, ``.previous`` or ``.incoming``, and the next writer
    puts one of them back whole (:func:`recover_swap`).

    Raises
    ------
    CheckpointError
        If a rename fails, naming the folders that hold the two runs' files."""
    stage, run_dir = Path(stage), Path(run_dir)
    previous = run_dir / PREVIOUS_DIR
    try:
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir()
        for name in RUN_FILES:
            if (run_dir / name).exists():
                os.replace(run_dir / name, previous / name)
        (previous / MOVED_MARK).touch()  # from here on, a recovery finishes the swap
        for name in RUN_FILES:
            if (stage / name).exists():
                os.replace(stage / name, run_dir / name)
        shutil.rmtree(previous)
        shutil.rmtree(stage)
    except OSError as err:
        raise CheckpointError(
            f"cannot move the new checkpoint into {run_dir} ({err.strerror}); the new run is "
            f"in {stage}, the old one's files in {previous}") from None


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def write_metrics(run_dir: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``rows`` (one dict per epoch) to ``run_dir/metrics.csv`` atomically: every column
    any row has, in the order they first appear, left empty in rows without it (the first
    epochs of a run resumed by a version that reports more)."""
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(Path(run_dir) / METRICS_FILE, buffer.getvalue().encode())


def capture_rng() -> dict:
    """The current RNG states of torch (CPU and every CUDA device), numpy and Python, for
    :func:`restore_rng`: tensors, plus small JSON-able values."""
    np_state, py_state = np.random.get_state(), random.getstate()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    values = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
              "python": [py_state[0], py_state[2]]}
    return {"tensors": tensors, "values": values}


def _put_rng(tensors: dict, metadata: dict, prefix: str, rng: dict) -> None:
    tensors.update({f"{prefix}.{k}": v for k, v in rng["tensors"].items()})
    metadata[prefix] = json.dumps(rng["values"])


def _get_rng(tensors: dict, metadata: dict, prefix: str) -> dict | None:
    if prefix not in metadata:
        return None
    start = f"{prefix}."
    return {"tensors": {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)},
            "values": json.loads(metadata[prefix])}


def save_training_state(run_dir: str | os.PathLike, vae: VAE, optimizer_state: dict,
                        progress: dict, epoch_start_rng: dict | None = None) -> None:
    """Write everything needed to continue training exactly, as one safetensors file.

    ``training_state.safetensors`` holds the weights (``model.*``), the optimiser's state
    tensors (``optim.{i}.{name}``), the RNG states of torch, numpy and Python (``rng.*``), and
    as metadata the optimiser's parameter groups, the rest of the RNG states and ``progress``
    (completed epochs and the metrics rows so far, and for a run stopped mid-epoch a
    ``partial`` entry with the step reached; then ``epoch_start_rng``, the RNG states at the
    start of that epoch, lets the epoch's data order be drawn again). One file, written
    atomically: a crash leaves the previous state or the new one. Reading it never unpickles
    anything.
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    for index, per_param in optimizer_state["state"].items():
        for name, value in per_param.items():
            tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "progress": json.dumps(progress),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
    }
    _put_rng(tensors, metadata, "rng", capture_rng())
    if epoch_start_rng is not None:
        _put_rng(tensors, metadata, "rng_start", epoch_start_rng)
    atomic_write_bytes(Path(run_dir) / TRAINING_STATE_FILE, save_safetensors(tensors, metadata))


def load_training_state(run_dir: str | os.PathLike) -> dict:
    """Read ``training_state.safetensors``: ``model`` and ``optimizer`` state dicts,
    ``progress`` and ``rng`` (pass it to :func:`restore_rng`).

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, corrupted or not pyro_vae's.
    """
    path = Path(run_dir) / TRAINING_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing, so the run cannot be resumed (it was written before resuming "
            "existed, or no epoch finished); start a new run"
        )
    try:
        data = path.read_bytes()
        tensors = load_safetensors(data)
        meta = _metadata(data)
        version = meta.get("format_version")
        if meta.get("format") != FORMAT or version not in ("1", str(FORMAT_VERSION)):
            raise ValueError("not a training state of this pyro_vae version")
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        return {
            "model": upgrade_weights({k[6:]: v for k, v in tensors.items()
                                      if k.startswith("model.")}, int(version)),
            "optimizer": {"state": state, "param_groups": json.loads(meta["param_groups"])},
            "progress": _checked_progress(json.loads(meta["progress"])),
            "rng": _get_rng(tensors, meta, "rng"),
            "epoch_start_rng": _get_rng(tensors, meta, "rng_start"),
        }
    except (SafetensorError, ValueError, KeyError, TypeError, OSError,
            json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupted ({str(err).splitlines()[0]}); the run cannot be "
            "resumed, start a new one"
        ) from None


def _metadata(data: bytes) -> dict:
    """The metadata of a safetensors file's bytes (an 8-byte header length, a JSON header)."""
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return header.get("__metadata__") or {}


def _checked_progress(progress: dict) -> dict:
    if not isinstance(progress.get("epoch"), int) or not isinstance(progress.get("rows"), list):
        raise ValueError("progress lacks epoch or rows")
    if progress.get("binary_draw", "bernoulli") not in ("levels", "bernoulli"):
        raise ValueError("progress names an unknown binarisation draw")
    return progress


def restore_rng(rng: dict) -> None:
    """Set the RNGs to the states :func:`capture_rng` took (CUDA's when both have them)."""
    tensors, values = rng["tensors"], rng["values"]
    torch.set_rng_state(tensors["torch"].to(torch.uint8))
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"].to(torch.uint8)))
    name, pos, has_gauss, cached = values["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         cached))
    version, gauss_next = values["python"]
    random.setstate((version, tuple(int(v) for v in tensors["python"].tolist()), gauss_next))
