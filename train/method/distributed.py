"""torchrun / DDP helpers. Without WORLD_SIZE > 1 everything is a single process.

torchrun --nproc_per_node=8 -m train --preset vit-b16 ...     (nccl on GPUs)
torchrun --nproc_per_node=2 -m train --preset toy ...         (gloo on CPUs)
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; no gradient)."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def gather_rows(x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Concatenate every rank's (n_r, ...) rows in rank order (n_r may differ).
    With ``grad``, gradients flow back to the rank that owns each row."""
    if not active():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))
    xp = torch.cat([x, pad])
    if grad:
        import warnings

        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # public API, deprecated in favour of a private one
            warnings.simplefilter("ignore", FutureWarning)
            parts = all_gather(xp)
    else:
        parts = [torch.empty_like(xp) for _ in sizes]
        dist.all_gather(parts, xp)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def barrier() -> None:
    if active():
        dist.barrier()


def cleanup() -> None:
    if active():
        dist.destroy_process_group()
