"""Real trajectories for reward tests: reference solutions and bad agents played in the real environment."""

from __future__ import annotations

from stateset_agents import ConversationEnv, Message, Trajectory, TrajectoryGroup
from stateset_agents.envs import END_MARKER
from stateset_agents.envs.reference import reference_actions


def play(scenario_id: str, actions: list[str], pack: str = "customer_service") -> Trajectory:
    """Play the actions in the real env (on a worker thread, so async tests can call it too)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_play, scenario_id, actions, pack).result()


def _play(scenario_id: str, actions: list[str], pack: str) -> Trajectory:
    env = ConversationEnv(pack, scenario=scenario_id, split="all", max_turns=20)
    _, info = env.reset(seed=0)
    t = Trajectory(scenario_id=scenario_id, seed=0)
    for a in [*actions, END_MARKER]:
        _, r, term, trunc, info = env.step(a)
        if term or trunc:
            t.env_reward, t.terminated, t.truncated, t.outcome = r, term, trunc, info["outcome"]
            break
    t.messages = info["messages"]
    env.close()
    return t


def reference(scenario_id: str, pack: str = "customer_service") -> Trajectory:
    from stateset_agents.envs import load_pack

    return play(scenario_id, reference_actions(load_pack(pack).scenario(scenario_id)), pack)


def group(*trajs: Trajectory) -> TrajectoryGroup:
    return TrajectoryGroup(scenario_id=trajs[0].scenario_id, trajectories=list(trajs))


def said(scenario_id: str, *agent: str) -> Trajectory:
    msgs = [Message(role="user", content="hi")]
    for a in agent:
        msgs += [Message(role="assistant", content=a), Message(role="user", content="ok")]
    return Trajectory(scenario_id=scenario_id, messages=msgs)
