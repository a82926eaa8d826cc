"""FSDP2 for the GRPO trainer (``fsdp: true``): a full fine-tune whose weights, gradients and AdamW state are
sharded over the torchrun processes, for models whose training state does not fit one device.

How it is wired (docs/scaling.md has the user's view):

- Every decoder layer (the classes the model lists in ``_no_split_modules``) is one ``fully_shard`` unit. The rest
  (embeddings, final norm, LM head) is the root unit, around :class:`LossForward`: a small module whose forward
  runs the decoder *and* the chunked log-probs, so the LM head is used inside an FSDP forward and its gradient is
  reduced like every other.
- Gradients are reduce-scattered as sums (divide factor 1): the trainer's per-token loss weights are already
  normalised by the totals over all processes, exactly as in the replicated data-parallel path.
- Rollouts and evaluation use the whole model on every process. Each process generates on its own, for as many
  decode steps as its own episodes need, so per-layer all-gathers during generation would deadlock; instead the
  weights are gathered (``unshard``) once after every update and stay whole until the next update starts, which
  reshards them. The memory saving is therefore in the update (gradients, AdamW moments, activations of sharded
  layers); generation needs the whole model on each device.
- A process with fewer micro-batches than another runs a zero-weighted forward and backward on a single padding
  token for each missing one, so every process takes part in every collective (its contribution is exactly 0).
- Checkpoints hold full weights in the ``save_pretrained`` layout and the full optimiser state keyed by parameter
  name (gathered on rank 0), so a run resumes with any number of processes.

Not supported with FSDP (the config refuses them): LoRA, ``beta > 0`` (a sharded reference model) and GAE.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .dist import DistContext
from .losses import token_logprobs

__all__ = ["FSDPPolicy", "LossForward"]


class LossForward(torch.nn.Module):
    """The decoder plus the chunked log-probs of the loss tokens, as one module (the FSDP root)."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                positions: torch.Tensor, targets: torch.Tensor, temperature: float,
                chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        head = self.lm.get_output_embeddings()  # the module, so the log-probs are the ones the model samples from
        logp, ent = token_logprobs(hidden[rows, positions], head, targets, temperature=temperature,
                                   chunk_size=chunk_size, with_entropy=True)
        return hidden, logp, ent


