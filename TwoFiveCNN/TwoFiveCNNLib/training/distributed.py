"""Which process of a ``torchrun`` job this is (rank 0 alone writes files and reports)."""

from __future__ import annotations

import torch.distributed as dist


def distributed_rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
