"""The one run loop every algorithm (SFT, GRPO, Training-Free GRPO) runs under.

An algorithm supplies its steps and its state (:class:`Algorithm`); the loop owns everything around them:

1. the algorithm's ``prepare()`` when it has one; resume (``resume=True``: from the run folder's last checkpoint, an error when there is none; ``"auto"``: from it
   when there is one, as after a torchrun restart). The checkpoint restores the step, the RNG states and the
   algorithm's own state; the lines of ``metrics.jsonl`` (and the algorithm's other logs) after the checkpoint's
   step are dropped, a torn last line included (:mod:`.metrics_io`), since this run writes them again;
2. ``config.yaml`` in the run folder, and the trackers of ``report_to`` (TensorBoard, W&B), closed at the end
   whatever happens;
3. the evaluation before training (only from step 0), the steps with a live display (rich), each step's metrics
   appended to ``metrics.jsonl`` (with ``step``, ``time`` and ``peak_rss_mb``) and sent to the trackers, an
   evaluation every ``eval_every`` steps, a checkpoint every ``save_every`` steps;
4. a final checkpoint, the evaluation after training, and a summary.

Checkpoints are folders ``checkpoints/step-N`` written atomically (:func:`.checkpoint.save_atomically`); the
newest ``keep_checkpoints`` are kept. Each holds ``trainer_state.json`` (step, format, RNG state, and the
algorithm's JSON state), ``config.yaml`` and the algorithm's files: the weights at the top level, the trainer's own
tensors (``rng.safetensors``, optimiser, value head) in ``trainer_state/`` (see :mod:`.checkpoint`).

Under torchrun every process runs the loop; only the main process writes files. The algorithm's
:meth:`Algorithm.checkpoint` runs on every process (it may hold collectives, e.g. gathering FSDP shards) and
returns the writer the main process calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from .checkpoint import latest_checkpoint, restore_rng, rng_tensors, save_atomically, state_dir, state_file
from .dist import DistContext
from .metrics_io import keep_rows_through_step
from .run_config import RunConfig

__all__ = ["Algorithm", "RunLoop", "peak_rss_mb", "step_seed"]

CHECKPOINT_VERSION = 3  # 3: the trainer's own tensors in trainer_state/ (2 and older: beside the weights)


def step_seed(seed: int, step: int, what: str) -> int:
    """A stable 31-bit seed for ``what`` at ``step`` of a run seeded with ``seed`` (same on every process)."""
    digest = hashlib.sha256(f"{seed}:{step}:{what}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def peak_rss_mb() -> float | None:
    """This process's host-memory high-water mark. Linux: ``VmHWM`` (``ru_maxrss`` survives ``exec``, so a job
    started by a large parent, such as the server, would report the parent's peak); elsewhere ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _plain(o: Any) -> Any:
    """numpy scalars (as a scheduler's state may hold) as JSON numbers."""
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


Writer = Callable[[Path], dict[str, Any]]
"""Writes the algorithm's files into a checkpoint folder; returns its JSON state (for ``trainer_state.json``)."""


class Algorithm(Protocol):
    """What an algorithm hands the loop. ``step`` is the number of completed steps (``astep`` advances it, so a
    caller can also drive the steps by hand)."""

    name: str
    """Shown in the display and recorded as the checkpoint's format (``stateset_agents.<name>``)."""
    config: RunConfig
    run_dir: Path
    dist: DistContext
    step: int
    total_steps: int
    logs: tuple[str, ...]
    """JSONL files in the run folder, besides ``metrics.jsonl``, cut back to the checkpoint's step on resume."""

    # optional: ``async def prepare(self) -> None``, run first (e.g. SFT collects its demonstrations and sets
    # ``total_steps`` there)

    async def astep(self) -> dict[str, Any]:
        """Run step ``self.step`` (0-based), advance ``self.step``; return its metrics (numbers, None, short strings)."""
        ...

    async def evaluate(self, tag: str) -> dict[str, Any] | None:
        """Evaluate the current policy (``tag``: before, after, step-N); return the summary."""
        ...

    def checkpoint(self) -> Writer:
        """Called on every process before a checkpoint; returns the writer the main process runs."""
        ...

    def load_checkpoint_state(self, path: Path, state: dict[str, Any]) -> None:
        """Restore the algorithm's state from a checkpoint folder and its ``trainer_state.json``."""
        ...

    def short(self, metrics: dict[str, Any]) -> str:
        """One line for the live display."""
        ...


