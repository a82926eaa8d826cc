"""DistContext: the one object that knows rank and world size.

The trainer asks it which scenarios this process rolls out (:meth:`shard`), to sum numbers over processes
(:meth:`all_reduce_sum`), to all-reduce gradients (:meth:`all_reduce_gradients`) and whether this process logs,
prints and checkpoints (:attr:`is_main`). With one process every call is a no-op, so CPU, one GPU and N GPUs run
the same trainer code.

Under ``torchrun`` the environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are set;
:meth:`DistContext.from_env` then initialises the process group (gloo on CPU, nccl on CUDA)::

    torchrun --nproc-per-node 2 -m stateset_agents train examples/customer_service.yaml
    torchrun --nproc-per-node 8 --nnodes 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        -m stateset_agents train CONFIG

Data parallel, DDP's arithmetic without DDP's wrapper: every process holds the whole model, rolls out its share
of the step's groups and computes the loss on its own samples, with per-token weights normalised by the totals
over *all* processes; one SUM all-reduce of a flat gradient buffer then gives every process exactly the gradient
of the whole batch, and every process takes the same optimiser step. (``DistributedDataParallel`` is not used
because the trainer calls the decoder and the LM head separately, for the chunked log-probs, which bypasses DDP's
forward hooks; the all-reduce here is what DDP would do, without its averaging by world size.)
:meth:`replica_digests` checks at every checkpoint that the processes still hold identical weights.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["DistContext", "param_digest"]

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
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)  # before the process group, so NCCL binds this process's GPU
        restarts = cls.restart_count()
        if not dist.is_initialized() and restarts and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun shares its rendezvous store with the workers, and the store outlives a restart: the failed
            # attempt's keys (e.g. gloo's peer addresses) are still there (pytorch/pytorch#135712). Give every
            # attempt its own key namespace. (Multi-node: see docs/scaling.md.)
            store, rank, world_size = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"stateset_agents/attempt-{restarts}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
        elif not dist.is_initialized():
            dist.init_process_group(backend=backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend)

    @staticmethod
    def restart_count() -> int:
        """How many times torchrun's elastic agent has restarted this job (``--max-restarts``); 0 otherwise."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)

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
            if _is_dtensor(p):  # FSDP-sharded: its gradient was already reduce-scattered in the backward pass
                continue
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

    def clip_grad_norm(self, params: Iterable[torch.nn.Parameter], max_norm: float | None) -> float:
        """Clip the global gradient norm to ``max_norm`` (None: only measure it); return the norm before clipping.

        Replicated gradients (identical on every process after :meth:`all_reduce_gradients`) count once;
        FSDP-sharded gradients (DTensors) count their local shards, summed over processes."""
        params = [p for p in params if p.grad is not None]
        sharded = [p.grad for p in params if _is_dtensor(p.grad)]
        if not sharded:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf")))
        import torch.distributed as dist

        local = [g.to_local() for g in sharded]
        plain = [p.grad for p in params if not _is_dtensor(p.grad)]
        device = local[0].device
        sq = torch.zeros((), dtype=torch.float64, device=device)
        for g in local:
            sq += g.detach().double().pow(2).sum()
        dist.all_reduce(sq, op=dist.ReduceOp.SUM)
        for g in plain:
            sq += g.detach().double().pow(2).sum().to(device)
        norm = float(sq.sqrt())
        if max_norm is not None and math.isfinite(norm) and norm > max_norm:
            coef = max_norm / (norm + 1e-6)
            for g in local + plain:
                g.mul_(coef)
        return norm

    def replica_digests(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
        """Every process's SHA-256 of the given parameters (names and bytes), gathered on every process."""
        digest = param_digest(named_params)
        return self.all_gather_object(digest)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from process ``src``, on every process."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

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


def param_digest(named_params: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over parameter names, dtypes, shapes and bytes (in the given order): equal iff bit-identical."""
    h = hashlib.sha256()
    for name, p in named_params:
        t = p.detach()
        if _is_dtensor(t):
            t = t.to_local()
        t = t.cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without distributed support
        return False
    return isinstance(t, DTensor)
