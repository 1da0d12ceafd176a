"""Pictures of what a VAE learned, as image tensors ready for a grid: samples, reconstructions,
interpolations, latent traversals, the decoded latent manifold and a latent map.

:func:`draw` makes any of them into a file, as ``pyro-vae sample --mode`` does.
"""

from __future__ import annotations

import pyro
import torch

from .. import plots
from ..errors import ConfigError
from ..io.data import binarize_fixed, class_names, load_eval_data
from ..io.checkpoint import load_run
from ..io.files import save_arrays
from ..model import VAE
from ..registry import PICTURE_MODES

#: The picture modes of :func:`draw` and their default ``num``.
DEFAULT_NUM = PICTURE_MODES


def images_needed(mode: str, num: int | None) -> int:
    """How many test images ``mode`` reads (0 for the modes that only decode)."""
    num = num or DEFAULT_NUM[mode]
    return {"reconstruct": num, "interpolate": 2 * num, "traverse": num, "latents": num}.get(
        mode, 0)


@torch.no_grad()
def reconstructions(vae: VAE, images: torch.Tensor, seen: torch.Tensor | None = None,
                    num: int = 32, nrow: int = 8, show_seen: bool = True):
    """Rows of ``images`` (N, D), above them what the model sees (``seen``, e.g. a binary
    draw; shown when given and ``show_seen``), then the reconstructions of ``seen``.

    Returns the (rows · count, D) grid and the images per row.
    """
    seen_rows = [] if seen is None or not show_seen else [seen]
    seen = images if seen is None else seen
    per_row = min(nrow, num, images.shape[0])
    count = min(num, images.shape[0]) // per_row * per_row
    rows = [images[:count], *(s[:count] for s in seen_rows), vae.reconstruct(seen[:count])]
    return plots.interleave_rows(rows, per_row), per_row


