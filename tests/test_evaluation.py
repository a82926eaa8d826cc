"""Evaluation: pass@k / pass^k by hand and by enumeration, reports from scripted and tiny-model agents,
errors as data, seeds, sharding and merge, before/after tables, the CLI."""

import asyncio
import itertools
import json
import random
from fractions import Fraction
from math import comb

import pytest
from rich.console import Console

from stateset_agents import Completion, ConversationEnv, MultiTurnAgent, SamplingParams, SyncInAsyncError
from stateset_agents.cli import main
from stateset_agents.envs import load_pack
from stateset_agents.envs.reference import reference_actions
from stateset_agents.errors import ConfigError, UnknownScenarioError
from stateset_agents.evaluation import (
    EvalDomain,
    EvalReport,
    aevaluate,
    aevaluate_domains,
    compare,
    evaluate,
    load_domain,
    pass_at_k,
    pass_hat_k,
)
from stateset_agents.rewards import EfficiencyReward, OutcomeReward, WeightedSum
from stateset_agents.rollout import episode_seed

CS = load_pack("customer_service")
TS = load_pack("tech_support")


# ---------------------------------------------------------------- metrics
@pytest.mark.parametrize(("successes", "k", "at", "hat"), [
    ([[1, 1, 0, 0]], 2, Fraction(5, 6), Fraction(1, 6)),  # 1 - C(2,2)/C(4,2); C(2,2)/C(4,2)
    ([[1, 0, 0, 0], [1, 1, 1, 1]], 1, Fraction(5, 8), Fraction(5, 8)),  # k=1: mean of c/n
    ([[1, 0, 0]], 3, Fraction(1), Fraction(0)),  # n = k: any success / all successes
    ([[1, 1, 0], [0, 1]], 2, Fraction(1), Fraction(1, 6)),  # n differs: (C(2,2)/C(3,2) + 0) / 2
    ([[0, 0, 0, 0]], 4, Fraction(0), Fraction(0)),
    ([[True, True]], 2, Fraction(1), Fraction(1)),
    ([[1, 1, 1, 0, 0, 0]], 3, Fraction(19, 20), Fraction(1, 20)),  # 1 - C(3,3)/C(6,3); C(3,3)/C(6,3)
])
def test_pass_metrics_by_hand(successes, k, at, hat):
    assert pass_at_k(successes, k) == pytest.approx(float(at), abs=1e-12)
    assert pass_hat_k(successes, k) == pytest.approx(float(hat), abs=1e-12)


def test_pass_metrics_equal_enumeration_of_k_subsets():
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 7)
        trials = [rng.randint(0, 1) for _ in range(n)]
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(trials, k))
            assert len(subsets) == comb(n, k)
            any_ok = sum(any(s) for s in subsets) / len(subsets)
            all_ok = sum(all(s) for s in subsets) / len(subsets)
            assert pass_at_k([trials], k) == pytest.approx(any_ok, abs=1e-12)
            assert pass_hat_k([trials], k) == pytest.approx(all_ok, abs=1e-12)


@pytest.mark.parametrize(("successes", "k", "message"), [
    ([[1, 0]], 3, "k=3 is larger than the 2 trials of successes[0]; pass@k and pass^k need at least k trials per "
                  "scenario: run more trials or use k <= 2"),
    ([], 1, "successes=[] must be a non-empty list with one list of 0/1 trial results per scenario, e.g. "
            "[[1, 0, 1], [0, 0, 1]]"),
    ([[1], []], 1, "successes[1] is empty; every scenario needs at least one trial result"),
    ([[1, 2]], 1, "successes[0][1]=2; trial results must be 0 or 1 (or False/True)"),
    ([[0.5]], 1, "successes[0][0]=0.5; trial results must be 0 or 1 (or False/True)"),
    ([["1"]], 1, "successes[0][0]='1'; trial results must be 0 or 1 (or False/True)"),
    ([1, 0], 1, "successes[0]=1 is not a list of 0/1 trial results; pass one list per scenario, e.g. "
                "[[1, 0, 1], [0, 0, 1]]"),
    ([[1]], 0, "k=0 must be an integer >= 1"),
    ([[1]], True, "k=True must be an integer >= 1"),
])
def test_pass_metric_errors_name_the_value_and_the_fix(successes, k, message):
    for fn in (pass_at_k, pass_hat_k):
        with pytest.raises(ConfigError) as e:
            fn(successes, k)
        assert str(e.value) == message


