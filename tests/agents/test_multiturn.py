import pytest

from stateset_agents import Completion, ConfigError, Message, SamplingParams, ToolCall
from stateset_agents.agents import MultiTurnAgent, strategies


class Echo:
    """A ChatModel that records its prompts and answers with a fixed text."""

    def __init__(self, text="ok", tool_calls=None):
        self.text, self.tool_calls, self.prompts = text, tool_calls or [], []

    async def chat(self, messages, *, sampling, tools=None):
        self.prompts.append((messages, tools))
        return Completion(text=self.text, tool_calls=self.tool_calls)


TOOLS = [{"type": "function", "function": {"name": "lookup_order", "description": "Look up an order.",
                                           "parameters": {"type": "object",
                                                          "properties": {"order_id": {"type": "string"}}}}}]


def test_strategies_are_data_for_every_domain():
    assert set(strategies()) == {"customer_service", "tech_support", "sales", "educational"}


async def test_prompt_has_strategy_env_instructions_and_tools():
    model = Echo()
    agent = MultiTurnAgent(model, domain="sales")
    conv = [Message(role="system", content="ENV RULES"), Message(role="user", content="hi")]
    await agent.act(conv, TOOLS)
    prompt, tools = model.prompts[0]
    assert prompt[0].role == "system" and prompt[0].content.startswith(strategies()["sales"])
    assert "ENV RULES" in prompt[0].content and "- lookup_order(order_id: string): Look up an order." in prompt[0].content
    assert '<tool_call>{"name": "TOOL"' in prompt[0].content
    assert prompt[1:] == conv[1:] and tools is None


async def test_tools_in_template():
    model = Echo()
    await MultiTurnAgent(model, tools_in_template=True).act([Message(role="user", content="hi")], TOOLS)
    assert model.prompts[0][1] == TOOLS


def test_context_budget_drops_oldest_turns_keeping_first_user_message():
    agent = MultiTurnAgent(Echo(), domain=None, context_tokens=120)
    conv = [Message(role="system", content="rules"), Message(role="user", content="first " * 20)]
    for i in range(10):
        conv.append(Message(role="assistant", content=f"reply {i} " * 10))
        conv.append(Message(role="user", content=f"user {i} " * 10))
    prompt = agent.build_prompt(conv)
    assert prompt[1] == conv[1]
    assert prompt[2].content.endswith("earlier messages omitted]")
    assert prompt[-1] == conv[-1]
    assert agent._count(prompt) <= 120
    dropped = int(prompt[2].content.strip("[").split()[0])
    assert len(prompt) - 3 + dropped == len(conv) - 2


def test_tool_results_are_dropped_with_their_call():
    agent = MultiTurnAgent(Echo(), domain=None, context_tokens=80)
    call = ToolCall(id="c1", name="lookup_order", arguments={})
    conv = [Message(role="user", content="start"),
            Message(role="assistant", content="x " * 100, tool_calls=[call]),
            Message(role="tool", content="y " * 100, tool_call_id="c1", name="lookup_order"),
            Message(role="assistant", content="latest"), Message(role="user", content="now")]
    prompt = agent.build_prompt(conv)
    assert [m.role for m in prompt] == ["system", "user", "user", "assistant", "user"]
    assert prompt[2].content == "[2 earlier messages omitted]"


def test_action_text_adds_structured_tool_calls():
    c = Completion(text="", tool_calls=[ToolCall(id="1", name="lookup_order", arguments={"order_id": "A"})])
    assert MultiTurnAgent.action_text(c) == '<tool_call>{"name": "lookup_order", "arguments": {"order_id": "A"}}</tool_call>'
    tagged = Completion(text='<tool_call>{"name": "x", "arguments": {}}</tool_call>',
                        tool_calls=[ToolCall(id="1", name="x")])
    assert MultiTurnAgent.action_text(tagged) == tagged.text


def test_bad_config():
    with pytest.raises(ConfigError, match="unknown domain 'legal'"):
        MultiTurnAgent(Echo(), domain="legal")
    with pytest.raises(ConfigError, match="context_tokens=10 is too small"):
        MultiTurnAgent(Echo(), context_tokens=10)
    assert MultiTurnAgent(Echo()).sampling == SamplingParams(temperature=0.7, max_new_tokens=128)


