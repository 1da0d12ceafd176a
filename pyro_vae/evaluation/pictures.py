"""Pictures of what a VAE learned, as image tensors ready for a grid: samples, reconstructions,
interpolations, latent traversals, the decoded latent manifold, a latent map, and for models
conditioned on the class label, analogies (one style under every class).

:func:`draw` makes any of them into a file, as ``pyro-vae sample --mode`` does. A conditional
model encodes test images with their labels (or covariates); the semi-supervised model with
its classifier's most probable class, as it would new, unlabelled images.
"""

from __future__ import annotations

import pyro
import torch

from .. import plots
from ..errors import ConfigError
from ..io.data import binarize_fixed, class_names, eval_data
from ..io.checkpoint import load_run
from ..io.files import save_arrays
from ..model import VAE
from ..registry import PICTURE_MODES

#: The picture modes of :func:`draw` and their default ``num``.
DEFAULT_NUM = PICTURE_MODES


def images_needed(mode: str, num: int | None) -> int:
    """How many test images ``mode`` reads (0 for the modes that only decode)."""
    num = num or DEFAULT_NUM[mode]
    return {"reconstruct": num, "interpolate": 2 * num, "traverse": num, "latents": num,
            "analogies": num}.get(mode, 0)


def class_rows(vae: VAE, rows: int, per_row: int = 8, label: int | None = None
               ) -> torch.Tensor | None:
    """Labels for a grid of ``rows`` × ``per_row`` draws of a label-conditioned model: all
    ``label``, or class r mod K in row r; None for a model without a label condition."""
    if vae.num_classes is None:
        return None
    device = next(vae.buffers()).device
    if label is not None:
        return torch.full((rows * per_row,), label, dtype=torch.int64, device=device)
    return (torch.arange(rows, device=device) % vae.num_classes).repeat_interleave(per_row)


def _encoding(vae: VAE, y: torch.Tensor | None) -> torch.Tensor | None:
    """The conditions images are encoded with: ``y`` for a conditional model; None for the
    semi-supervised one, which then uses its classifier's class (:meth:`VAE.given`)."""
    return None if vae.semi_supervised else y


@torch.no_grad()
def reconstructions(vae: VAE, images: torch.Tensor, seen: torch.Tensor | None = None,
                    num: int = 32, nrow: int = 8, show_seen: bool = True,
                    y: torch.Tensor | None = None):
    """Rows of ``images`` (N, D), above them what the model sees (``seen``, e.g. a binary
    draw; shown when given and ``show_seen``), then the reconstructions of ``seen`` (given
    the conditions ``y`` of a conditional model).

    Returns the (rows · count, D) grid and the images per row.
    """
    seen_rows = [] if seen is None or not show_seen else [seen]
    seen = images if seen is None else seen
    per_row = min(nrow, num, images.shape[0])
    count = min(num, images.shape[0]) // per_row * per_row
    y = y[:count] if y is not None else None
    rows = [images[:count], *(s[:count] for s in seen_rows), vae.reconstruct(seen[:count], y)]
    return plots.interleave_rows(rows, per_row), per_row


