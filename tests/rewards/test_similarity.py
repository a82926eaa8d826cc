import pytest

from stateset_agents import Trajectory
from stateset_agents.rewards import ReferenceSimilarity
from tests.rewards.helpers import group, reference, said


@pytest.fixture(scope="module")
def sim():
    return ReferenceSimilarity()


async def test_reference_reply_scores_higher_than_an_off_topic_one(sim):
    s = "cs-delayed-order-001"
    res = await sim.score(group(reference(s), said(s, "I like turtles and jazz."), Trajectory(scenario_id=s, error="x")))
    assert res[0].value > 0.7 > 0.3 > res[1].value
    assert res[2].value is None and res[2].error == "trajectory failed: x"


async def test_not_applicable_without_references_or_replies(sim):
    res = await ReferenceSimilarity({"s": []}, embedder=sim.embedder).score(group(said("s", "hello")))
    assert res[0].value is None and "no reference replies" in res[0].explanation
    res = await sim.score(group(Trajectory(scenario_id="cs-delayed-order-001")))
    assert res[0].value is None and res[0].explanation == "the agent said nothing to the user"


def test_embeddings_are_unit_vectors(sim):
    e = sim.embedder.encode(["hello", "refund my order", "x" * 5000])
    assert e.shape == (3, 384)
    assert ((e.norm(dim=1) - 1).abs() < 1e-5).all()
