"""Pictures of a run: training curve and image grids (matplotlib and torchvision)."""

from __future__ import annotations

import io
import os

import torch
from matplotlib.figure import Figure

from .checkpoint import atomic_write_bytes


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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


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