@torch.no_grad()
def interpolation_grid(vae, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8,
                       shown_a: torch.Tensor | None = None,
                       shown_b: torch.Tensor | None = None, y_a: torch.Tensor | None = None,
                       y_b: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded points on the line between the encodings of pairs of images.

    Row i is [x_a, p(x | z_t) for t = 0 … 1 in ``steps`` steps, x_b] with
    z_t = (1 − t) μ(x_a) + t μ(x_b): a regular latent space decodes the midpoint to something
    halfway between the two images. For a conditional model the condition vectors are
    interpolated too, c_t = (1 − t) c(y_a) + t c(y_b) (for labels, from one one-hot code to
    the other). ``x_a``, ``x_b`` (pairs, D) are what the encoder sees; ``shown_a``,
    ``shown_b`` what the end columns show (default: the same). Returns (pairs · (steps + 2), D).
    """
    y_a, y_b = vae.given(x_a, y_a), vae.given(x_b, y_b)
    z_a, z_b = vae.encode(x_a, y_a)[0], vae.encode(x_b, y_b)[0]
    t = torch.linspace(0, 1, steps, device=z_a.device)[None, :, None]

    def line(a, b):
        return None if a is None else (1 - t) * a[:, None] + t * b[:, None]  # pairs x steps x ·

    c = line(vae.condition_vector(y_a), vae.condition_vector(y_b))
    decoded = vae.decode_vector(line(z_a, z_b), c)
    ends_a = x_a if shown_a is None else shown_a
    ends_b = x_b if shown_b is None else shown_b
    return torch.cat([ends_a[:, None], decoded, ends_b[:, None]], dim=1).reshape(-1, x_a.shape[-1])


@torch.no_grad()
def traversal_grid(vae, x: torch.Tensor, steps: int = 9, y: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Each row sets one latent unit of the encoding of one image ``x`` (1, D) to ``steps``
    quantiles 1%…99% of that unit under the prior (from 20,000 draws; ±3 around the encoding
    for a flat prior), the other units fixed; a conditional model decodes them all with the
    image's condition ``y``. Returns (z_dim · steps, D)."""
    y = vae.given(x, y)
    z = vae.encode(x, y)[0][0]
    levels = torch.linspace(0.01, 0.99, steps, device=z.device)
    if vae.can_sample:
        values = torch.quantile(vae.prior_draws((20000,)), levels, dim=0).T  # unit x step
    else:
        values = z[:, None] + torch.linspace(-3, 3, steps, device=z.device)
    codes = z.repeat(vae.z_dim, steps, 1)  # unit x step x z_dim
    for u in range(vae.z_dim):
        codes[u, :, u] = values[u]
    c = vae.condition_vector(y)
    return vae.decode_vector(codes.reshape(-1, vae.z_dim), c)


@torch.no_grad()
def manifold_grid(vae, side: int = 15, label: int | None = None) -> torch.Tensor:
    """For two latent units: decode a side × side grid over the prior's quantiles 5%…95% of
    each unit (Kingma & Welling 2014, fig. 4), estimated from 20,000 prior draws; for a
    label-conditioned model, of class ``label`` (default 0).

    Returns (side², D). Raises ``ValueError`` unless z_dim is 2.
    """
    if vae.z_dim != 2:
        raise ValueError(f"the manifold picture needs --z-dim 2, this model has {vae.z_dim}")
    draws = vae.prior_draws((20000,))
    levels = torch.linspace(0.05, 0.95, side, device=draws.device)
    q = torch.quantile(draws, levels, dim=0)  # side x 2
    grid = torch.stack(torch.meshgrid(q[:, 0], q[:, 1].flip(0), indexing="xy"), dim=-1)
    y = class_rows(vae, 1, side * side, label or 0)
    return vae.decode(grid.reshape(-1, 2), y)


@torch.no_grad()
def analogies_grid(vae, x: torch.Tensor, y: torch.Tensor | None = None,
                   shown: torch.Tensor | None = None) -> torch.Tensor:
    """Each row: a test image, then its style decoded under every class: the mean of
    p(x | z = μ(x, y), y = k) for k = 0 … K−1, z the location of q(z|x, y) for the image's own
    class y (Kingma et al. 2014, fig. 1, left). ``x`` (N, D) is what the encoder sees,
    ``shown`` what the first column shows (default: the same), ``y`` the images' labels
    (the semi-supervised model uses its classifier's class where None). Returns
    (N · (K + 1), D).

    Raises
    ------
    ConfigError
        For a model without a label condition.
    """
    if vae.num_classes is None:
        raise ConfigError("--mode analogies decodes one style under every class, which needs a "
                          "model conditioned on the class label (--condition label or "
                          "--labelled)")
    k = vae.num_classes
    z = vae.encode(x, vae.given(x, y))[0]  # N x z_dim
    classes = torch.arange(k, device=z.device)
    decoded = vae.decode(z[:, None].expand(-1, k, -1).reshape(-1, vae.z_dim),
                         classes.repeat(x.shape[0]))
    first = x if shown is None else shown
    return torch.cat([first[:, None], decoded.reshape(x.shape[0], k, -1)], 1).reshape(
        -1, x.shape[-1])


def save_grid(vae: VAE, images: torch.Tensor, shape: tuple[int, ...], out, nrow: int = 8
              ) -> None:
    """:func:`pyro_vae.plots.save_image_grid` of (N, D) data in ``vae``'s units, shown so that
    the likelihood's ``picture_max`` (1 for grey levels, n for binomial counts) is white."""
    plots.save_image_grid(images / vae.likelihood.picture_max, shape, out, nrow=nrow)


def draw(vae: VAE, mode: str, out, *, num: int | None = None, nrow: int = 8,
         mean: bool = False, images: torch.Tensor | None = None,
         seen: torch.Tensor | None = None, labels: torch.Tensor | None = None,
         class_names: list[str] | None = None, y: torch.Tensor | None = None,
         label: int | None = None) -> str:
    """Draw picture ``mode`` of ``vae`` into ``out`` and say what was drawn, in one line.

    Modes: ``prior`` (z ~ p(z), x ~ p(x|z) or its mean with ``mean``; ``out`` .png or .npy),
    ``reconstruct``, ``interpolate``, ``traverse``, ``manifold`` (z_dim 2), ``latents`` and
    ``analogies`` (label-conditioned models). ``images`` (N, D) are test images as shown,
    ``seen`` the same as the model sees them (a binary draw), ``labels`` colour the latent map,
    ``y`` are the images' conditions (labels or covariates) for a conditional model, and
    ``label`` the class that ``prior`` and ``manifold`` draw (a prior grid of a label model
    otherwise shows class r mod K in row r). Pyro's RNG is used for draws.

    Raises
    ------
    ConfigError
        For a mode this model cannot draw (an improper prior's samples, a manifold beyond two
        dimensions, pictures of data that are not images, too few images, analogies or a
        ``label`` without a label condition, a label outside 0 … K−1, draws from the prior of a
        model conditioned on covariates).
    """
    shape, out = tuple(vae.data_shape), str(out)
    num = num or DEFAULT_NUM[mode]
    _check_label(vae, mode, label)
    if out.lower().endswith(".png") and mode != "latents" and not plots.is_image(shape):
        raise ConfigError(f"the data have shape {shape}, not images; use --out FILE.npy")
    if mode == "manifold" and vae.z_dim != 2:
        raise ConfigError(f"--mode manifold needs a model with --z-dim 2; this one has {vae.z_dim}")
    if mode in ("prior", "manifold") and not vae.can_sample:
        raise ConfigError(
            f"this model has the flat prior (--prior {vae.prior.name}), which cannot be sampled; "
            "use --mode reconstruct, interpolate, traverse or latents")
    if mode == "prior":
        return _draw_prior(vae, out, num, nrow, mean, label)
    if mode == "manifold":
        save_grid(vae, manifold_grid(vae, num, label), shape, out, nrow=num)
        of = f" of class {label or 0}" if vae.num_classes is not None else ""
        return f"wrote the decoded {num}×{num} grid over the prior's quantiles{of} to {out}"
    seen = images if seen is None else seen
    y = _encoding(vae, y)
    if mode == "latents":
        codes = torch.cat([vae.encode(xb, yb)[0] for xb, yb in _split(seen, y, 1000)])
        plots.save_latent_map(codes, labels, out, class_names)
        return f"wrote the map of {codes.shape[0]} posterior means to {out}"
    if mode == "reconstruct":
        grid, per_row = reconstructions(vae, images, seen, num, nrow, show_seen=False, y=y)
        save_grid(vae, grid, shape, out, nrow=per_row)
        return f"wrote {grid.shape[0] // 2} test images above their reconstructions to {out}"
    if mode == "analogies":
        count = min(num, seen.shape[0])
        grid = analogies_grid(vae, seen[:count], y[:count] if y is not None else None,
                              shown=images[:count])
        save_grid(vae, grid, shape, out, nrow=vae.num_classes + 1)
        return (f"wrote {count} test images, each followed by its style under each of the "
                f"{vae.num_classes} classes, to {out}")
    if mode == "interpolate":
        pairs = images.shape[0] // 2
        if pairs == 0:
            raise ConfigError("--mode interpolate needs at least two images")
        ends = (None, None) if y is None else (y[:pairs], y[pairs : 2 * pairs])
        grid = interpolation_grid(vae, seen[:pairs], seen[pairs : 2 * pairs], steps=8,
                                  shown_a=images[:pairs], shown_b=images[pairs : 2 * pairs],
                                  y_a=ends[0], y_b=ends[1])
        save_grid(vae, grid, shape, out, nrow=10)
        return f"wrote interpolations between {pairs} pairs of test images to {out}"
    index = min(num, images.shape[0]) - 1
    one = y[index : index + 1] if y is not None else None
    save_grid(vae, traversal_grid(vae, seen[index : index + 1], y=one), shape, out, nrow=9)
    return f"wrote traversals of {vae.z_dim} latent units around test image {index} to {out}"


def _split(x: torch.Tensor, y: torch.Tensor | None, size: int):
    """(x, y) in batches of ``size`` rows, y None throughout when None."""
    for start in range(0, x.shape[0], size):
        yield x[start : start + size], (y[start : start + size] if y is not None else None)


def _check_label(vae: VAE, mode: str, label: int | None) -> None:
    covariates = vae.condition is not None and not vae.condition.labels
    if covariates and mode in ("prior", "manifold"):
        raise ConfigError(f"--mode {mode} draws x ~ p(x|z, y), and this model is conditioned on "
                          "covariates, which sample cannot choose; use --mode reconstruct, "
                          "interpolate, traverse or latents (the test rows' covariates), or "
                          "vae.sample(num, y=covariates) in Python")
    if label is None:
        return
    if vae.num_classes is None:
        raise ConfigError("--label picks the class to draw, which needs a model conditioned on "
                          "the class label (--condition label or --labelled)")
    if mode not in ("prior", "manifold"):
        raise ConfigError("--label picks the class that --mode prior and manifold draw; drop it "
                          f"for --mode {mode}")
    if not 0 <= label < vae.num_classes:
        raise ConfigError(f"--label must be a class from 0 to {vae.num_classes - 1}, got {label}")


def _draw_prior(vae: VAE, out: str, num: int, nrow: int, mean: bool,
                label: int | None = None) -> str:
    rows = class_rows(vae, -(-num // nrow), nrow, label)
    y = rows[:num] if rows is not None else None
    x = vae.sample(num, mean=mean, y=y)
    if out.lower().endswith(".npy"):
        save_arrays(out, x=x.reshape(num, *vae.data_shape).cpu().numpy())
    else:
        save_grid(vae, x, tuple(vae.data_shape), out, nrow=nrow)
    kind = "means of p(x|z)" if mean else "draws x ~ p(x|z)"
    if label is not None:
        kind += f" of class {label}"
    elif y is not None:
        kind += ", class r mod K in row r"
    return f"wrote {num} {kind} to {out}"


def sample_run(run_dir, mode: str, out, *, num: int | None = None, nrow: int = 8,
               mean: bool = False, dataset: str | None = None, seed: int = 0,
               model: VAE | None = None, label: int | None = None) -> str:
    """:func:`draw` picture ``mode`` of the run in ``run_dir`` into ``out``, as ``pyro-vae
    sample`` does: the modes that need images read the run's test set (or ``dataset``), shown
    as grey levels and encoded as the model saw them (binarised where the run binarised; a
    conditional model with their labels or covariates). ``label`` is the class ``prior`` and
    ``manifold`` draw for a label-conditioned model. Returns the line that says what was
    drawn.

    Raises
    ------
    RunDirError, CheckpointError, DataError, ConfigError
        As :func:`pyro_vae.load`, :func:`pyro_vae.io.data.eval_data` and :func:`draw`.
    """
    vae, config = load_run(run_dir, model=model)
    _check_label(vae, mode, label)
    images = seen = labels = y = None
    source = ""
    wanted = images_needed(mode, num)
    if wanted:
        held = eval_data(config, dataset, wanted, binarized=False)
        images, labels, source = held.x, held.labels, held.source
        y = held.conditions(config.model.condition)
        seen = binarize_fixed(images) if config.binarizes else images
        source = f" ({source})"
    pyro.set_rng_seed(seed)
    message = draw(vae, mode, out, num=num, nrow=nrow, mean=mean, images=images, seen=seen,
                   labels=labels, class_names=class_names(dataset or config.data.dataset,
                                                          config.data.classes),
                   y=y, label=label)
    return message + source
