"""Drawing: PNG image grids (torchvision), the training curve and the latent map (matplotlib).

These functions draw tensors and numbers; they know nothing of models (the pictures of a model
are computed in :mod:`pyro_vae.evaluation.pictures`)."""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from matplotlib.figure import Figure

from .io.files import atomic_write_bytes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write a matplotlib figure as PNG atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())


def training_curve_figure(rows: list[dict], unit: str = "image",
                          kept: int | None = None) -> Figure:
    """The training curve of ``metrics.csv`` rows: train and test −ELBO (nats per ``unit``)
    against epoch, and where the rows have one, the validation −ELBO with the kept epoch
    ``kept`` (the lowest validation −ELBO, whose weights ``model.safetensors`` holds) marked by
    a dashed vertical line."""
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, [r["train_neg_elbo"] for r in rows], "o-", label="train")
    ax.plot(epochs, [r["test_neg_elbo"] for r in rows], "s-", label="test")
    if any("validation_neg_elbo" in r for r in rows):
        ax.plot(epochs, [r.get("validation_neg_elbo", np.nan) for r in rows], "^-",
                label="validation")
        if kept is not None:
            ax.axvline(kept, color="0.4", linestyle="--", linewidth=1,
                       label=f"kept (epoch {kept})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"−ELBO (nats per {unit})")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def save_training_curve(rows: list[dict], path: str | os.PathLike, unit: str = "image",
                        kept: int | None = None) -> None:
    """Write :func:`training_curve_figure` of ``rows`` as a PNG at ``path``."""
    save_figure(training_curve_figure(rows, unit, kept), path)


def is_image(data_shape: tuple[int, ...]) -> bool:
    """Whether data of this shape can be drawn: (H, W) grey, or (C, H, W) with C = 1 or 3."""
    from .config import data_unit  # the one rule for what is an image

    return data_unit(data_shape) == "image"


def save_image_grid(
    images: torch.Tensor, data_shape: tuple[int, ...], path: str | os.PathLike, nrow: int = 8
) -> None:
    """Save (N, D) levels in [0, 1] as a PNG grid of ``nrow`` images per row.

    ``data_shape`` (H, W) for grey images or (C, H, W) with C = 1 or 3 (colour, channels
    first) gives each image's shape. Raises ``ValueError`` for other shapes, which are not
    images.
    """
    if not is_image(data_shape):
        raise ValueError(f"data of shape {data_shape} are not images; save them as .npy")
    from torchvision.utils import save_image  # torchvision takes seconds to import

    channels_shape = data_shape if len(data_shape) == 3 else (1, *data_shape)
    grid = images.detach().cpu().reshape(-1, *channels_shape).clamp(0, 1)
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png", nrow=nrow, padding=2, pad_value=1.0)
    atomic_write_bytes(path, buffer.getvalue())


def interleave_rows(rows: list[torch.Tensor], per_row: int) -> torch.Tensor:
    """Stack the rows of several (N, D) tensors in turn: an original above its reconstruction.

    Each tensor is (N, D) with N a multiple of ``per_row``; returns (len(rows)·N, D).
    """
    d = rows[0].shape[-1]
    return torch.stack([r.reshape(-1, per_row, d) for r in rows], dim=1).reshape(-1, d)


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
