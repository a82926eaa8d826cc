"""The compact prompt for small models (``tool_prompt: compact``): the pack's trimmed instructions and one
``name(args): summary`` line per tool; the demo's agent prompt fits 300 SmolLM2 tokens."""

from __future__ import annotations

import pytest

from stateset_agents.agents import MultiTurnAgent
from stateset_agents.agents.multiturn import _compact_line
from stateset_agents.envs import ConversationEnv, load_pack
from stateset_agents.errors import ConfigError


def _prompt(model, pack: str, style: str):
    env = ConversationEnv(pack, split="test", prompt=style)
    _, info = env.reset(seed=0)
    agent = MultiTurnAgent(model, domain=env.pack.domain, tool_prompt=style)
    return agent.build_prompt(info["messages"], info["tools"]), env


def test_compact_listing_is_one_line_per_tool(tiny_model):
    prompt, env = _prompt(tiny_model, "customer_service", "compact")
    system = prompt[0].content
    assert system.startswith(env.pack.compact_prompt)  # no strategy: the compact instructions come first
    lines = system.split("Tools:\n", 1)[1].splitlines()
    assert len(lines) == len(env.pack.tools) + 1 and lines[-1].startswith("Call one: <tool_call>")
    assert "lookup_order(order_id)" in lines
    assert "create_return(order_id, reason): emails a prepaid label" in lines
    full, _ = _prompt(tiny_model, "customer_service", "full")
    assert env.pack.system_prompt in full[0].content and "Tools you can call:" in full[0].content
    assert len(system) < len(full[0].content) / 2


def test_compact_line_from_a_full_description():
    fn = {"name": "apply_credit", "description": "Add a store credit (USD) to a customer account, e.g. for a "
          "billing error. Second sentence.", "parameters": {"type": "object", "properties": {
              "customer_id": {"type": "string"}, "note": {"type": "string"}}, "required": ["customer_id"]}}
    assert _compact_line(fn) == "apply_credit(customer_id, note?): Add a store credit to a customer account"
    assert _compact_line({"name": "ping", "parameters": {}}) == "ping()"


def test_bad_prompt_styles_are_refused(tiny_model):
    with pytest.raises(ConfigError, match="tool_prompt='tiny' is not one of 'full', 'compact'"):
        MultiTurnAgent(tiny_model, tool_prompt="tiny")
    with pytest.raises(ValueError, match="prompt='tiny' is not one of 'full', 'compact'"):
        ConversationEnv("customer_service", prompt="tiny")


def test_a_pack_without_compact_instructions_keeps_its_own():
    pack = load_pack("customer_service").model_copy(update={"compact_prompt": None})
    env = ConversationEnv(pack, prompt="compact")
    assert env.instructions() == pack.system_prompt


@pytest.mark.slow
def test_the_demo_agent_prompt_fits_300_smollm2_tokens():
    from stateset_agents.models.default import default_model_path
    from stateset_agents.models.hf import HFChatModel

    model = HFChatModel(default_model_path())
    try:
        prompt, _ = _prompt(model, "customer_service", "compact")
        assert len(model.prompt_ids(prompt[:1])) <= 300  # the system message every turn starts with
        full, _ = _prompt(model, "customer_service", "full")
        assert len(model.prompt_ids(full[:1])) > 600
    finally:
        model.close()