class FSDPPolicy:
    """Shards ``lm`` over the processes of ``dist``; see the module docs."""

    def __init__(self, lm: Any, dist: DistContext, *, pad_id: int) -> None:
        if not dist.distributed:
            raise ConfigError("fsdp: true shards the model over several processes, but this is one process; run "
                              "under torchrun --nproc-per-node N with N >= 2, or set fsdp: false")
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if getattr(lm, "get_output_embeddings", lambda: None)() is None or getattr(lm, "base_model", None) is None:
            raise ConfigError(f"fsdp needs a transformers causal LM with an output embedding; got {type(lm).__name__}")
        self.lm, self.dist, self.pad_id = lm, dist, pad_id
        self.device = next(lm.parameters()).device
        names = set(getattr(lm, "_no_split_modules", None) or [])
        self.layers = [m for m in lm.modules() if type(m).__name__ in names]
        if not self.layers:
            raise ConfigError(f"fsdp: found no decoder layers to shard in {type(lm).__name__} (its "
                              f"_no_split_modules is {sorted(names)}); use a transformers decoder model")
        mesh = init_device_mesh(self.device.type, (dist.world_size,))
        for layer in self.layers:
            fully_shard(layer, mesh=mesh)
        self.root = LossForward(lm)
        fully_shard(self.root, mesh=mesh)
        self.units = [*self.layers, self.root]
        for unit in self.units:
            unit.set_gradient_divide_factor(1.0)  # sum, not mean: the loss weights are globally normalised
            unit.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
        self.params = [p for p in self.root.parameters() if p.requires_grad]
        self._whole = False
        # FSDP takes the first module to run forward as its root: make that LossForward, on every process.
        with torch.no_grad():
            self._tiny_forward(temperature=1.0, chunk_size=1)
        self.gather()

    # ------------------------------------------------------------------ whole vs sharded weights
    def gather(self) -> None:
        """Make the weights whole on every process (for generation) until :meth:`shard`."""
        if self._whole:
            return
        for layer in self.layers:
            layer.set_reshard_after_forward(False, recurse=False)
        for unit in self.units:
            unit.unshard()
        self._whole = True

    def shard(self) -> None:
        """Free the whole weights: back to each process's shard (the state the update and the optimiser use)."""
        if not self._whole:
            return
        for unit in self.units:
            unit.reshard()
        for layer in self.layers:
            layer.set_reshard_after_forward(True, recurse=False)
        self._whole = False

    # ------------------------------------------------------------------ the update
    def forward(self, b: Any, temperature: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Hidden states, log-probs and entropies of a collated batch (the trainer's ``Batch``)."""
        return self.root(b.input_ids, b.attention_mask, b.rows, b.positions, b.targets, temperature, chunk_size)

    def idle_pass(self, temperature: float, chunk_size: int) -> None:
        """Take part in a micro-batch's collectives with nothing to contribute: a gradient of exactly 0."""
        _, logp, _ = self._tiny_forward(temperature=temperature, chunk_size=chunk_size)
        (logp.sum() * 0.0).backward()

    def idle_forward(self, temperature: float, chunk_size: int) -> None:
        """Take part in a no-grad forward's collectives with nothing to compute (a pass another process runs)."""
        with torch.no_grad():
            self._tiny_forward(temperature=temperature, chunk_size=chunk_size)

    def _tiny_forward(self, temperature: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        ids = torch.full((1, 1), self.pad_id, dtype=torch.long, device=self.device)
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        return self.root(ids, torch.ones_like(ids), zero, zero, ids[0], temperature, chunk_size)

    # ------------------------------------------------------------------ checkpoints
    def full_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Gather the full model and optimiser state dicts (a collective: every process calls it). Rank 0 gets
        ``(model state dict in save_pretrained names, optimiser state dict keyed by parameter name)``; the
        others get None."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        self.shard()
        try:
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd = get_model_state_dict(self.root, options=opts)
            optim_sd = get_optimizer_state_dict(self.root, optimizer, options=opts)
        finally:
            self.gather()
        if not self.dist.is_main:
            return None
        tied = set(_tied_names(self.lm))  # e.g. lm_head.weight with tied embeddings: saved once, as save_pretrained does
        return {_strip(k): v for k, v in model_sd.items() if _strip(k) not in tied}, optim_sd

    def load_full_state(self, model_sd: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                        optim_sd: dict[str, Any]) -> None:
        """Load full state dicts (every process passes the same) into the shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        self.shard()
        try:
            opts = StateDictOptions(full_state_dict=True, strict=False)
            result = set_model_state_dict(self.root, {"lm." + k: v for k, v in model_sd.items()}, options=opts)
            tied = {"lm." + k for k in _tied_names(self.lm)}
            missing = [k for k in result.missing_keys if k not in tied]
            if missing or result.unexpected_keys:
                raise ConfigError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected "
                                  f"{list(result.unexpected_keys)[:5]}")
            set_optimizer_state_dict(self.root, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
        finally:
            self.gather()


def optimizer_state_to_files(optim_sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A name-keyed optimiser state dict as safetensors tensors (``NAME/KEY``) and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, state in optim_sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{_strip(name)}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(_strip(name), {})[key] = value
    groups = [{**g, "params": [_strip(p) for p in g["params"]]} for g in optim_sd["param_groups"]]
    return tensors, {"format": "by_name", "param_groups": groups, "scalars": scalars}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    if meta.get("format") != "by_name":
        raise ConfigError("this checkpoint's optimiser state was written without fsdp (by parameter index); resume "
                          "it with fsdp: false, or start a new run")
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, field = key.rsplit("/", 1)
        state.setdefault("lm." + name, {})[field] = value
    for name, values in meta.get("scalars", {}).items():
        state.setdefault("lm." + name, {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = {**g, "params": ["lm." + p for p in g["params"]]}
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _strip(name: str) -> str:
    return name[3:] if name.startswith("lm.") else name


def _tied_names(lm: Any) -> list[str]:
    """State-dict names that are tied to another parameter (e.g. ``lm_head.weight`` with tied embeddings)."""
    seen: dict[int, str] = {}
    tied = []
    for name, p in lm.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.append(name)
        else:
            seen[id(p)] = name
    return tied