# ---------------------------------------------------------------- scripted agents
def _scenario_of(messages):
    first = next(m.content for m in messages if m.role == "user")
    [s] = [s for pack in (CS, TS) for s in pack.scenarios if first in s.user.opening]
    return s


def _coin(episode: int) -> bool:
    """The coin ScriptedModel tosses at turn 0 of an episode: from the turn-0 sampling seed rollout derives."""
    return ((episode * 1009) & 0x7FFFFFFF) % 2 == 0


class ScriptedModel:
    """A ChatModel whose behaviour depends on the scenario: ``solve`` plays the reference solution, ``quit`` ends
    at once, ``coin`` solves or quits by the episode's seed, ``crash`` raises."""

    name = "scripted"

    def __init__(self, plan):
        self.plan = plan

    async def chat(self, messages, *, sampling, tools=None):
        s = _scenario_of(messages)
        mode = self.plan.get(s.id, "quit")
        turn = sum(m.role == "assistant" for m in messages)
        if mode == "crash":
            raise ConnectionError("endpoint down")
        if mode == "coin" and turn == 0:
            mode = "solve" if sampling.seed % 2 == 0 else "quit"
        elif mode == "coin":
            mode = "solve"  # turn 0 decided: a quitter never reaches turn 1
        acts = reference_actions(s)
        if mode == "solve" and turn < len(acts):
            return Completion(text=acts[turn])
        return Completion(text="Is there anything else I can help with? [END]")


IDS = ["cs-refund-damaged-002", "cs-ship-eta-009", "cs-return-window-017", "cs-damaged-tv-038"]
PLAN = {IDS[0]: "solve", IDS[1]: "coin", IDS[2]: "quit", IDS[3]: "crash"}


def _factory():
    return ConversationEnv(CS, split="all")


def _reward():
    return WeightedSum([(OutcomeReward(), 1.0), (EfficiencyReward(), 0.1)])


def _agent(plan=PLAN):
    return MultiTurnAgent(ScriptedModel(plan))


def _same(a: EvalReport, b: EvalReport) -> bool:
    return a.model_dump(exclude={"elapsed_s"}) == b.model_dump(exclude={"elapsed_s"})


