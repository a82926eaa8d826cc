"""Our own clients against the real server: a MultiTurnAgent over OpenAIChatModel talks to an LLMUser over
OpenAIChatModel, and RulerReward judges the group with an OpenAIChatModel judge, all at the tiny model served on
loopback. The tiny model writes gibberish, so the judge's verdict is malformed: the RULER contract is that the
error is carried, the value is None (never a made-up score), and the retries really went to the server."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from stateset_agents import (
    ConversationEnv,
    LLMUser,
    Message,
    MultiTurnAgent,
    OpenAIChatModel,
    SamplingParams,
    Trajectory,
    TrajectoryGroup,
)
from stateset_agents.rewards import RulerReward
from stateset_agents.rollout import rollout

from .conftest import API_KEY, AUTH


def _chat_requests(client) -> float:
    text = client.get("/metrics", headers=AUTH).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "stateset_http_requests_total" and s.labels["route"] == "/v1/chat/completions"
               and s.labels["status"] == "200")


async def test_agent_user_and_ruler_judge_through_the_server(server, client, tiny_model):
    base = server.url + "/v1"
    agent_model = OpenAIChatModel(base, tiny_model.name, api_key=API_KEY, logprobs=True)
    user_model = OpenAIChatModel(base, tiny_model.name, api_key=API_KEY)
    judge = OpenAIChatModel(base, tiny_model.name, api_key=API_KEY)
    try:
        # OpenAIChatModel: a real completion, identical to the local model's, with log-probs
        msgs = [Message(role="user", content="Where is my order?")]
        greedy = SamplingParams(temperature=0, max_new_tokens=10)
        remote = await agent_model.chat(msgs, sampling=greedy)
        local = await tiny_model.chat(msgs, sampling=greedy)
        assert remote.text == local.text and remote.logprobs is not None
        assert len(remote.logprobs) == len(local.completion_ids)

        # an episode: the agent and the LLM user both speak through the server
        agent = MultiTurnAgent(agent_model, domain="customer_service", context_tokens=1024,
                               sampling=SamplingParams(temperature=1.0, max_new_tokens=8))
        user = LLMUser(user_model, max_new_tokens=8)
        before, sent_before = _chat_requests(client), agent_model.stats["requests"]
        (group,) = await rollout(agent, lambda: ConversationEnv("customer_service", user=user, max_turns=2),
                                 ["cs-delayed-order-001"], group_size=2, progress=False)
        assert all(t.error is None for t in group.trajectories), [t.error for t in group.trajectories]
        for t in group.trajectories:
            roles = [m.role for m in t.messages if m.role in ("user", "assistant")]
            assert roles[:3] == ["user", "assistant", "user"]  # the second user turn came from the LLMUser
        sent = user_model.stats["requests"] + agent_model.stats["requests"] - sent_before
        assert user_model.stats["requests"] >= 2 and agent_model.stats["requests"] - sent_before >= 4
        assert _chat_requests(client) - before == sent  # every call was answered by the server, none retried

        # RULER with the served model as judge: malformed verdicts -> error carried, value None, retries made.
        # (A short group and a one-line rubric: a longer judge prompt would not fit the tiny model's 2048 positions.)
        ruler = RulerReward(judge, rubric="Score how helpful the agent is.", max_retries=1,
                            sampling=SamplingParams(temperature=0, max_new_tokens=32))
        short = TrajectoryGroup(scenario_id="s", trajectories=[
            Trajectory(scenario_id="s", messages=[Message(role="user", content="Where is ORD-1042?"),
                                                  Message(role="assistant", content=reply)])
            for reply in ("It ships on March 14.", "No idea.")])
        before = _chat_requests(client)
        results = await ruler.score(short)
        assert [r.value for r in results] == [None, None]
        assert all(r.error and "RULER judge: no valid answer in 2 attempts" in r.error for r in results), \
            [r.error for r in results]
        assert ruler.stats["calls"] == 2 and ruler.stats["retries"] == 1 and ruler.stats["failures"] == 1
        assert judge.stats["requests"] == 2 and _chat_requests(client) - before == 2
    finally:
        for m in (agent_model, user_model, judge):
            await m.aclose()
