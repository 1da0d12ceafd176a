"""Pictures of what a VAE learned: training curve, samples, reconstructions, interpolations,
latent traversals, the decoded latent manifold and a latent map (matplotlib, torchvision)."""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from matplotlib.figure import Figure

from .checkpoint import atomic_write_bytes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write a matplotlib figure as PNG atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())


def save_training_curve(rows: list[dict], path: str | os.PathLike) -> None:
    """Plot train and test −ELBO (nats per image) against epoch into a PNG at ``path``."""
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, [r["train_neg_elbo"] for r in rows], "o-", label="train")
    ax.plot(epochs, [r["test_neg_elbo"] for r in rows], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("−ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def save_image_grid(
    images: torch.Tensor, data_shape: tuple[int, ...], path: str | os.PathLike, nrow: int = 8
) -> None:
    """Save (N, D) grey levels in [0, 1] as a PNG grid of ``nrow`` images per row.

    ``data_shape`` (H, W) gives each image's shape. Raises ``ValueError`` for other shapes,
    which are not images.
    """
    if len(data_shape) != 2:
        raise ValueError(f"data of shape {data_shape} are not images; save them as .npy")
    from torchvision.utils import save_image  # torchvision takes seconds to import

    grid = images.detach().cpu().reshape(-1, 1, *data_shape).clamp(0, 1)
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png", nrow=nrow, padding=2, pad_value=1.0)
    atomic_write_bytes(path, buffer.getvalue())


def interleave_rows(rows: list[torch.Tensor], per_row: int) -> torch.Tensor:
    """Stack the rows of several (N, D) tensors in turn: an original above its reconstruction.

    Each tensor is (N, D) with N a multiple of ``per_row``; returns (len(rows)·N, D).
    """
    d = rows[0].shape[-1]
    return torch.stack([r.reshape(-1, per_row, d) for r in rows], dim=1).reshape(-1, d)


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
    try:
        values = torch.quantile(vae.prior().sample((20000,)), levels, dim=0).T  # unit x step
    except NotImplementedError:  # the flat prior cannot be sampled
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


def save_latent_map(codes: torch.Tensor, labels: torch.Tensor | None, path,
                    names: list[str] | None = None) -> None:
    """Scatter of posterior means (N, z_dim) coloured by label (legend from ``names``, the class
    names); projected onto their first two principal components when z_dim > 2."""
    points = codes.detach().cpu().numpy().astype(np.float64)
    xlabel, ylabel = "z[0]", "z[1]"
    if points.shape[1] == 1:  # one unit: spread the points vertically by label
        rank = labels.cpu().numpy() if labels is not None else np.zeros(len(points))
        points = np.column_stack([points[:, 0], rank + np.random.default_rng(0).uniform(
            -0.3, 0.3, len(points))])
        ylabel = "label"
    elif points.shape[1] > 2:
        centred = points - points.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        points = centred @ vt[:2].T
        share = s[:2] ** 2 / (s**2).sum()
        xlabel, ylabel = (f"PC{i + 1} of E[z|x] ({share[i]:.0%} of variance)" for i in range(2))
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        labels = labels.cpu().numpy()
        for k in np.unique(labels):
            name = names[k] if names is not None and k < len(names) else str(k)
            chosen = labels == k
            ax.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.7, label=name)
        ax.legend(markerscale=3, fontsize="small", loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("posterior means of test images")
    save_figure(fig, path)
