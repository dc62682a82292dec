"""Fitting and scoring sharded over torch.distributed processes (torchrun; gloo on CPU, NCCL on GPU).

Every rank reads its shard of the images (every world-th one) and accumulates its own statistics;
rank 0 receives them one rank at a time and merges them with the same exact pairwise update as
`PaDiM.merge`, so the result equals a single-process fit (up to float64 rounding). PaDiM.fit runs
the fit itself, here as in one process; `ProcessGroup` is the padim.fitting.Shards that shares it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from padim.errors import PadimError
from padim.frame import FrameStats
from padim.gaussian import GaussianStats

if TYPE_CHECKING:
    from padim.model import PaDiM


class ProcessGroup:
    """The Shards (padim.fitting) of the process group: rank r fits every world-th image from r; rank 0 leads."""

    def __init__(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def mine(self, items: list) -> list:
        """This rank's shard."""
        return items[self.rank :: self.world]

    def merge(self, stats: GaussianStats) -> GaussianStats | None:
        """Every rank's statistics merged on rank 0 (merge_to_rank0); None elsewhere."""
        return merge_to_rank0(stats)

    def merge_frames(self, frames: FrameStats) -> FrameStats | None:
        """Every rank's frame statistics merged on rank 0 (merge_frames_to_rank0); None elsewhere."""
        return merge_frames_to_rank0(frames)

    def share(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor, broadcast into this rank's."""
        dist.broadcast(tensor, src=0)
        return tensor


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...); return (rank, world)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise PadimError("--distributed needs torchrun (e.g. torchrun --nproc_per_node 2 -m padim fit ...)")
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def merge_to_rank0(stats: GaussianStats) -> GaussianStats | None:
    """Send every rank's statistics to rank 0, which merges them in rank order; None elsewhere."""
    rank, world = dist.get_rank(), dist.get_world_size()
    count = torch.tensor([float(stats.n)], dtype=torch.float64, device=stats.mean.device)
    if rank != 0:
        for tensor in (count, stats.mean, stats.scatter):
            dist.send(tensor, dst=0)
        return None
    merged = GaussianStats(stats.n, stats.mean.clone(), stats.scatter.clone())
    for src in range(1, world):
        other = GaussianStats(0, torch.empty_like(stats.mean), torch.empty_like(stats.scatter))
        dist.recv(count, src=src)
        dist.recv(other.mean, src=src)
        dist.recv(other.scatter, src=src)
        other.n = int(count.item())
        merged.merge(other)
    return merged


def merge_frames_to_rank0(frame: FrameStats) -> FrameStats | None:
    """Every rank's frame statistics merged on rank 0 (like merge_to_rank0); None elsewhere."""
    contrast = torch.tensor([frame.contrast_min], dtype=torch.float64, device=frame.gaussian.mean.device)
    dist.all_reduce(contrast, op=dist.ReduceOp.MIN)
    gaussian = merge_to_rank0(frame.gaussian)
    return None if gaussian is None else FrameStats(gaussian, float(contrast.item()))


def fit_distributed(model: PaDiM, images: Any) -> PaDiM:
    """Fit `model` on this rank's shard of `images`; rank 0 ends with the merged, finished model."""
    model.fit(images, shards=ProcessGroup())
    dist.barrier()
    return model


def shard_indices(n_items: int) -> list[int]:
    """This rank's share of n_items (every world-th one, starting at its rank); all of them outside torchrun."""
    if not dist.is_initialized():
        return list(range(n_items))
    return list(range(dist.get_rank(), n_items, dist.get_world_size()))


def global_range(low: float, high: float, device: str = "cpu") -> tuple[float, float]:
    """The smallest low and largest high over all ranks (the shared colour scale of heat maps)."""
    if not dist.is_initialized():
        return low, high
    t = torch.tensor([-low, high], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return -float(t[0]), float(t[1])


def gather_rows(rows: list[Any]) -> list[Any] | None:
    """Every rank's rows (JSON-like objects) on rank 0, concatenated in rank order; None elsewhere."""
    if not dist.is_initialized():
        return rows
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    return [row for part in gathered for row in part] if rank == 0 else None