class RunLoop:
    """Run ``algorithm`` to its ``total_steps``; see the module docs."""

    def __init__(self, algorithm: Algorithm) -> None:
        self.algo = algorithm
        self.config = algorithm.config
        self.run_dir = Path(algorithm.run_dir)
        self.dist = algorithm.dist
        self.history: list[dict[str, Any]] = []
        self._trackers: list[Callable[[dict[str, Any], int], Any]] = []
        self._closers: list[Callable[[], Any]] = []

    @property
    def format(self) -> str:
        return f"stateset_agents.{self.algo.name}"

    def run(self, *, resume: bool | str = False) -> dict[str, Any]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(resume=resume))
        raise ConfigError("train() was called inside a running event loop; await trainer.atrain() instead")

    async def arun(self, *, resume: bool | str = False) -> dict[str, Any]:
        algo, cfg = self.algo, self.config
        prepare = getattr(algo, "prepare", None)
        if prepare is not None:
            await prepare()
        if resume:
            self._resume(resume)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        evals: dict[str, Any] = {}
        try:
            self._open_trackers()
            if cfg.eval_before and algo.step == 0:
                evals["before"] = await algo.evaluate("before")
            with self._display() as live:
                while algo.step < algo.total_steps:
                    metrics = await self.one_step()
                    if live is not None:
                        live.update(self._task, advance=1, info=algo.short(metrics))
                    more = algo.step < algo.total_steps
                    if cfg.save_every and algo.step % cfg.save_every == 0 and more:
                        self.save_checkpoint()
                    if cfg.eval_every and algo.step % cfg.eval_every == 0 and more:
                        await algo.evaluate(f"step-{algo.step}")
            self.save_checkpoint()
            if cfg.eval_after:
                evals["after"] = await algo.evaluate("after")
        finally:
            self._close_trackers()
        return {"steps": algo.step, "run_dir": str(self.run_dir), "last": self.history[-1] if self.history else {},
                "evals": evals}

    async def one_step(self) -> dict[str, Any]:
        """Run the algorithm's next step and log its metrics (what :meth:`arun` does per step)."""
        t0 = time.perf_counter()
        metrics = await self.algo.astep()  # runs step ``algo.step`` and advances it
        row = {"step": self.algo.step, "time": time.time(), **metrics}
        row.setdefault("time/total", time.perf_counter() - t0)
        row["peak_rss_mb"] = peak_rss_mb()
        self.history.append(row)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            for tracker in self._trackers:
                tracker(row, self.algo.step)
        return row

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` (main process; every process calls this); keep the newest few."""
        writer = self.algo.checkpoint()  # on every process: it may hold collectives
        self.dist.barrier()
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        from safetensors.torch import save_file

        step = self.algo.step
        dest = self.run_dir / "checkpoints" / f"step-{step}"

        def write(tmp: Path) -> None:
            own = writer(tmp)
            rt, rm = rng_tensors()
            save_file(rt, str(state_dir(tmp) / "rng.safetensors"))
            (tmp / "config.yaml").write_text(self.config.to_yaml(), encoding="utf-8")
            state = {**own, "step": step, "rng": rm, "format": self.format, "version": CHECKPOINT_VERSION,
                     "world_size": self.dist.world_size}
            (tmp / "trainer_state.json").write_text(json.dumps(state, default=_plain), encoding="utf-8")

        save_atomically(dest, write)
        olds = sorted((p for p in dest.parent.iterdir() if p.is_dir() and p.name.startswith("step-")
                       and p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
        for p in olds[:-self.config.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)
        self.dist.barrier()
        return dest

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the step, the RNG states and the algorithm's state from a checkpoint folder."""
        from safetensors.torch import load_file

        path = Path(path)
        state_json = path / "trainer_state.json"
        if not state_json.is_file():
            raise ConfigError(f"{str(path)!r} is not a checkpoint (no trainer_state.json)")
        state = json.loads(state_json.read_text(encoding="utf-8"))
        found = state.get("format", "stateset_agents.grpo")
        if found != self.format:
            raise ConfigError(f"{str(path)!r} is a {found!r} checkpoint, not {self.format!r}; resume it with the "
                              "config that wrote it, or start this run in a new output_dir")
        self.algo.load_checkpoint_state(path, state)
        restore_rng(load_file(str(state_file(path, "rng.safetensors"))), state["rng"])
        self.algo.step = int(state["step"])

    def _resume(self, resume: bool | str) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None and resume != "auto":
            raise ConfigError(f"--resume: no checkpoint in {str(self.run_dir / 'checkpoints')!r}; "
                              "start without --resume")
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        if self.dist.is_main:
            for name in ("metrics.jsonl", *self.algo.logs):
                keep_rows_through_step(self.run_dir / name, self.algo.step)

    # ------------------------------------------------------------------ display and trackers
    def _display(self) -> Any:
        if not (self.config.progress and self.dist.is_main):
            self._task = None
            return nullcontext(None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn(self.algo.name), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"))
        self._task = progress.add_task("steps", total=self.algo.total_steps, completed=self.algo.step, info="")
        return progress

    def _open_trackers(self) -> None:
        if not self.dist.is_main:
            return
        for name in getattr(self.config, "report_to", []):
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as e:
                    raise ConfigError("report_to: tensorboard needs the tracking extra: "
                                      "pip install 'stateset-agents[tracking]'") from e
                writer = SummaryWriter(str(self.run_dir / "tensorboard"))
                self._trackers.append(lambda m, s, w=writer: [w.add_scalar(k, v, s) for k, v in m.items()
                                                              if isinstance(v, (int, float)) and k != "time"])
                self._closers.append(writer.close)
            elif name == "wandb":
                try:
                    import wandb
                except ImportError as e:
                    raise ConfigError("report_to: wandb needs the tracking extra: "
                                      "pip install 'stateset-agents[tracking]'") from e
                run = wandb.init(config=self.config.model_dump(mode="json"), dir=str(self.run_dir))
                self._trackers.append(lambda m, s, r=run: r.log(
                    {k: v for k, v in m.items() if isinstance(v, (int, float))}, step=s))
                self._closers.append(run.finish)

    def _close_trackers(self) -> None:
        for close in self._closers:
            close()
        self._trackers, self._closers = [], []
