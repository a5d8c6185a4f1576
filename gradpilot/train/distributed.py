"""gradpilot under ``torch.distributed``: this process's place in the group, and where its collectives run.

``fit``, ``evaluate`` and the accumulation step read these to weight items across processes; nothing here
starts a group (``torchrun`` and ``init_process_group`` do).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(world size, rank) of the torch.distributed group, or (1, 0) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def comm_device() -> torch.device:
    """The device a collective's tensors must be on: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
