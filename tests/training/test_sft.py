"""SFT: demonstrations from references, rollouts and JSONL; agent-token-only loss; learning; resume; init_from."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from stateset_agents.agents import MultiTurnAgent
from stateset_agents.envs import load_pack
from stateset_agents.errors import ConfigError
from stateset_agents.models.hf import HFChatModel
from stateset_agents.training import load_config
from stateset_agents.training.batch import collate, samples_from_trajectories
from stateset_agents.training.build import build_trainer, make_env_factory
from stateset_agents.training.demonstrations import (
    jsonl_demonstrations,
    reference_demonstrations,
    rollout_demonstrations,
)
from stateset_agents.training.sft import SFTTrainer

TOY = str(Path(__file__).parent / "toy_pack")
ANSWER = "Your order is on its way."


def sft_config(path, tmp_path, **overrides):
    cfg = dict(algorithm="sft", model=str(path), env=TOY, reward="customer_service", use_lora=False,
               learning_rate=1e-2, epochs=20, batch_size=4, micro_batch_size=2, max_new_tokens=16,
               demonstrations={"from": "reference", "seeds": 2}, output_dir=str(tmp_path / "sft"),
               eval_before=False, eval_after=False, progress=False, save_every=0, seed=0)
    cfg.update(overrides)
    return load_config(cfg)


def make_sft(path, tmp_path, **overrides) -> SFTTrainer:
    config = sft_config(path, tmp_path, **overrides)
    agent = MultiTurnAgent(HFChatModel(path), domain=None, context_tokens=512)
    return SFTTrainer(agent, make_env_factory(TOY), None, config)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------- config
def test_sft_config_fields_and_errors():
    cfg = load_config({"algorithm": "sft", "demonstrations": {"from": "rollouts", "k": 8, "min_success": 1}})
    assert (cfg.demonstrations.source, cfg.demonstrations.k, cfg.demonstrations.min_success) == ("rollouts", 8, 1)
    assert "from: rollouts" in cfg.to_yaml()
    assert load_config(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg  # round trip through YAML/JSON
    with pytest.raises(ConfigError, match="demonstrations from jsonl need `path`"):
        load_config({"algorithm": "sft", "demonstrations": {"from": "jsonl"}})
    with pytest.raises(ConfigError, match=r"field 'demonstrations.from': Input should be 'reference', 'rollouts'"):
        load_config({"algorithm": "sft", "demonstrations": {"from": "web"}})
    with pytest.raises(ConfigError, match="unknown field 'beta'"):
        load_config({"algorithm": "sft", "beta": 0.1})  # a GRPO field is not an SFT field


# ---------------------------------------------------------------- demonstrations
def test_reference_demonstrations_tokens_are_the_agents_own(tiny_model_path):
    pack = load_pack("customer_service")
    model = HFChatModel(tiny_model_path)
    agent = MultiTurnAgent(model, domain="customer_service", context_tokens=4096)
    ids = [s.id for s in pack.split("train")[:2]]
    trajs, stats = asyncio.run(reference_demonstrations(agent, pack, ids, seeds=3))
    assert stats["kept"] == len(trajs) == 6 and stats["failed"] == []
    assert all(t.outcome["success"] for t in trajs)
    t = trajs[0]
    assert len(t.completions) == sum(m.role == "assistant" for m in t.messages)
    tools = pack.tools_openai()
    agent_turns = [i for i, m in enumerate(t.messages) if m.role == "assistant"]
    for c, i in zip(t.completions, agent_turns, strict=True):
        # the prompt is the one the agent builds for this turn; the completion is the message + the end of turn
        assert c.prompt_ids == model.prompt_ids(agent.build_prompt(t.messages[:i], tools))
        assert c.completion_ids[-1] == model.tokenizer.eos_token_id
        assert model.tokenizer.decode(c.completion_ids[:-1]) == c.text
        assert c.logprobs is None and c.sampling is None
    # the scripted user's lines vary with the seed
    users = {tuple(m.content for m in x.messages if m.role == "user") for x in trajs if x.scenario_id == ids[0]}
    assert len(users) > 1
    samples = samples_from_trajectories(trajs, need_logprobs=False)
    b = collate(samples[:2], 0)
    assert b.old_logprobs is None
    assert b.targets.tolist() == [tok for s in samples[:2] for tok in s.input_ids[s.completion_start:]]


def test_reference_replays_that_fail_are_dropped(tiny_model_path):
    pack = load_pack("customer_service")
    s = pack.split("train")[0]
    broken = s.model_copy(update={"id": "broken", "reference": s.reference[:1]})
    pack = pack.model_copy(update={"scenarios": [*pack.scenarios, broken]})
    agent = MultiTurnAgent(HFChatModel(tiny_model_path), domain=None, context_tokens=4096)
    trajs, stats = asyncio.run(reference_demonstrations(agent, pack, [s.id, "broken"], seeds=2))
    assert {t.scenario_id for t in trajs} == {s.id} and stats["failed"] == ["broken@seed0", "broken@seed1"]
    with pytest.raises(ConfigError, match="gave 0 successful demonstrations, fewer than min_success=1"):
        asyncio.run(reference_demonstrations(agent, pack, ["broken"], seeds=2))


def test_jsonl_demonstrations_openai_format(tiny_model_path, tmp_path):
    agent = MultiTurnAgent(HFChatModel(tiny_model_path), domain=None, context_tokens=4096)
    f = tmp_path / "demos.jsonl"
    conv = {"messages": [
        {"role": "system", "content": "Help the customer."},
        {"role": "user", "content": "Where is order A1?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_order", "arguments": '{"order_id": "A1"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
        {"role": "assistant", "content": "It has shipped."}]}
    f.write_text(json.dumps(conv) + "\n\n", encoding="utf-8")
    trajs, stats = jsonl_demonstrations(f, agent, [])
    assert stats["episodes"] == 1 and len(trajs[0].completions) == 2
    first, second = trajs[0].completions
    assert first.text == '<tool_call>{"name": "get_order", "arguments": {"order_id": "A1"}}</tool_call>'
    assert first.tool_calls[0].arguments == {"order_id": "A1"}
    assert second.text == "It has shipped." and len(second.prompt_ids) > len(first.prompt_ids)
    for bad, msg in [("{not json", r"demos.jsonl:1: not JSON"),
                     ('{"conversation": []}', r'demos.jsonl:1: a line is .*no "messages" list'),
                     ('{"messages": [{"role": "robot", "content": "x"}]}', r"demos.jsonl:1 message 0: not an OpenAI"),
                     ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message to learn from"),
                     ('{"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '
                      '"{oops"}}]}]}', r"tool_calls\[0\].function.arguments is not JSON")]:
        f.write_text(bad + "\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=msg):
            jsonl_demonstrations(f, agent, [])
    with pytest.raises(ConfigError, match="does not exist"):
        jsonl_demonstrations(tmp_path / "nope.jsonl", agent, [])


# ---------------------------------------------------------------- learning
def test_sft_on_references_teaches_the_toy_answer_and_lifts_success(tiny_model_path, tmp_path):
    """The untrained tiny model never says the answer; SFT on the replayed references makes it, and the rollouts of
    the tuned policy then succeed (what rejection sampling keeps)."""
    trainer = make_sft(tiny_model_path, tmp_path, eval_before=True, eval_after=True, eval_seeds=[0, 1],
                       eval_split="train", eval_temperature=0.0)
    summary = trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(rows) == trainer.total_steps == 20 * 3  # 12 samples / batch 4, 20 epochs
    assert rows[-1]["loss"] < 0.1 * rows[0]["loss"]
    before, after = summary["evals"]["before"], summary["evals"]["after"]
    assert before["success_rate"]["mean"] == 0.0 and after["success_rate"]["mean"] == 1.0
    stats = json.loads((tmp_path / "sft" / "demonstrations.json").read_text())
    assert stats["kept"] == 12 and stats["samples"] == 12  # 6 train scenarios x 2 seeds, one agent turn each
    kept, rstats = asyncio.run(rollout_demonstrations(trainer.agent, trainer.env_factory, trainer.scenarios, 2,
                                                      seed=0, concurrency=8))
    assert rstats["kept"] == len(kept) > 0 and all(t.outcome["success"] for t in kept)


def test_rollout_demonstrations_with_an_untrained_policy_stop_with_a_clear_error(tiny_model_path, tmp_path):
    trainer = make_sft(tiny_model_path, tmp_path, demonstrations={"from": "rollouts", "k": 2, "min_success": 1})
    with pytest.raises(ConfigError, match="gave 0 successful demonstrations.*init_from an SFT run"):
        trainer.train()


def test_sft_resume_matches_an_uninterrupted_run(tiny_model_path, tmp_path):
    full = make_sft(tiny_model_path, tmp_path / "a", max_steps=4)
    full.train()
    part = make_sft(tiny_model_path, tmp_path / "b", max_steps=2, save_every=1)
    part.train()
    with open(tmp_path / "b" / "sft" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a torn line from a killed run
    resumed = make_sft(tiny_model_path, tmp_path / "b", max_steps=4, save_every=1)
    resumed.train(resume=True)
    a, b = weights(full.policy.model), weights(resumed.policy.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "b" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_init_from_merges_an_sft_adapter_for_grpo(tiny_model_path, tmp_path):
    sft = make_sft(tiny_model_path, tmp_path, use_lora=True, lora_r=4, lora_alpha=8, max_steps=3,
                   learning_rate=5e-2)
    sft.train()
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        tuned = sft.policy.model(input_ids=ids).logits
    grpo = load_config({"model": str(tiny_model_path), "env": TOY, "init_from": str(tmp_path / "sft"),
                        "output_dir": str(tmp_path / "grpo"), "eval_before": False, "eval_after": False,
                        "max_steps": 1, "progress": False, "use_lora": True, "group_size": 2,
                        "scenarios_per_step": 1, "max_new_tokens": 4})
    trainer = build_trainer(grpo)
    with torch.no_grad():
        start = trainer.model(input_ids=ids).logits  # fresh adapters are zero: the merged SFT weights
    assert torch.allclose(start, tuned, atol=1e-5)
    trainer.train()
    with pytest.raises(ConfigError, match="trained model .* but this run's model is 'default'"):
        build_trainer(grpo.model_copy(update={"model": "default"}))
    with pytest.raises(ConfigError, match="init_from .* is not a folder"):
        build_trainer(grpo.model_copy(update={"init_from": str(tmp_path / "missing")}))


def test_cli_trains_sft_and_names_bad_fields(tiny_model_path, tmp_path, capsys):
    import yaml

    from stateset_agents.cli import main

    cfg = sft_config(tiny_model_path, tmp_path, max_steps=2).model_dump(mode="json")
    f = tmp_path / "sft.yaml"
    f.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(f)]) == 0
    assert "training sft on" in capsys.readouterr().out
    rows = (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in rows] == [1, 2]
    cfg["demonstrations"] = {"from": "jsonl"}
    f.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(f)]) == 2
    out = capsys.readouterr().out
    assert "demonstrations from jsonl need `path`" in out and "Traceback" not in out


def test_every_example_config_loads():
    from stateset_agents.training.recipe import load_recipe

    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    recipes = [f for f in examples if f.name.startswith("recipe_")]
    algorithms = {load_config(f).algorithm for f in examples if f not in recipes}
    assert {"sft", "grpo", "training_free"} <= algorithms
    assert recipes and all(len(load_recipe(f)[1]) >= 2 for f in recipes)


# ---------------------------------------------------------------- decision weighting
def test_decision_mask_marks_the_turns_first_token_and_every_called_tools_name(tiny_model_path):
    from transformers import AutoTokenizer

    from stateset_agents.training.decisions import decision_mask

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    text = ('Checking now.<tool_call>{"name": "lookup_order", "arguments": {"order_id": "ORD-1"}}</tool_call>'
            '<tool_call>{"name": "issue_refund", "arguments": {}}</tool_call>')
    ids = tok.encode(text, add_special_tokens=False)
    mask = decision_mask(tok, ids)
    assert len(mask) == len(ids) and mask[0]
    marked = [tok.decode([t]) for t, m in zip(ids, mask, strict=True) if m][1:]
    joined = "".join(marked)
    assert "lookup_order" in joined and "issue_refund" in joined
    # nothing but the names (and the tokens they share characters with) is marked: no arguments, no tags
    assert "ORD" not in joined and "arguments" not in joined and "tool_call" not in joined
    plain = tok.encode("Your order is on its way.", add_special_tokens=False)
    assert decision_mask(tok, plain) == [True] + [False] * (len(plain) - 1)  # a message: only its first token
    assert decision_mask(tok, []) == []


def test_decision_weight_trains_on_the_weighted_mean_and_logs_the_plain_nll(tiny_model_path, tmp_path):
    """One update with decision_weight 4: its gradient norm is that of -(w * logp).sum() / w.sum() on the same
    batch (w = 4 on decision tokens, 1 elsewhere), the logged loss is the plain per-token NLL and decision_nll the
    NLL of the decision tokens; weight 1 is the plain mean."""
    from stateset_agents.training.sft import _micro_batches

    for w in (1.0, 4.0):
        trainer = make_sft(tiny_model_path, tmp_path / str(w), decision_weight=w, max_grad_norm=1e9)
        asyncio.run(trainer.prepare())
        policy = trainer.policy
        samples = trainer.batch(0)
        policy.model.train()
        logps, flags = [], []
        for mb in _micro_batches(samples, trainer.config.micro_batch_size):
            logps.append(policy.logprobs(policy.collate(mb), temperature=1.0)[1])
            flags.extend(f for s in mb for f in s.extra["decision"])
        logp, dec = torch.cat(logps), torch.tensor(flags)
        assert 0 < int(dec.sum()) < len(dec)
        weight = torch.where(dec, w, 1.0)
        (-(weight * logp).sum() / weight.sum()).backward()
        expected = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in policy.params if p.grad is not None))
        logp = logp.detach()
        policy.model.zero_grad(set_to_none=True)
        m = asyncio.run(trainer.astep())
        assert m["grad_norm"] == pytest.approx(float(expected), rel=1e-4)
        assert m["loss"] == pytest.approx(float(-logp.mean()), rel=1e-4)
        assert m["decision_nll"] == pytest.approx(float(-logp[dec].mean()), rel=1e-4)
        assert m["decision_tokens"] == int(dec.sum())
    with pytest.raises(ConfigError, match="decision_weight"):
        load_config({"algorithm": "sft", "decision_weight": 0.5})


def test_tool_balance_weights_each_tools_name_by_its_rarity(tiny_model_path):
    """Three calls of lookup_order and one of unlock_account: with tool_balance 1 (mean 2 calls per tool) the names
    weigh weight x 2/3 and weight x 2, the turn's first token weight, every other token 1; balance 0 gives every
    decision token the same weight."""
    from transformers import AutoTokenizer

    from stateset_agents.training.batch import Sample
    from stateset_agents.training.decisions import mark_decisions

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    prompt = tok.encode("Hi there.", add_special_tokens=False)

    def sample(tool: str) -> Sample:
        ids = tok.encode(f'<tool_call>{{"name": "{tool}", "arguments": {{}}}}</tool_call>', add_special_tokens=False)
        return Sample(input_ids=prompt + ids, completion_start=len(prompt), old_logprobs=None, traj_index=0,
                      turn_index=0, truncated=False)

    samples = [sample("lookup_order") for _ in range(3)] + [sample("unlock_account")]
    for balance, factors in ((1.0, (2 / 3, 2.0)), (0.0, (1.0, 1.0))):
        mark_decisions(samples, tok, weight=4.0, tool_balance=balance)
        for s, factor in zip(samples, [factors[0]] * 3 + [factors[1]], strict=True):
            w = s.extra["loss_weight"]
            assert len(w) == s.num_completion == len(s.extra["decision"])
            names = [x for x in w[1:] if x != 1.0]
            assert w[0] == 4.0 and names and names == pytest.approx([4.0 * factor] * len(names))
            assert sum(x != 1.0 for x in w) == sum(s.extra["decision"])
    with pytest.raises(ConfigError, match="tool_balance"):
        load_config({"algorithm": "sft", "tool_balance": 2})


def test_demonstrated_turns_longer_than_max_new_tokens_are_counted_and_warned(tiny_model_path, tmp_path, caplog):
    # The agent plays with at most max_new_tokens a turn: a demonstrated turn longer than that is one it can never
    # write (an escalation's call cut off mid-JSON is invalid). prepare() counts them and says what to set.
    tight = make_sft(tiny_model_path, tmp_path / "tight", max_new_tokens=4)
    with caplog.at_level("WARNING", logger="stateset_agents.training.sft"):
        asyncio.run(tight.prepare())
    stats = json.loads((tmp_path / "tight" / "sft" / "demonstrations.json").read_text())
    assert stats["turns_over_max_new_tokens"] > 0
    (msg,) = [r.getMessage() for r in caplog.records]
    demos = (tmp_path / "tight" / "sft" / "demonstrations.jsonl").read_text().splitlines()
    turns = sum(m["role"] == "assistant" for d in demos for m in json.loads(d)["messages"])  # before packing
    assert f"{stats['turns_over_max_new_tokens']} of {turns} demonstrated agent turns" in msg
    assert "longer than max_new_tokens=4" in msg
    need = int(msg.rsplit("at least ", 1)[1])  # the longest turn: at least the toy answer's own tokens
    assert need > 4 and need >= len(tight.policy.tokenizer(ANSWER)["input_ids"])
    caplog.clear()
    roomy = make_sft(tiny_model_path, tmp_path / "roomy", max_new_tokens=need)
    with caplog.at_level("WARNING", logger="stateset_agents.training.sft"):
        asyncio.run(roomy.prepare())
    assert roomy.demo_stats["turns_over_max_new_tokens"] == 0 and not caplog.records


def test_the_demo_can_write_every_turn_it_is_trained_on(tmp_path):
    # The recipe's SFT stage on the real SmolLM2 tokenizer and the real customer_service demonstrations (with their
    # variants): every demonstrated agent turn fits the max_new_tokens the agent plays with.
    from stateset_agents.training.recipe import load_recipe

    _, stages = load_recipe(Path(__file__).parents[2] / "examples" / "recipe_customer_service.yaml")
    cfg = dict(stages)["sft"].model_copy(update={"output_dir": str(tmp_path / "sft")})
    trainer = build_trainer(cfg)
    try:
        asyncio.run(trainer.prepare())
        assert trainer.demo_stats["turns_over_max_new_tokens"] == 0
        assert trainer.demo_stats["samples"] > 600
    finally:
        if getattr(trainer, "dist", None) is not None:
            trainer.dist.close()