async def test_report_counts_successes_errors_rewards_and_pass_metrics(tmp_path):
    report = await aevaluate(_agent(), _factory, IDS, k=4, reward=_reward(), seed=5, progress=False)
    assert report.domains == ["customer_service"] and report.model == "scripted" and report.reward == "total"
    assert [s.scenario_id for s in report.results] == IDS and [s.index for s in report.results] == [0, 1, 2, 3]
    seeds = [[episode_seed(5, sid, i) for i in range(4)] for sid in IDS]
    assert [[t.seed for t in s.trials] for s in report.results] == seeds
    coin = [int(_coin(x)) for x in seeds[1]]
    assert report.successes() == [[1, 1, 1, 1], coin, [0, 0, 0, 0], [0, 0, 0, 0]]
    assert 0 < sum(coin) < 4  # the coin scenario really is mixed under seed 5

    crashed = report.results[3].trials
    assert all(t.error == "ConnectionError: endpoint down" and not t.success for t in crashed)
    assert all(t.reward is None and t.outcome_score is None and t.reward_error.startswith("trajectory failed")
               for t in crashed)
    solved = report.results[0].trials
    assert all(t.outcome_score == 1.0 and t.goal_reached and t.reward is not None for t in solved)

    s = report.by_domain["customer_service"]
    assert (s.scenarios, s.trials, s.successes, s.errors) == (4, 16, 4 + sum(coin), 4)
    assert s.success_rate == (4 + sum(coin)) / 16
    assert (s.reward_count, s.reward_missing, s.reward_errors) == (12, 4, 0)
    assert s.components["outcome"].count == 12 and s.components["outcome"].missing == 4
    assert s.components["outcome"].mean == pytest.approx(
        sum(t.outcome_score for r in report.results[:3] for t in r.trials) / 12)
    for j in range(1, 5):
        assert s.pass_at_k[j] == pass_at_k(report.successes(), j)
        assert s.pass_hat_k[j] == pass_hat_k(report.successes(), j)
    assert s.pass_at_k[4] == 0.5 and s.pass_hat_k[4] == 0.25  # solve: 1/1; coin: 1/0; quit, crash: 0/0
    assert report.overall.model_dump(exclude={"domain"}) == s.model_dump(exclude={"domain"})

    console = Console(record=True, width=120)
    console.print(report.table())
    text = console.export_text()
    assert "errors" in text and "pass^4" in text and f"({4 + sum(coin)}/16)" in text and "efficiency" in text

    path = report.save(tmp_path / "sub" / "eval.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["eval.json", "eval.transcripts.jsonl"]  # no temp file
    loaded = EvalReport.load(path)
    assert loaded == report
    data = json.loads(path.read_text())
    assert data["overall"]["errors"] == 4 and data["by_domain"]["customer_service"]["pass_hat_k"]["4"] == 0.25


async def test_a_failing_reward_is_recorded_per_trial():
    class Broken:
        name = "broken"

        async def score(self, group):
            raise RuntimeError("judge unreachable")

    report = await aevaluate(_agent(), _factory, IDS[:2], k=2, reward=Broken(), progress=False)
    trials = [t for s in report.results for t in s.trials]
    assert all(t.reward is None and t.reward_error == "broken raised RuntimeError: judge unreachable"
               for t in trials)
    assert (report.overall.reward_errors, report.overall.reward_missing, report.overall.mean_reward) == (4, 4, None)


async def test_sharded_reports_merge_into_the_unsharded_report():
    full = await aevaluate(_agent(), _factory, IDS, k=3, reward=_reward(), seed=2, progress=False)
    shards = [await aevaluate(_agent(), _factory, IDS, k=3, reward=_reward(), seed=2, rank=r, world_size=3,
                              progress=False) for r in range(3)]
    assert [[s.scenario_id for s in sh.results] for sh in shards] == [[IDS[0], IDS[3]], [IDS[1]], [IDS[2]]]
    assert shards[1].table().title == "evaluation: k=3, seed=2, shard 1/3, model scripted"
    assert _same(EvalReport.merge(shards[::-1]), full)
    with pytest.raises(ConfigError, match=r"needs exactly one report per rank 0..2, got ranks \[0, 2\]"):
        EvalReport.merge([shards[0], shards[2]])
    with pytest.raises(ConfigError, match="cannot merge shards with different k: 3"):
        EvalReport.merge([shards[0], shards[1].model_copy(update={"k": 2})])
    with pytest.raises(ConfigError, match="at least one report"):
        EvalReport.merge([])


async def test_several_domains_per_domain_and_overall():
    ts_ids = ["ts-mail-old-ipad-003", "ts-fake-mail-app-007"]
    plan = {IDS[0]: "solve", IDS[2]: "quit", ts_ids[0]: "solve", ts_ids[1]: "solve"}
    domains = [EvalDomain(_factory, [IDS[0], IDS[2]]), (lambda: ConversationEnv(TS, split="all"), ts_ids, "ts")]
    report = await aevaluate_domains(_agent(plan), domains, k=2, seed=1, progress=False)
    assert report.domains == ["customer_service", "ts"] and report.total_scenarios == 4
    assert report.by_domain["customer_service"].success_rate == 0.5
    assert report.by_domain["ts"].success_rate == 1.0 and report.by_domain["ts"].pass_hat_k[2] == 1.0
    assert report.overall.success_rate == 0.75 and report.overall.scenarios == 4
    assert report.successes("ts") == [[1, 1], [1, 1]]
    shards = [await aevaluate_domains(_agent(plan), {"customer_service": (_factory, [IDS[0], IDS[2]]),
                                                     "ts": (lambda: ConversationEnv(TS, split="all"), ts_ids)},
                                      k=2, seed=1, rank=r, world_size=2, progress=False) for r in range(2)]
    assert _same(EvalReport.merge(shards), report)
    console = Console(record=True, width=120)
    console.print(report.table())
    assert "overall" in console.export_text()


async def test_compare_before_and_after(tmp_path):
    before = await aevaluate(_agent({}), _factory, IDS[:2], k=2, reward=_reward(), progress=False)
    after = await aevaluate(_agent({IDS[0]: "solve", IDS[1]: "solve"}), _factory, IDS[:2], k=2, reward=_reward(),
                            progress=False)
    console = Console(record=True, width=120)
    console.print(compare(before, after))
    text = console.export_text()
    assert "same seeds: paired episodes" in text
    success_row = next(line for line in text.splitlines() if "success rate" in line)
    assert [c for c in success_row.split() if c != "│"][-3:] == ["0.000", "1.000", "+1.000"]
    with pytest.raises(ConfigError, match="needs two evaluations of the same scenarios with the same k"):
        compare(before, await aevaluate(_agent({}), _factory, IDS[:1], k=2, progress=False))


async def test_bad_arguments():
    with pytest.raises(UnknownScenarioError, match="unknown scenario 'cs-nope'"):
        await aevaluate(_agent(), _factory, ["cs-nope"], progress=False)
    with pytest.raises(ConfigError, match="k=0 must be an integer >= 1"):
        await aevaluate(_agent(), _factory, IDS, k=0)
    with pytest.raises(ConfigError, match="rank=2, world_size=2"):
        await aevaluate(_agent(), _factory, IDS, rank=2, world_size=2)
    with pytest.raises(ConfigError, match=r"scenario ids \['cs-ship-eta-009'\] appear more than once"):
        await aevaluate(_agent(), _factory, [IDS[1], IDS[1]])
    with pytest.raises(ConfigError, match="must be a non-empty list of scenario ids"):
        await aevaluate(_agent(), _factory, [])
    with pytest.raises(ConfigError, match="'overall' is reserved"):
        await aevaluate(_agent(), _factory, IDS, domain="overall")


async def test_sync_evaluate_refuses_a_running_loop():
    with pytest.raises(SyncInAsyncError, match=r"evaluate\(\) called inside a running event loop; use `await "
                                               r"aevaluate\(...\)` instead"):
        evaluate(_agent(), _factory, IDS)


def test_sync_evaluate():
    report = evaluate(_agent(), _factory, IDS[:1], k=2, progress=False)
    assert report.successes() == [[1, 1]]


def test_load_domain_from_a_gymnasium_id():
    d = load_domain("stateset/TechSupport-v0", limit=2, max_turns=5)
    assert d.domain == "tech_support" and d.scenarios == [s.id for s in TS.split("test")][:2]
    env = d.env_factory()
    assert env.max_turns == 5 and env.pack is TS
    env.close()
    with pytest.raises(ConfigError, match="scenarios=999 but split 'test' of pack 'tech_support' has"):
        load_domain("tech_support", limit=999)


# ---------------------------------------------------------------- the tiny model
@pytest.fixture
def tiny_agent(tiny_model):
    return MultiTurnAgent(tiny_model, sampling=SamplingParams(temperature=1.0, max_new_tokens=8))


def _tiny_factory():
    return ConversationEnv(CS, split="all", max_turns=2)


async def test_tiny_model_seeds_and_shards(tiny_agent):
    ids = [s.id for s in CS.split("test")][:2]
    reward = _reward()
    a = await aevaluate(tiny_agent, _tiny_factory, ids, k=2, reward=reward, seed=3, progress=False)
    assert a.overall.trials == 4 and a.overall.scenarios == 2 and sorted(a.overall.pass_at_k) == [1, 2]
    assert [[t.seed for t in s.trials] for s in a.results] == [[episode_seed(3, i, j) for j in range(2)] for i in ids]
    assert a.overall.errors == sum(t.error is not None for s in a.results for t in s.trials)
    assert all(t.turns >= 1 and t.reward is not None for s in a.results for t in s.trials if t.error is None)
    b = await aevaluate(tiny_agent, _tiny_factory, ids, k=2, reward=reward, seed=3, progress=False)
    assert _same(a, b)  # same seed: the same episodes, token for token
    shards = await asyncio.gather(*[aevaluate(tiny_agent, _tiny_factory, ids, k=2, reward=reward, seed=3, rank=r,
                                              world_size=2, progress=False) for r in range(2)])
    assert [len(s.results) for s in shards] == [1, 1]
    assert _same(EvalReport.merge(shards), a)


def test_cli_eval_writes_json(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", "--env", "customer_service", "--model", str(tiny_model_path), "--k", "2", "--scenarios", "2",
               "--max-turns", "2", "--max-new-tokens", "8", "--seed", "1", "--json", str(out)])
    assert rc == 0
    report = EvalReport.load(out)
    assert report.k == 2 and report.seed == 1 and report.domains == ["customer_service"]
    assert [s.scenario_id for s in report.results] == [s.id for s in CS.split("test")][:2]
    assert report.overall.trials == 4 and report.reward is None
    text = capsys.readouterr().out
    assert "pass^2" in text and f"report: {out}" in text
    side = tmp_path / "eval.transcripts.jsonl"  # every episode, with the model's real replies
    assert f"transcripts: {side}" in text
    assert [(t.scenario_id, t.seed) for t in report.transcripts] == [
        (s.scenario_id, t.seed) for s in report.results for t in s.trials]
    assert all(t.turns >= 1 and t.messages[-1]["role"] in ("user", "assistant", "tool") for t in report.transcripts)


