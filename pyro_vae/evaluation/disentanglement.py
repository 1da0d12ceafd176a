"""Disentanglement: the mutual information gap (MIG) of Chen, Li, Grosse & Duvenaud (2018, §5)
between a model's codes and a dataset's known generative factors (``--dataset shapes``)."""

from __future__ import annotations

import numpy as np
import torch

#: Equal-width bins of each code dimension for the mutual information, as in Locatello et
#: al.'s (2019) disentanglement_lib.
BINS = 20


def _entropy(labels: np.ndarray) -> float:
    """H(v) of a discrete variable (N,) in nats, from its frequencies."""
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) of two discrete variables (N,) in nats, from their joint frequencies."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def mutual_information_gap(codes: torch.Tensor, factors: torch.Tensor,
                           bins: int = BINS) -> dict:
    """MIG = (1/K) Σ_k [I(z_j(k); v_k) − max_{j ≠ j(k)} I(z_j; v_k)] / H(v_k) (Chen et al. 2018,
    eq. 6), j(k) the code dimension most informative about factor v_k.

    ``codes`` (N, Z) are posterior means E_q[z|x]; ``factors`` (N, K) the discrete factor
    values (e.g. their indices). Each code dimension is cut into ``bins`` equal-width bins over
    its range and the mutual information estimated from the joint frequencies, as in Locatello
    et al.'s (2019) disentanglement_lib (Chen et al. estimate it by sampling q(z|x) instead).
    Between 0 and 1: near 1 when each factor is captured by one code dimension alone, near 0
    when none is or several share it. Factors with one value (no entropy) are left out.

    Returns
    -------
    dict
        ``mig`` (float), ``per_factor`` (K floats, NaN for constant factors) and
        ``mutual_information`` (Z, K) in nats.

    Raises
    ------
    ValueError
        For fewer than two codes, a code dimension of Z < 2, or mismatched rows.
    """
    z, v = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if z.ndim != 2 or v.ndim != 2 or len(z) != len(v) or len(z) < 2 or z.shape[1] < 2:
        raise ValueError(f"MIG needs codes (N, Z ≥ 2) and factors (N, K) for the same N ≥ 2, "
                         f"got {z.shape} and {v.shape}")
    edges = [np.linspace(lo, hi, bins + 1)[1:-1] for lo, hi in zip(z.min(0), z.max(0))]
    binned = np.stack([np.digitize(z[:, j], edges[j]) for j in range(z.shape[1])], 1)
    info = np.array([[_mutual_information(binned[:, j], v[:, k]) for k in range(v.shape[1])]
                     for j in range(z.shape[1])])
    gaps = []
    for k in range(v.shape[1]):
        h = _entropy(v[:, k])
        if h == 0:
            gaps.append(float("nan"))
            continue
        top = np.sort(info[:, k])[::-1]
        gaps.append(float((top[0] - top[1]) / h))
    valid = [g for g in gaps if not np.isnan(g)]
    return {"mig": float(np.mean(valid)) if valid else float("nan"), "per_factor": gaps,
            "mutual_information": info}