@torch.no_grad()
def interpolation_grid(vae, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8,
                       shown_a: torch.Tensor | None = None,
                       shown_b: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded points on the line between the encodings of pairs of images.

    Row i is [x_a, p(x | z_t) for t = 0 … 1 in ``steps`` steps, x_b] with
    z_t = (1 − t) μ(x_a) + t μ(x_b): a regular latent space decodes the midpoint to something
    halfway between the two images. ``x_a``, ``x_b`` (pairs, D) are what the encoder sees;
    ``shown_a``, ``shown_b`` what the end columns show (default: the same). Returns
    (pairs · (steps + 2), D).
    """
    z_a, z_b = vae.encode(x_a)[0], vae.encode(x_b)[0]
    t = torch.linspace(0, 1, steps, device=z_a.device)[None, :, None]
    decoded = vae.decode((1 - t) * z_a[:, None] + t * z_b[:, None])  # pairs x steps x D
    ends_a = x_a if shown_a is None else shown_a
    ends_b = x_b if shown_b is None else shown_b
    return torch.cat([ends_a[:, None], decoded, ends_b[:, None]], dim=1).reshape(-1, x_a.shape[-1])


@torch.no_grad()
def traversal_grid(vae, x: torch.Tensor, steps: int = 9) -> torch.Tensor:
    """Each row sets one latent unit of the encoding of one image ``x`` (1, D) to ``steps``
    quantiles 1%…99% of that unit under the prior (from 20,000 draws; ±3 around the encoding
    for a flat prior), the other units fixed. Returns (z_dim · steps, D)."""
    z = vae.encode(x)[0][0]
    levels = torch.linspace(0.01, 0.99, steps, device=z.device)
    if vae.can_sample:
        values = torch.quantile(vae.prior().sample((20000,)), levels, dim=0).T  # unit x step
    else:
        values = z[:, None] + torch.linspace(-3, 3, steps, device=z.device)
    codes = z.repeat(vae.z_dim, steps, 1)  # unit x step x z_dim
    for u in range(vae.z_dim):
        codes[u, :, u] = values[u]
    return vae.decode(codes.reshape(-1, vae.z_dim))


@torch.no_grad()
def manifold_grid(vae, side: int = 15) -> torch.Tensor:
    """For two latent units: decode a side × side grid over the prior's quantiles 5%…95% of
    each unit (Kingma & Welling 2014, fig. 4), estimated from 20,000 prior draws.

    Returns (side², D). Raises ``ValueError`` unless z_dim is 2.
    """
    if vae.z_dim != 2:
        raise ValueError(f"the manifold picture needs --z-dim 2, this model has {vae.z_dim}")
    draws = vae.prior().sample((20000,))
    levels = torch.linspace(0.05, 0.95, side, device=draws.device)
    q = torch.quantile(draws, levels, dim=0)  # side x 2
    grid = torch.stack(torch.meshgrid(q[:, 0], q[:, 1].flip(0), indexing="xy"), dim=-1)
    return vae.decode(grid.reshape(-1, 2))


def save_grid(vae: VAE, images: torch.Tensor, shape: tuple[int, ...], out, nrow: int = 8
              ) -> None:
    """:func:`pyro_vae.plots.save_image_grid` of (N, D) data in ``vae``'s units, shown so that
    the likelihood's ``picture_max`` (1 for grey levels, n for binomial counts) is white."""
    plots.save_image_grid(images / vae.likelihood.picture_max, shape, out, nrow=nrow)


def draw(vae: VAE, mode: str, out, *, num: int | None = None, nrow: int = 8,
         mean: bool = False, images: torch.Tensor | None = None,
         seen: torch.Tensor | None = None, labels: torch.Tensor | None = None,
         class_names: list[str] | None = None) -> str:
    """Draw picture ``mode`` of ``vae`` into ``out`` and say what was drawn, in one line.

    Modes: ``prior`` (z ~ p(z), x ~ p(x|z) or its mean with ``mean``; ``out`` .png or .npy),
    ``reconstruct``, ``interpolate``, ``traverse``, ``manifold`` (z_dim 2) and ``latents``.
    ``images`` (N, D) are test images as shown, ``seen`` the same as the model sees them (a
    binary draw), ``labels`` colour the latent map. Pyro's RNG is used for draws.

    Raises
    ------
    ConfigError
        For a mode this model cannot draw (an improper prior's samples, a manifold beyond two
        dimensions, pictures of data that are not images, too few images).
    """
    shape, out = tuple(vae.data_shape), str(out)
    num = num or DEFAULT_NUM[mode]
    if out.lower().endswith(".png") and mode != "latents" and not plots.is_image(shape):
        raise ConfigError(f"the data have shape {shape}, not images; use --out FILE.npy")
    if mode == "manifold" and vae.z_dim != 2:
        raise ConfigError(f"--mode manifold needs a model with --z-dim 2; this one has {vae.z_dim}")
    if mode in ("prior", "manifold") and not vae.can_sample:
        raise ConfigError(
            f"this model has the flat prior (--prior {vae.prior.name}), which cannot be sampled; "
            "use --mode reconstruct, interpolate, traverse or latents")
    if mode == "prior":
        return _draw_prior(vae, out, num, nrow, mean)
    if mode == "manifold":
        save_grid(vae, manifold_grid(vae, num), shape, out, nrow=num)
        return f"wrote the decoded {num}×{num} grid over the prior's quantiles to {out}"
    seen = images if seen is None else seen
    if mode == "latents":
        codes = torch.cat([vae.encode(xb)[0] for xb in seen.split(1000)])
        plots.save_latent_map(codes, labels, out, class_names)
        return f"wrote the map of {codes.shape[0]} posterior means to {out}"
    if mode == "reconstruct":
        grid, per_row = reconstructions(vae, images, seen, num, nrow, show_seen=False)
        save_grid(vae, grid, shape, out, nrow=per_row)
        return f"wrote {grid.shape[0] // 2} test images above their reconstructions to {out}"
    if mode == "interpolate":
        pairs = images.shape[0] // 2
        if pairs == 0:
            raise ConfigError("--mode interpolate needs at least two images")
        grid = interpolation_grid(vae, seen[:pairs], seen[pairs : 2 * pairs], steps=8,
                                  shown_a=images[:pairs], shown_b=images[pairs : 2 * pairs])
        save_grid(vae, grid, shape, out, nrow=10)
        return f"wrote interpolations between {pairs} pairs of test images to {out}"
    index = min(num, images.shape[0]) - 1
    save_grid(vae, traversal_grid(vae, seen[index : index + 1]), shape, out, nrow=9)
    return f"wrote traversals of {vae.z_dim} latent units around test image {index} to {out}"


def _draw_prior(vae: VAE, out: str, num: int, nrow: int, mean: bool) -> str:
    x = vae.sample(num, mean=mean)
    if out.lower().endswith(".npy"):
        save_arrays(out, x=x.reshape(num, *vae.data_shape).cpu().numpy())
    else:
        save_grid(vae, x, tuple(vae.data_shape), out, nrow=nrow)
    kind = "means of p(x|z)" if mean else "draws x ~ p(x|z)"
    return f"wrote {num} {kind} to {out}"


def sample_run(run_dir, mode: str, out, *, num: int | None = None, nrow: int = 8,
               mean: bool = False, dataset: str | None = None, seed: int = 0,
               model: VAE | None = None) -> str:
    """:func:`draw` picture ``mode`` of the run in ``run_dir`` into ``out``, as ``pyro-vae
    sample`` does: the modes that need images read the run's test set (or ``dataset``), shown
    as grey levels and encoded as the model saw them (binarised where the run binarised).
    Returns the line that says what was drawn.

    Raises
    ------
    RunDirError, CheckpointError, DataError, ConfigError
        As :func:`pyro_vae.load`, :func:`pyro_vae.io.data.load_eval_data` and :func:`draw`.
    """
    vae, config = load_run(run_dir, model=model)
    images = seen = labels = None
    source = ""
    wanted = images_needed(mode, num)
    if wanted:
        images, labels, source = load_eval_data(config, dataset, wanted, binarized=False)
        seen = binarize_fixed(images) if config.binarizes else images
        source = f" ({source})"
    pyro.set_rng_seed(seed)
    message = draw(vae, mode, out, num=num, nrow=nrow, mean=mean, images=images, seen=seen,
                   labels=labels, class_names=class_names(dataset or config.data.dataset,
                                                          config.data.classes))
    return message + source
