"""``--dataset shapes``: binary images of shapes with known generative factors, in the spirit
of dSprites (Matthey, Higgins, Hassabis & Lerchner 2017), rendered with numpy on demand.

Every combination of the factors appears once: 3 shapes (square, ellipse, triangle) × 6
scales × 10 orientations (over 2π; each shape's symmetries repeat some, as in dSprites) × 16
horizontal × 16 vertical positions = 46,080 images of 32 × 32 pixels, a pixel on where its
centre lies inside the shape. A seeded tenth is the test split. The factor values' indices,
(N, 5) in :data:`FACTORS` order, go with each split for the disentanglement metric
(:func:`~pyro_vae.evaluation.disentanglement.mutual_information_gap`); the shape is also the
class label (``--condition label``, latent maps).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

#: The generative factors, in the order of the factor matrix's columns, and their values.
FACTORS = ("shape", "scale", "orientation", "pos_x", "pos_y")
SHAPES = ("square", "ellipse", "triangle")
SCALES = np.linspace(0.10, 0.18, 6)  # the shape's half-size as a share of the image side
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 10, endpoint=False)
POSITIONS = np.linspace(0.27, 0.73, 16)  # the centre, as a share of the image side
SIZE = 32
#: The share of the images held out as the test split, and the seed of that split.
TEST_SHARE, SPLIT_SEED = 0.1, 0


def _inside(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Whether the points (u, v), relative to the centre in the shape's own frame, lie inside
    the shape of half-size r."""
    if shape == "square":
        return (np.abs(u) <= r) & (np.abs(v) <= r)
    if shape == "ellipse":
        return (u / r) ** 2 + (v / (0.5 * r)) ** 2 <= 1.0
    # the equilateral triangle of circumradius r·1.2: inside its three edges (inradius half that)
    inside = np.ones(np.broadcast(u, v).shape, dtype=bool)
    for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        inside &= -(u * np.cos(angle) + v * np.sin(angle)) <= 0.6 * r
    return inside


@functools.lru_cache(maxsize=1)
def render() -> tuple[np.ndarray, np.ndarray]:
    """Every image and its factors: (46080, 32, 32) bool and (46080, 5) int64 indices into
    the factor values, in the order shape, scale, orientation, pos_x, pos_y (the last fastest).
    """
    centres = (np.arange(SIZE) + 0.5) / SIZE
    gy, gx = np.meshgrid(centres, centres, indexing="ij")  # (32, 32): row = y, column = x
    px, py = np.meshgrid(POSITIONS, POSITIONS, indexing="ij")  # (16, 16): pos_x, pos_y
    dx = gx[None, None] - px[..., None, None]  # (16, 16, 32, 32)
    dy = gy[None, None] - py[..., None, None]
    images = []
    for shape in SHAPES:
        for r in SCALES:
            for theta in ORIENTATIONS:
                u = np.cos(theta) * dx + np.sin(theta) * dy
                v = -np.sin(theta) * dx + np.cos(theta) * dy
                images.append(_inside(shape, u, v, r))
    x = np.stack(images).reshape(-1, SIZE, SIZE)
    grids = np.meshgrid(*(np.arange(n) for n in (len(SHAPES), len(SCALES), len(ORIENTATIONS),
                                                  len(POSITIONS), len(POSITIONS))),
                        indexing="ij")
    factors = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    return x, factors


def split() -> dict[str, torch.Tensor]:
    """The train and test splits: ``train``, ``test`` (N, 32, 32) bool tensors and
    ``train_factors``, ``test_factors`` (N, 5) int64, the same on every call."""
    x, factors = render()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    held = int(round(TEST_SHARE * len(x)))
    test, train = order[:held], order[held:]
    return {"train": torch.from_numpy(x[train]), "test": torch.from_numpy(x[test]),
            "train_factors": torch.from_numpy(factors[train]),
            "test_factors": torch.from_numpy(factors[test])}
