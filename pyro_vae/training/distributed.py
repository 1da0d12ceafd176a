"""Data-parallel training on ``torch.distributed`` when launched by ``torchrun``.

Every process (rank) holds the whole model and the whole dataset, takes its own shard of each
epoch's permutation and a 1/world share of each global batch, and
``DistributedDataParallel`` averages the gradients, so every rank takes the same optimiser
step and the parameters stay identical. The loss is Pyro's ELBO of the model and guide,
computed inside the module that DDP wraps (:class:`ELBOLoss`). Backend: gloo on CPU, nccl on
GPU; rendezvous, nodes and addresses come from torchrun's environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def cluster_from_env() -> Cluster | None:
    """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or None when this
    is a single process (no torchrun, or a world of one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return Cluster(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(cluster: Cluster, device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, nccl on CUDA); returns this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def check_batch(batch_size: int, cluster: Cluster) -> int:
    """Each rank's share of the global ``batch_size``.

    Raises
    ------
    ConfigError
        If the global batch does not split evenly over the processes.
    """
    if batch_size % cluster.world:
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {cluster.world} processes; use a "
            f"multiple of {cluster.world}"
        )
    return batch_size // cluster.world


def shard(perm: torch.Tensor, cluster: Cluster) -> torch.Tensor:
    """This rank's indices of an epoch's permutation: every world-th, from ``rank``.

    The tail that does not divide evenly is dropped, so that every rank takes the same number
    of steps (each step is a collective operation).
    """
    usable = perm.shape[0] - perm.shape[0] % cluster.world
    return perm[cluster.rank : usable : cluster.world]


class ELBOLoss(nn.Module):
    """``forward(x)`` = Pyro's differentiable −ELBO of ``vae`` on the batch ``x``, multiplied
    by the number of processes so that DDP's gradient average equals the gradient of the global
    batch's summed loss, as in a single process."""

    def __init__(self, vae: nn.Module, elbo, world: int, regularisers: dict | None = None):
        super().__init__()
        self.vae, self.elbo, self.world = vae, elbo, world
        self.regularisers = regularisers or {}

    def forward(self, *args) -> torch.Tensor:
        """``args``: the batch (batch, D) and, where a schedule weights the KL term or the
        model is conditional, its weight and the batch's conditions (labels or covariates;
        :func:`~pyro_vae.training.step.step_arguments`); the training-only keyword arguments
        (regularisers, the semi-supervised model's ``classifier_weight``) are fixed."""
        loss = self.elbo.differentiable_loss(self.vae.model, self.vae.guide, *args,
                                             **self.regularisers)
        return self.world * loss


def all_sum(value: float, device: torch.device) -> float:
    """The sum of ``value`` over all ranks."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())