def test_cli_eval_bad_input_exits_2(capsys):
    assert main(["eval", "--env", "customer_service", "--scenarios", "999"]) == 2
    assert "scenarios=999 but split 'test' of pack 'customer_service' has" in capsys.readouterr().out
    assert main(["eval", "--env", "customer_servic"]) == 2
    assert "Did you mean 'customer_service'" in capsys.readouterr().out


class _OneHot:
    """A stand-in embedder for building a library in a test: distinct texts get orthogonal unit vectors."""

    def __init__(self):
        self.ids = {}

    def encode(self, texts):
        import numpy as np

        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, self.ids.setdefault(t, len(self.ids))] = 1.0
        return out


def _library(tmp_path):
    from stateset_agents.training.experience import ExperienceLibrary

    lib = ExperienceLibrary().use_embedder(_OneHot())
    lib.add("Ask for the order number before looking anything up.", domain="customer_service", step=0)
    return lib.save(tmp_path / "experiences.json")


def test_load_domain_gives_the_agent_an_experience_library(tiny_model, tmp_path):
    from stateset_agents.training.experience import ExperienceLibrary

    lib = ExperienceLibrary.load(_library(tmp_path))
    d = load_domain("customer_service", limit=1, model=tiny_model, experiences=lib)
    assert d.agent.experiences is lib and d.agent.domain == "customer_service"
    prompt = d.agent.build_prompt([], None)
    assert "Ask for the order number before looking anything up." in prompt[0].content


def test_cli_eval_with_experiences(tiny_model_path, tmp_path):
    path, out = _library(tmp_path), tmp_path / "eval.json"
    rc = main(["eval", "--model", str(tiny_model_path), "--k", "1", "--scenarios", "1", "--max-turns", "2",
               "--max-new-tokens", "8", "--experiences", str(path), "--json", str(out)])
    assert rc == 0
    assert EvalReport.load(out).label == f"experiences {path} (1 lessons)"
    assert main(["eval", "--experiences", str(tmp_path / "missing.json")]) == 2
