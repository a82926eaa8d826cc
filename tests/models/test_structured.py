"""ask_json: one home for asking a model for JSON, validating it and retrying with the problem fed back."""

import pytest

from stateset_agents import Completion, Message, ModelError, SamplingParams
from stateset_agents.models.structured import (
    AskStats,
    InvalidAnswer,
    NoValidAnswer,
    ask_json,
    first_json_object,
)


class Scripted:
    """A ChatModel that answers from a list and records what it was sent."""

    def __init__(self, *replies: str, finish: str = "stop") -> None:
        self.replies, self.finish, self.seen = list(replies), finish, []

    async def chat(self, messages, *, sampling, tools=None):
        self.seen.append((list(messages), sampling))
        return Completion(text=self.replies.pop(0), finish_reason=self.finish)


def parse_score(text: str) -> float:
    obj = first_json_object(text)
    if not isinstance(obj.get("score"), (int, float)):
        raise InvalidAnswer('"score" is missing or not a number')
    return float(obj["score"])


ASK = [Message(role="user", content="score it")]


async def test_first_valid_reply_is_returned_and_prose_around_it_ignored():
    m = Scripted('Sure! ```json\n{"score": 0.5}\n```')
    assert await ask_json(m, ASK, parse_score, sampling=SamplingParams(seed=3)) == 0.5
    assert len(m.seen) == 1


async def test_invalid_answers_are_fed_back_then_retried_with_a_new_seed():
    m = Scripted("no idea", '{"score": "high"}', '{"score": 1}')
    stats = AskStats()
    assert await ask_json(m, ASK, parse_score, sampling=SamplingParams(seed=10), retries=2, stats=stats) == 1.0
    assert (stats.calls, stats.retries, stats.invalid_answers) == (3, 2, 2)
    last_messages, last_sampling = m.seen[-1]
    assert [x.role for x in last_messages] == ["user", "assistant", "user", "assistant", "user"]
    assert "no JSON object" in last_messages[2].content and '"score" is missing' in last_messages[4].content
    assert [s.seed for _, s in m.seen] == [10, 11, 12]
    assert len(ASK) == 1  # the caller's list is not modified


async def test_no_valid_answer_names_every_problem_and_cut_off_replies():
    m = Scripted("{", "{", finish="length")
    with pytest.raises(NoValidAnswer, match="judge: no valid answer in 2 attempts") as e:
        await ask_json(m, ASK, parse_score, sampling=SamplingParams(max_new_tokens=7), retries=1, what="judge")
    assert len(e.value.problems) == 2 and all("cut off at max_new_tokens=7" in p for p in e.value.problems)


async def test_schema_is_sent_as_the_sampling_constraint():
    schema = {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}
    m = Scripted('{"score": 0.2}')
    await ask_json(m, ASK, parse_score, sampling=SamplingParams(), schema=schema)
    assert m.seen[0][1].json_schema == schema


async def test_a_model_failure_is_not_an_invalid_answer():
    class Down:
        async def chat(self, messages, *, sampling, tools=None):
            raise ModelError("endpoint down")

    with pytest.raises(ModelError, match="endpoint down"):
        await ask_json(Down(), ASK, parse_score, sampling=SamplingParams())


async def test_the_tiny_model_answers_validly_at_once_under_the_schema(tiny_model):
    """Without a schema the untrained tiny model never yields JSON; with one, the first attempt parses."""
    schema = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["score"], "additionalProperties": False}
    stats = AskStats()
    score = await ask_json(tiny_model, ASK, parse_score, schema=schema, stats=stats,
                           sampling=SamplingParams(temperature=1.0, max_new_tokens=32, seed=1))
    assert 0 <= score <= 9 and stats.calls == 1
    with pytest.raises(NoValidAnswer):
        await ask_json(tiny_model, ASK, parse_score, retries=1,
                       sampling=SamplingParams(temperature=1.0, max_new_tokens=32, seed=1))
