"""TensorBoard records of a training run (``--tensorboard``), with torch's own
``torch.utils.tensorboard.SummaryWriter``, into ``RUN/tensorboard``.

After every epoch, just before its checkpoint is saved (into the folder that it goes to): the columns of ``metrics.csv`` as scalars
(losses in nats per image under ``neg_elbo/``, the KL decomposition under ``kl/``, the
learning rate), the mean global gradient norm of the epoch's steps (``grad_norm``, before
clipping), and on the first 500 test images the active units (Burda et al. 2016, §5.2) and
each latent unit's KL term E_x KL(q(z_u|x) ‖ p(z_u)) (``kl_per_dim/z<u>``), from
:func:`~pyro_vae.evaluation.evaluate.evaluate` with one sample per image. For image data, the
sample and reconstruction grids every :data:`IMAGE_EVERY` epochs and at the last; at the end
of the run, the hyperparameters with the kept epoch's figures (TensorBoard's HParams tab).

``metrics.csv`` stays the run's record; the event files are a view of it. A resumed run
continues them, and TensorBoard drops the events of epochs after the resumed checkpoint
(``purge_step``), which a killed process may have written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import ConfigError, PyroVAEError

#: The folder of the event files inside the run directory.
TENSORBOARD_DIR = "tensorboard"
#: Epochs between the image grids (and the last epoch).
IMAGE_EVERY = 5
#: Test images scored for the active units and the KL per dimension.
LATENT_IMAGES = 500

_TAGS = {
    "train_neg_elbo": "neg_elbo/train", "test_neg_elbo": "neg_elbo/test",
    "validation_neg_elbo": "neg_elbo/validation", "test_bits_per_dim": "bits_per_dim/test",
    "test_mi": "kl/mutual_information", "test_tc": "kl/total_correlation",
    "test_dim_kl": "kl/dimension_wise", "test_accuracy": "accuracy/test", "lr": "lr",
    "train_seconds": "time/train_seconds",
}


def writer_for(log_dir: Path, purge_step: int | None):
    """A ``SummaryWriter`` on ``log_dir``; for a resumed run one that makes TensorBoard drop
    the old events from ``purge_step`` (the epoch it resumes with) on.

    Raises
    ------
    ConfigError
        If the ``tensorboard`` package is missing.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package; pip install "
                          "tensorboard, or drop --tensorboard") from None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


class TensorBoardLog:
    """What a :class:`~pyro_vae.training.plan.TrainingPlan` writes to TensorBoard.

    Parameters
    ----------
    first_epoch : int
        The epoch the run starts (or resumes) with.
    resumed : bool
        Whether it resumes a run, whose events from ``first_epoch`` on are dropped.
    """

    def __init__(self, first_epoch: int, resumed: bool = False):
        self.purge_step = first_epoch if resumed else None
        self.writer, self.log_dir = None, None

    def _open(self, log_dir: Path):
        """The writer on ``log_dir``: a new one when the folder changed (the staging folder
        of an ``--overwrite``'s first checkpoint, then the run's own)."""
        if self.writer is not None and self.log_dir != Path(log_dir):
            self.close()
        if self.writer is None:
            self.writer = writer_for(Path(log_dir), self.purge_step)
            self.log_dir, self.purge_step = Path(log_dir), None  # purge once, on resuming
        return self.writer

    def epoch(self, plan, row: dict, grad_norm: float | None, last: bool,
              log_dir: Path) -> None:
        """The scalars (and every few epochs the pictures) of the epoch of ``row``, into
        ``log_dir``."""
        writer, epoch = self._open(log_dir), row["epoch"]
        for key, value in row.items():
            if key in _TAGS and isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(_TAGS[key], value, epoch)
        if grad_norm is not None and math.isfinite(grad_norm):
            writer.add_scalar("grad_norm", grad_norm, epoch)
        usage = latent_usage(plan)
        if usage is not None:
            writer.add_scalar("active_units", usage["active_units"], epoch)
            for unit, kl in enumerate(usage["kl_per_dim"] or []):
                writer.add_scalar(f"kl_per_dim/z{unit}", kl, epoch)
        if plan.data.is_image and (epoch % IMAGE_EVERY == 0 or last or epoch == 1):
            for tag, grid in pictures_of(plan).items():
                writer.add_image(tag, grid, epoch)
        writer.flush()

    def finish(self, config, row: dict, log_dir: Path) -> None:
        """The run's hyperparameters with the kept epoch's figures ``row``; then close."""
        writer = self._open(log_dir)
        metrics = {f"hparam/{key}": float(row[key]) for key in
                   ("test_neg_elbo", "validation_neg_elbo", "train_neg_elbo") if key in row}
        writer.add_hparams(hyperparameters(config), metrics, run_name=".")
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def hyperparameters(config) -> dict:
    """The run's options as TensorBoard's HParams take them: flat, numbers, text or bools."""
    flat = {}
    for section, values in config.to_dict().items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            for option, v in items:  # a part: its name and options, as arch, arch_hidden
                name = key if option in ("", "name") else f"{key}_{option}"
                if isinstance(v, (int, float, bool, str)):
                    flat[name] = v
                elif v is not None:
                    flat[name] = json.dumps(v)
    return flat


