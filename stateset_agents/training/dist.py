"""DistContext: the one object that knows rank and world size.

The trainer asks it which scenarios this process rolls out (:meth:`shard`), to sum numbers over processes
(:meth:`all_reduce_sum`), to all-reduce gradients (:meth:`all_reduce_gradients`) and whether this process logs,
prints and checkpoints (:attr:`is_main`). With one process every call is a no-op, so CPU, one GPU and N GPUs run
the same trainer code.

Under ``torchrun`` the environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are set;
:meth:`DistContext.from_env` then initialises the process group (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["DistContext"]

T = TypeVar("T")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def from_env(cls, device: str = "cpu") -> DistContext:
        """Read torchrun's variables; initialise the process group when there are several processes."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: items ``rank, rank + world_size, ...`` (every process gets the same global list)."""
        return list(items[self.rank::self.world_size])

    def all_reduce_sum(self, values: Sequence[float], device: Any = "cpu") -> list[float]:
        """Sum each number over processes."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum gradients over processes (one flat buffer). The loss weights are normalised by global totals,
        so the sum is exactly the gradient of the whole batch's loss."""
        if not self.distributed:
            return
        import torch.distributed as dist

        grads = []
        for p in params:
            if p.grad is None:  # a process with no tokens this update still takes part in the sum
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Make every process start from rank 0's weights."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
