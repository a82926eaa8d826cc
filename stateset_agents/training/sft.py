"""SFT: supervised fine-tuning on demonstrations, the first step of the recipe (imitation, then RFT, then GRPO).

The loss is the mean negative log-likelihood of the agent's own tokens (the completion of every agent turn, the
same per-turn samples and masks GRPO trains on: system, user and tool tokens are context only), normalised over
the tokens of each optimiser update. LoRA or full weights, through the same :class:`~.policy.Policy` as GRPO, so
checkpoints, ``resume``, ``init_from``, metrics and the before/after evaluation are the same.

A run (see :mod:`.demonstrations` for the sources):

1. collect the demonstrations once (``demonstrations.jsonl`` and ``demonstrations.json`` with the counts, in the run
   folder; a resumed run reads them back instead of collecting again, so rejection-sampled demonstrations stay the
   ones the first policy produced);
2. every agent turn becomes a sample; with ``pack_turns`` (default) a demonstration's turns are packed into one
   sequence wherever each turn's prompt extends the previous one (same loss, about a third of the tokens);
   sequences longer than ``max_sample_tokens`` are left out (counted);
3. ``epochs`` passes over the samples, each in an order seeded by ``seed`` and the epoch; one step = one optimiser
   update on ``batch_size`` samples (micro-batches of ``micro_batch_size``, prompts sharing a prefix forwarded once);
4. metrics per step (``loss``, ``decision_nll``, ``tokens``, ``grad_norm``, ``lr``, ``epoch``) under the run loop
   (:mod:`.loop`); ``decision_weight`` and ``tool_balance`` weight the decision tokens (:mod:`.decisions`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..types import Trajectory
from .batch import Sample, pack_turns, samples_from_trajectories
from .checkpoint import write_json_atomic
from .decisions import mark_decisions
from .dist import DistContext
from .evaluate import evaluate_run
from .grpo_mismatch import set_rollout_precision
from .loop import RunLoop, Writer, step_seed
from .policy import Policy, lr_lambda
from .rollout_log import TRAIN_TRANSCRIPTS, log_train_episodes
from .scenarios import run_scenarios
from .sft_config import SFTConfig

log = logging.getLogger(__name__)

__all__ = ["SFTTrainer"]


class SFTTrainer:
    """Fine-tune ``agent``'s local model on demonstrations (see the module docs).

    Args:
        agent: a :class:`~stateset_agents.agents.MultiTurnAgent` whose model is a local ``HFChatModel``.
        env_factory: returns a fresh ConversationEnv per episode (demonstrations and evaluation).
        reward: the RewardFunction reported in evaluations (SFT itself does not optimise a reward).
        config: an :class:`SFTConfig`.
        policy: the trainable policy (default: built from the agent's model and the config).
        dist: rank and world size (default: one process).
    """

    name = "sft"
    logs: tuple[str, ...] = (TRAIN_TRANSCRIPTS,)

    def __init__(self, agent: Any, env_factory: Any, reward: Any, config: SFTConfig, *,
                 policy: Policy | None = None, dist: DistContext | None = None) -> None:
        if not isinstance(config, SFTConfig):
            raise ConfigError(f"config must be an SFTConfig, got {type(config).__name__}; use "
                              "stateset_agents.training.load_config(path) with `algorithm: sft`")
        self.agent, self.env_factory, self.reward, self.config = agent, env_factory, reward, config
        self.dist = dist or DistContext()
        torch.manual_seed(config.seed)
        self.policy = policy or Policy(agent.model, config, dist=self.dist)
        self.agent.sampling = self.policy.sampling
        set_rollout_precision(getattr(agent, "model", None), config)  # evaluation and RFT rollouts sample with it
        self.run_dir = Path(config.output_dir)
        self.step = 0
        self.pack, self.scenarios, self.eval_scenarios = run_scenarios(env_factory, config)
        self.samples: list[Sample] = []
        self.total_steps = config.max_steps or 1  # set by prepare() once the demonstrations are known
        self.optimizer = self.policy.optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(config, self.total_steps)(s))

    # ------------------------------------------------------------------ the run
    def train(self, *, resume: bool | str = False) -> dict[str, Any]:
        """Collect the demonstrations, train to the last step (from the last checkpoint when ``resume``)."""
        return RunLoop(self).run(resume=resume)

    async def atrain(self, *, resume: bool | str = False) -> dict[str, Any]:
        return await RunLoop(self).arun(resume=resume)

    async def prepare(self) -> None:
        """The demonstrations (collected, or read back from the run folder) and the samples and step count."""
        path = self.run_dir / "demonstrations.jsonl"
        if path.is_file():
            trajs = [Trajectory.model_validate_json(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
            stats = json.loads((self.run_dir / "demonstrations.json").read_text(encoding="utf-8"))
        else:
            trajs, stats = await self._collect()
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text("".join(t.model_dump_json() + "\n" for t in trajs), encoding="utf-8")
                tmp.replace(path)
        samples = samples_from_trajectories(trajs, need_logprobs=False)
        turns, over = len(samples), unwritable_turns(samples, self.config.max_new_tokens)
        if self.config.pack_turns:
            samples = pack_turns(samples)
        long = [s for s in samples if len(s.input_ids) > self.config.max_sample_tokens]
        self.samples = [s for s in samples if len(s.input_ids) <= self.config.max_sample_tokens]
        mark_decisions(self.samples, self.policy.tokenizer, self.config.decision_weight, self.config.tool_balance)
        if not self.samples:
            raise ConfigError(f"no demonstrated agent turn fits max_sample_tokens={self.config.max_sample_tokens} "
                              f"(longest {max(len(s.input_ids) for s in samples)} tokens); raise it or lower "
                              "context_tokens")
        stats.update({"turns_over_max_new_tokens": len(over), "samples": len(self.samples),
                      "samples_too_long": len(long), "completion_tokens": sum(s.num_completion for s in self.samples)})
        if over and self.dist.is_main:
            log.warning("%d of %d demonstrated agent turns are longer than max_new_tokens=%d (longest %d tokens): the "
                        "agent is trained on turns it cannot write when it plays; set max_new_tokens to at least %d",
                        len(over), turns, self.config.max_new_tokens, max(over), max(over))
        if self.dist.is_main:
            write_json_atomic(self.run_dir / "demonstrations.json", stats)
        self.demo_stats = stats
        self.steps_per_epoch = math.ceil(len(self.samples) / self.config.batch_size)
        per_run = self.config.epochs * self.steps_per_epoch
        self.total_steps = min(per_run, self.config.max_steps or per_run)

    async def _collect(self) -> tuple[list[Trajectory], dict[str, Any]]:
        from .demonstrations import jsonl_demonstrations, reference_demonstrations, rollout_demonstrations

        demo = self.config.demonstrations
        if demo.source == "reference":
            return await reference_demonstrations(self.agent, self.pack, self.scenarios, demo.seeds,
                                                  demo.min_success, prompt=self.config.tool_prompt, notes=demo.notes)
        if demo.source == "rollouts":
            return await rollout_demonstrations(self.agent, self.env_factory, self.scenarios, demo.k,
                                                seed=step_seed(self.config.seed, 0, "rft"),
                                                concurrency=self.config.rollout_concurrency,
                                                min_success=demo.min_success,  # every episode, kept or not:
                                                on_groups=lambda gs: log_train_episodes(self, gs, step=0,
                                                                                        gather=False))
        return jsonl_demonstrations(demo.path or "", self.agent,
                                    self.pack.tools_openai(compact=self.config.tool_prompt == "compact"))

    # ------------------------------------------------------------------ one step
    def batch(self, step: int) -> list[Sample]:
        """The samples of ``step`` (0-based): epoch ``step // steps_per_epoch`` in a seeded order."""
        epoch, b = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(step_seed(self.config.seed, epoch, "sft-order")).permutation(len(self.samples))
        n = self.config.batch_size
        return [self.samples[i] for i in order[b * n:(b + 1) * n]]

    async def astep(self) -> dict[str, Any]:
        """One optimiser update on the step's samples: mean NLL of their completion tokens."""
        t0 = time.perf_counter()
        mine = self.dist.shard(self.batch(self.step))
        mbs = _micro_batches(mine, self.config.micro_batch_size)
        n_mb = max(self.dist.all_gather_object(len(mbs))) if self.dist.distributed else len(mbs)
        n_dec = sum(sum(s.extra["decision"]) for s in mine)
        n_tok = sum(s.num_completion for s in mine)
        w_sum = sum(sum(s.extra["loss_weight"]) for s in mine)
        total_tokens, total_dec, total_weight = self.dist.all_reduce_sum([n_tok, n_dec, w_sum])
        policy = self.policy
        policy.before_update()  # the engine's decode snapshot and caches: rebuilt from the new weights anyway
        policy.model.train()
        if policy.fsdp is not None:
            policy.fsdp.shard()
        self.optimizer.zero_grad(set_to_none=True)
        nll = dec_nll = 0.0
        for j in range(n_mb):
            if j >= len(mbs):
                policy.fsdp.idle_pass(1.0, self.config.logprob_chunk_size)  # every process joins every collective
                continue
            b = policy.collate(mbs[j])
            _, logp, _ = policy.logprobs(b, temperature=1.0)
            dec = torch.tensor([f for s in mbs[j] for f in s.extra["decision"]], device=logp.device)
            weights = torch.tensor([w for s in mbs[j] for w in s.extra["loss_weight"]], device=logp.device)
            loss = -(weights * logp).sum() / max(total_weight, 1.0)
            loss.backward()
            nll += float(-logp.detach().sum())
            dec_nll += float(-logp.detach()[dec].sum())
            await asyncio.sleep(0)  # let the display refresh
        grad_norm = policy.reduce_and_clip()
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        policy.model.eval()
        policy.after_update()
        nll_all, dec_all = self.dist.all_reduce_sum([nll, dec_nll])
        self.step += 1
        return {"loss": nll_all / max(total_tokens, 1.0), "decision_nll": dec_all / max(total_dec, 1.0),
                "tokens": int(total_tokens), "decision_tokens": int(total_dec), "samples": len(mine),
                "grad_norm": grad_norm, "lr": lr, "epoch": (self.step - 1) // self.steps_per_epoch + 1,
                "demonstrations": self.demo_stats.get("kept"), "time/update": time.perf_counter() - t0}

    # ------------------------------------------------------------------ evaluation and checkpoints
    async def evaluate(self, tag: str) -> dict[str, Any]:
        return await evaluate_run(self.agent, self.env_factory, self.eval_scenarios, self.reward, self.config,
                                  self.run_dir, tag, dist=self.dist, step=self.step)

    def checkpoint(self) -> Writer:
        weights = self.policy.writer(self.optimizer)
        scheduler = self.scheduler.state_dict()

        def write(tmp: Path) -> dict[str, Any]:
            return {**weights(tmp), "scheduler": scheduler}
        return write

    def load_checkpoint_state(self, path: Path, state: dict[str, Any]) -> None:
        self.policy.load(path, state, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])

    @staticmethod
    def short(m: dict[str, Any]) -> str:
        return f"loss {m['loss']:.3f}  tokens {m['tokens']}  grad {m['grad_norm']:.2f}  lr {m['lr']:.2e}"


def _micro_batches(samples: list[Sample], size: int) -> list[list[Sample]]:
    """Ordered by prompt, so a micro-batch's prompts share the longest prefixes (forwarded once)."""
    ordered = sorted(samples, key=lambda s: s.input_ids[:s.completion_start])
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def unwritable_turns(samples: list[Sample], max_new_tokens: int) -> list[int]:
    """The completion lengths (end-of-turn token included) of the demonstrated agent turns, one sample each, that are
    longer than ``max_new_tokens``: when the agent plays, generation stops there, so it could never write them (a
    tool call cut off is invalid JSON)."""
    return [s.num_completion for s in samples if s.num_completion > max_new_tokens]