@torch.no_grad()
def latent_usage(plan) -> dict | None:
    """Active units and KL per latent unit on the first :data:`LATENT_IMAGES` test images,
    by :func:`~pyro_vae.evaluation.evaluate.evaluate` with one sample per image (its draws
    taken aside, so training draws as without them); None where it does not apply (a point
    mass guide, a flat prior)."""
    from ..evaluation.evaluate import evaluate
    from ..io.data import as_float

    vae = plan.vae
    x = as_float(plan.test_x[:LATENT_IMAGES]).to(plan.device)
    y = None
    if plan.test_y is not None and (vae.condition is not None or vae.semi_supervised):
        y = plan.test_y[:LATENT_IMAGES]
    devices = [plan.device] if plan.device.type == "cuda" else []
    was_training = vae.training
    try:
        with torch.random.fork_rng(devices=devices):
            result = evaluate(vae, x, iwae_samples=1, progress=False, y=y)
    except PyroVAEError:
        return None
    finally:
        vae.train(was_training)
    return {"active_units": result["active_units"], "kl_per_dim": result["kl_per_dim"]}


@torch.no_grad()
def pictures_of(plan) -> dict[str, torch.Tensor]:
    """``samples`` (for a prior that can be sampled) and ``reconstructions`` as (C, H, W)
    grids in [0, 1], as ``samples.png`` and ``reconstructions.png`` show them."""
    from torchvision.utils import make_grid

    from ..evaluation import pictures
    from ..io.data import as_float

    vae, shape = plan.vae, plan.data.data_shape
    devices = [plan.device] if plan.device.type == "cuda" else []
    was_training = vae.training
    vae.eval()

    def grid(images, nrow):
        images = (images / vae.likelihood.picture_max).clamp(0, 1).cpu()
        images = images.reshape(-1, *((1, *shape) if len(shape) == 2 else shape))
        return make_grid(images, nrow=nrow, padding=2, pad_value=1.0)

    out = {}
    with torch.random.fork_rng(devices=devices):
        if vae.can_sample:
            y = pictures.class_rows(vae, min(vae.num_classes or 0, 16))
            out["samples"] = grid(vae.sample(64 if y is None else y.shape[0], mean=True, y=y), 8)
        num = 16
        shown = as_float(plan.data.test_rows[:num]).to(plan.device)
        seen = as_float(plan.test_x[:num]) if plan.config.binarizes else None
        y = None if plan.test_y is None or vae.semi_supervised else plan.test_y[:num]
        images, per_row = pictures.reconstructions(vae, shown, seen, num, y=y)
        out["reconstructions"] = grid(images, per_row)
    vae.train(was_training)
    return out
