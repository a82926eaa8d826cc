"""The shared-prompt forward gives the plain forward's log-probs and gradients, with the prompt computed once."""

from __future__ import annotations

import warnings

import pytest
import torch

from stateset_agents.training.batch import Sample, collate
from stateset_agents.training.losses import token_logprobs
from stateset_agents.training.prefix import (
    PrefixBatch,
    checkpointed_layers,
    collate_shared_prefix,
    common_prefix_len,
    shared_prefix_hidden,
)


def sample(prompt: list[int], completion: list[int], i: int = 0) -> Sample:
    return Sample(input_ids=prompt + completion, completion_start=len(prompt), old_logprobs=[-1.0] * len(completion),
                  traj_index=i, turn_index=0, truncated=False, advantage=0.5 - i, weight=0.1)


def test_common_prefix_len():
    a = [sample([1, 2, 3], [4, 5], i) for i in range(3)]
    assert common_prefix_len(a) == 3
    assert common_prefix_len(a + [sample([1, 2, 9, 9], [3])]) == 2
    # the prefix never reaches into a completion, even where the tokens agree
    assert common_prefix_len([sample([1, 2], [3, 4]), sample([1, 2, 3], [4])]) == 2
    with pytest.raises(ValueError, match="share a non-empty prefix"):
        collate_shared_prefix([a[0], sample([7, 2, 3], [4])], pad_id=0)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("distinct_tails", [False, True])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_shared_prompt_forward_matches_plain_forward(tiny_model_path, lora, distinct_tails, checkpoint):
    """Also with the tail's layers under activation checkpointing: the backward pass recomputes them against the
    same (read-only) prefix cache, so log-probs and gradients are the plain forward's."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            lm = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    causal = lm.get_base_model() if lora else lm
    causal.train()
    prompt = [5, 17, 33, 41, 8, 99, 12]
    completions = [[7, 8, 9, 10, 11], [3, 4], [20, 21, 22, 23, 24, 25, 26], [2, 2, 2]]  # different lengths
    samples = [sample(prompt, c, i) for i, c in enumerate(completions)]
    if distinct_tails:  # prompts that agree only on a prefix (the pack's system message), of different lengths
        tails = [[61, 62], [63], [64, 65, 66, 67], []]
        samples = [sample(prompt + t, c, i) for i, (t, c) in enumerate(zip(tails, completions, strict=True))]
    head = causal.get_output_embeddings().weight
    params = [p for p in lm.parameters() if p.requires_grad]

    def loss_and_grads(b, hidden):
        logp, _ = token_logprobs(hidden[b.rows, b.positions], head, b.targets)
        loss = (logp * b.weights * b.advantages).sum()
        grads = torch.autograd.grad(loss, params)
        return logp.detach(), grads

    plain = collate(samples, pad_id=0)
    hidden = causal.base_model(input_ids=plain.input_ids, attention_mask=plain.attention_mask,
                               use_cache=False).last_hidden_state
    lp_plain, g_plain = loss_and_grads(plain, hidden)

    shared = collate_shared_prefix(samples, pad_id=0)
    assert isinstance(shared, PrefixBatch) and shared.prompt_ids.shape == (1, len(prompt))
    assert torch.equal(shared.targets, plain.targets) and torch.equal(shared.rows, plain.rows)
    lp_shared, g_shared = loss_and_grads(shared, shared_prefix_hidden(causal.base_model, shared,
                                                                      checkpoint=checkpoint))

    assert torch.allclose(lp_shared, lp_plain, atol=1e-5), (lp_shared - lp_plain).abs().max()
    worst = max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(g_shared, g_plain, strict=True))
    assert worst < 1e-4
    assert any(float(g.abs().max()) > 0 for g in g_plain)


def _saved_bytes(fn) -> int:
    """Bytes autograd saves for the backward pass while ``fn`` runs (each saved tensor's storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize("shared", [False, True])
def test_checkpointed_layers_keep_less_for_backward_and_the_same_gradient(tiny_model_path, shared):
    """Activation checkpointing (gradient_checkpointing: true) saves a fraction of the activations the plain
    forward keeps, and leaves the gradient unchanged; the plain (no shared prefix) path and the shared one alike."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    lm.train()
    prompt = list(range(5, 45))
    samples = [sample(prompt + [50 + i], list(range(60 + i, 100 + i)), i) for i in range(4)]
    b = collate_shared_prefix(samples, pad_id=0) if shared else collate(samples, pad_id=0)
    head = lm.get_output_embeddings().weight
    params = [p for p in lm.parameters() if p.requires_grad]

    def run(ckpt: bool):
        def forward():
            if shared:
                return shared_prefix_hidden(lm.model, b, checkpoint=ckpt)
            with checkpointed_layers(lm.model, ckpt):
                return lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).last_hidden_state
        saved, hidden = _saved_bytes(forward)
        logp, _ = token_logprobs(hidden[b.rows, b.positions], head, b.targets)
        return saved, torch.autograd.grad((logp * b.advantages).sum(), params)

    plain_bytes, g_plain = run(False)
    ckpt_bytes, g_ckpt = run(True)
    # (a 2-layer model: the shared prefix's own forward, not checkpointed, is a large share here; 1/10 without it)
    assert ckpt_bytes < plain_bytes / 2, (ckpt_bytes, plain_bytes)
    worst = max(float((a - c).abs().max() / (a.abs().max() + 1e-12)) for a, c in zip(g_plain, g_ckpt, strict=True))
    assert worst < 1e-5
    # nothing left changed on the layers
    assert all("forward" not in vars(m) for m in lm.model.layers)