def test_context_budget_with_a_real_tokenizer(tiny_model):
    agent = MultiTurnAgent(tiny_model, domain="customer_service", context_tokens=400)
    conv = [Message(role="user", content="hello there")] + [
        Message(role=r, content="lots of words here " * 8) for r in ["assistant", "user"] * 6]
    prompt = agent.build_prompt(conv)
    assert len(tiny_model.prompt_ids(prompt)) <= 400 < len(tiny_model.prompt_ids(agent.build_prompt(conv[:1]) + conv[1:]))


# ---------------------------------------------------------------- context trimming in linear time
class Counting:
    """The tiny model, counting how much text its tokenizer is asked to template and tokenise."""

    def __init__(self, tiny) -> None:
        self.tiny, self.tokenizer, self.chars, self.calls = tiny, tiny.tokenizer, 0, 0

    def prompt_ids(self, messages, tools=None):
        self.calls += 1
        self.chars += sum(len(m.content) for m in messages)
        return self.tiny.prompt_ids(messages, tools)

    async def chat(self, messages, *, sampling, tools=None):
        return Completion(text="ok")


def reference_trim(agent, conversation):
    """The budget rule, written the slow and obvious way: drop whole turns from the front until it fits."""
    system, rest = agent.build_prompt([m for m in conversation if m.role == "system"])[0], \
        [m for m in conversation if m.role != "system"]
    full = [system, *rest]
    if agent.model.tiny is not None and len(agent.model.tiny.prompt_ids(full)) <= agent.context_tokens \
            or len(rest) <= 2:
        return full
    head, tail = rest[:1], rest[1:]
    while len(tail) > 1:
        cut = 1
        while cut < len(tail) and tail[cut].role == "tool":
            cut += 1
        tail = tail[cut:]
        note = Message(role="user", content=f"[{len(rest) - 1 - len(tail)} earlier messages omitted]")
        if len(agent.model.tiny.prompt_ids([system, *head, note, *tail])) <= agent.context_tokens:
            return [system, *head, note, *tail]
    return [system, *head, Message(role="user", content=f"[{len(rest) - 1 - len(tail)} earlier messages omitted]"),
            *tail]


def _conversation(n: int, chars: int, seed: int = 0) -> list[Message]:
    import random

    rnd = random.Random(seed)
    words = ["order", "refund", "screen", "cracked", "ORD-1042", "please", "thanks", "shipping", "é", "ünïcode"]
    conv = [Message(role="system", content="ENV RULES"), Message(role="user", content="first")]
    for i in range(n):
        text = " ".join(rnd.choice(words) for _ in range(rnd.randint(1, chars // 4)))[:chars]
        if i % 5 == 3:
            call = ToolCall(id=f"c{i}", name="lookup_order", arguments={"order_id": text[:20]})
            conv += [Message(role="assistant", content="", tool_calls=[call]),
                     Message(role="tool", content=text, tool_call_id=f"c{i}", name="lookup_order")]
        else:
            conv.append(Message(role="assistant" if i % 2 else "user", content=text))
    return conv


@pytest.mark.parametrize(("n", "chars", "budget"), [(30, 400, 300), (60, 200, 700), (12, 1500, 2000), (40, 60, 64)])
def test_trimming_keeps_exactly_what_the_slow_rule_keeps(tiny_model, n, chars, budget):
    model = Counting(tiny_model)
    agent = MultiTurnAgent(model, domain="customer_service", context_tokens=budget)
    for seed in range(3):
        conv = _conversation(n, chars, seed)
        assert agent.build_prompt(conv) == reference_trim(agent, conv), (n, chars, budget, seed)


def test_trimming_tokenises_each_message_about_once(tiny_model):
    model = Counting(tiny_model)
    agent = MultiTurnAgent(model, domain="customer_service", context_tokens=1024)
    conv = _conversation(200, 600)
    total = sum(len(m.content) for m in conv)
    prompt = agent.build_prompt(conv)
    assert len(tiny_model.prompt_ids(prompt)) <= 1024 and prompt[2].content.endswith("earlier messages omitted]")
    # linear: the messages once, the system prompt and the kept prompt a few times; the old loop re-tokenised
    # the whole remaining prompt once per dropped turn (about 100 x the conversation here)
    assert model.chars <= total + 5 * 1024 * 4 + 20 * len(prompt[0].content), (model.chars, total)
