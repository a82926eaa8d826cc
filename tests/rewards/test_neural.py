"""NeuralReward: losses, replay buffer, online imitation, save/load, errors, and learning a real teacher."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections import defaultdict

import pytest
import torch

from stateset_agents.errors import ConfigError
from stateset_agents.rewards.base import TrajectoryReward
from stateset_agents.rewards.neural import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    NeuralReward,
    NeuralRewardConfig,
    ReplayBuffer,
    bradley_terry_loss,
    spearman,
)
from stateset_agents.types import Message, Trajectory, TrajectoryGroup


class HashEmbedder:
    """A bag-of-words embedder: each word a fixed random unit vector (seeded by its hash), summed, normalised."""

    dim = 16

    def __init__(self):
        self.calls = 0

    def _word(self, w):
        seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little")
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, texts):
        self.calls += 1
        rows = [sum((self._word(w) for w in t.lower().split()), torch.zeros(self.dim)) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


FILLER = ["the", "order", "a", "is", "please", "thanks", "and"]


def reply(goods: int, rng: random.Random, n: int = 8) -> str:
    """A reply with ``goods`` times the word 'refunded' among filler words: the toy signal is ``goods``."""
    words = ["refunded"] * goods + [rng.choice(FILLER) for _ in range(n - goods)]
    rng.shuffle(words)
    return " ".join(words)


def traj(text: str, sid: str = "s1", user: str = "I want my money back") -> Trajectory:
    return Trajectory(scenario_id=sid, messages=[Message(role="system", content="be kind"),
                                                 Message(role="user", content=user),
                                                 Message(role="assistant", content=text)])


def toy(n: int, seed: int) -> tuple[list[Trajectory], list[float]]:
    rng = random.Random(seed)
    goods = [rng.randrange(0, 6) for _ in range(n)]
    return [traj(reply(g, rng)) for g in goods], [float(g) for g in goods]


class GoodWords(TrajectoryReward):
    """A teacher: the number of 'refunded' words; None (not applicable) when the reply says 'skip'."""

    name = "good_words"

    def __init__(self):
        self.scored = 0

    def score_one(self, t):
        self.scored += 1
        text = t.messages[-1].content
        return None if "skip" in text.split() else float(text.split().count("refunded"))


def group(ts: list[Trajectory]) -> TrajectoryGroup:
    return TrajectoryGroup(scenario_id=ts[0].scenario_id, trajectories=ts)


def fast(**kw) -> NeuralReward:
    """A head for the clean toy signal: a small embedder and a lighter L2 penalty than the default."""
    return NeuralReward(embedder=HashEmbedder(), hidden_dim=32, **{"l2": 0.01, **kw})


# ---------------------------------------------------------------- spearman and the losses
def test_spearman_ranks_with_average_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]: Pearson = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([0.1, 5.0, 0.3], [1, 1000, 2]) == pytest.approx(1.0)  # monotone, not linear


@pytest.mark.parametrize(("a", "b", "message"), [
    ([1, 2, 3], [1, 2], "got 3 and 2 values"),
    ([1], [1], "at least 2 pairs, got 1"),
    ([1, 1, 1], [1, 2, 3], "all 3 values of the first sequence are equal"),
    ([1, 2, 3], [5, 5, 5], "all 3 values of the second sequence are equal"),
    ([1, float("nan")], [1, 2], "NaN or infinite"),
])
def test_spearman_errors(a, b, message):
    with pytest.raises(ConfigError, match=message):
        spearman(a, b)


def test_bradley_terry_loss():
    equal = bradley_terry_loss(torch.tensor([1.0, -2.0]), torch.tensor([1.0, -2.0]))
    assert float(equal) == pytest.approx(math.log(2))
    right = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([0.0]))
    wrong = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([3.0]))
    assert float(right) == pytest.approx(-math.log(1 / (1 + math.exp(-3))))
    assert float(right) < math.log(2) < float(wrong)


# ---------------------------------------------------------------- offline training
def test_features_layout():
    emb = HashEmbedder()
    t = traj("refunded thanks")
    x = NeuralReward(embedder=emb).features([t])[0]
    r, c = emb.encode(["refunded thanks", "I want my money back"])
    assert x.shape == (3 * 16 + 1,)
    assert torch.allclose(x[:16], r) and torch.allclose(x[16:32], c)
    assert torch.allclose(x[32:48], r * c * 4) and x[48] == pytest.approx(float(r @ c))
    assert torch.equal(NeuralReward(embedder=emb, use_context=False).features([t])[0], r)
    assert NeuralReward(embedder=emb).features([traj(""), t.model_copy(update={"error": "boom"})]) == [None, None]


def test_regression_fits_a_toy_signal():
    train, y = toy(120, seed=1)
    test, y_test = toy(60, seed=2)
    nr = fast()
    loss = nr.fit(train, y, epochs=60)
    assert loss < 0.3  # standardised MSE: 1.0 is what predicting the mean gets
    assert nr.evaluate(test, y_test) > 0.9
    preds = nr.predict(test)
    assert all(isinstance(p, float) for p in preds)
    assert abs(sum(preds) / len(preds) - sum(y_test) / len(y_test)) < 0.5  # in the targets' scale


def test_bradley_terry_learns_a_preference_order():
    rng = random.Random(3)
    pairs = []
    for _ in range(150):
        a, b = rng.sample(range(6), 2)
        better, worse = max(a, b), min(a, b)
        pairs.append((traj(reply(better, rng)), traj(reply(worse, rng))))
    nr = fast()
    first = nr.fit_preferences(pairs, epochs=1)
    last = nr.fit_preferences(pairs, epochs=60)
    assert last < first
    test, y_test = toy(60, seed=4)
    assert nr.evaluate(test, y_test) > 0.9
    held = [(traj(reply(5, rng)), traj(reply(0, rng))) for _ in range(20)]
    assert all(b > w for b, w in zip(nr.predict([b for b, _ in held]), nr.predict([w for _, w in held]), strict=True))


def test_training_is_seeded():
    train, y = toy(40, seed=5)
    a, b = fast(seed=7), fast(seed=7)
    a.fit(train, y, epochs=5)
    b.fit(train, y, epochs=5)
    assert a.predict(train) == b.predict(train)


# ---------------------------------------------------------------- replay buffer and online imitation
def test_replay_buffer_is_bounded_and_evicts_oldest_first():
    buf = ReplayBuffer(3)
    for i in range(5):
        buf.add(torch.full((2,), float(i)), i)
    assert len(buf) == 3 and buf.evicted == 2
    x, y = buf.tensors()
    assert y.tolist() == [2.0, 3.0, 4.0] and x[:, 0].tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(ConfigError, match="max_size=0 must be >= 1"):
        ReplayBuffer(0)


def test_holdout_split_is_deterministic_and_bounded():
    nr = fast(teacher=GoodWords(), mode="teacher", holdout_fraction=0.25, buffer_size=5, holdout_size=2)
    for i in range(12):
        nr.add_example(torch.zeros(3), float(i))
    # every 4th example is held out; both stores keep only the newest
    assert nr.holdout.targets() == [7.0, 11.0]
    assert nr.buffer.targets() == [5.0, 6.0, 8.0, 9.0, 10.0]
    assert nr.stats.evicted == 5


async def test_update_every_triggers_training():
    teacher = GoodWords()
    nr = fast(teacher=teacher, mode="teacher", update_every=6, steps_per_update=5, holdout_fraction=0.0)
    train, _ = toy(12, seed=6)
    first = await nr.score(group(train[:4]))
    assert nr.stats.updates == 0 and not nr.trained
    assert [r.components for r in first] == [{"teacher": r.value, "neural": None} for r in first]
    assert [r.value for r in first] == [float(t.messages[-1].content.split().count("refunded")) for t in train[:4]]
    await nr.score(group(train[4:8]))  # 8 new examples >= 6: one update
    s = nr.stats
    assert (s.updates, s.gradient_steps, s.buffer_size, s.teacher_examples) == (1, 5, 8, 8) and nr.trained
    third = await nr.score(group(train[8:12]))  # 4 more since the update: below 6, no update
    assert nr.stats.updates == 1
    assert all(isinstance(r.components["neural"], float) for r in third)
    assert all(r.value == r.components["teacher"] for r in third)
    assert teacher.scored == 12


async def test_teacher_none_results_are_never_targets():
    teacher = GoodWords()
    nr = fast(teacher=teacher, mode="teacher", update_every=100, holdout_fraction=0.0)
    ts = [traj("refunded skip"), traj("refunded refunded"), traj(""),
          traj("refunded", sid="s1").model_copy(update={"error": "model crashed"})]
    results = await nr.score(group(ts))
    assert results[0].value is None and results[0].components == {"teacher": None, "neural": None}
    assert results[1].value == 2.0
    assert results[2].value == 0.0  # the teacher scored it, but with no agent text it cannot be an example
    assert results[3].value is None and results[3].error == "trajectory failed: model crashed"
    assert nr.buffer.targets() == [2.0]
    s = nr.stats
    assert (s.teacher_examples, s.teacher_none, s.skipped) == (1, 2, 1)


async def test_auto_mode_stands_in_once_the_held_out_spearman_is_reached():
    teacher = GoodWords()
    nr = fast(teacher=teacher, update_every=20, steps_per_update=40, holdout_fraction=0.25, min_holdout=10,
              stand_in_spearman=0.8)
    assert nr.mode == "auto" and not nr.standing_in
    rng = random.Random(8)
    calls = 0
    while not nr.standing_in:
        await nr.score(group([traj(reply(rng.randrange(6), rng)) for _ in range(10)]))
        calls += 10
        assert calls <= 400, nr.report()
    assert nr.stats.holdout_spearman >= 0.8 and nr.stats.holdout_size >= 10
    before = teacher.scored
    results = await nr.score(group([traj(reply(5, rng)), traj(reply(0, rng)), traj("")]))
    assert teacher.scored == before  # the head stood in: no teacher call
    assert list(results[0].components) == ["neural"] and results[0].value == results[0].components["neural"]
    assert results[0].value > results[1].value
    assert "standing in for teacher 'good_words'" in results[0].explanation
    assert results[2].value is None
    assert "scoring with the head (standing in)" in nr.report()
    nr.mode = "teacher"  # back to the teacher
    await nr.score(group([traj(reply(1, rng))]))
    assert teacher.scored == before + 1


async def test_neural_mode_needs_a_trained_head():
    nr = fast()
    assert nr.mode == "neural" and nr.standing_in
    with pytest.raises(ConfigError, match="untrained head; call fit"):
        await nr.score(group([traj("refunded")]))
    train, y = toy(30, seed=9)
    nr.fit(train, y, epochs=3)
    failed = traj("refunded").model_copy(update={"error": "boom"})
    results = await nr.score(group([train[0], failed]))
    assert results[0].components == {"neural": results[0].value}
    assert results[1].value is None and results[1].error == "trajectory failed: boom"


# ---------------------------------------------------------------- save and load
def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    train, y = toy(40, seed=10)
    emb = HashEmbedder()
    nr = NeuralReward(embedder=emb, hidden_dim=8, l2=0.01)
    nr.fit(train, y, epochs=5)
    folder = nr.save(tmp_path / "head")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    record = json.loads((folder / CONFIG_FILE).read_text())
    assert record["config"]["hidden_dim"] == 8 and record["config"]["l2"] == 0.01
    assert (record["encoder"], record["embed_dim"], record["input_dim"]) == ("custom:HashEmbedder", 16, 49)
    with pytest.raises(ConfigError, match=r"saved with a custom embedder \(HashEmbedder\); pass it as embedder="):
        NeuralReward.load(folder)
    loaded = NeuralReward.load(folder, embedder=emb)
    assert loaded.predict(train) == nr.predict(train)
    assert loaded.config == nr.config and loaded.mode == "neural" and loaded.trained


def test_save_load_with_the_default_encoder(tmp_path):
    train, y = toy(20, seed=11)
    nr = NeuralReward(hidden_dim=8)
    nr.fit(train, y, epochs=3)
    nr.save(tmp_path)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["encoder"] == "default"
    loaded = NeuralReward.load(tmp_path, teacher=GoodWords())
    assert loaded.predict(train) == nr.predict(train)
    assert loaded.mode == "auto" and not loaded.standing_in  # an empty held-out slice: it asks the teacher again


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    train, y = toy(20, seed=12)
    nr = fast()
    nr.fit(train, y, epochs=2)
    nr.save(tmp_path)
    nr.fit(train, y, epochs=2)
    nr.save(tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    nr.fit(train, y, epochs=2)
    with pytest.raises(OSError, match="disk full"):
        nr.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old save intact, no temp file


def test_load_errors_name_the_file(tmp_path):
    emb = HashEmbedder()
    train, y = toy(20, seed=13)
    nr = NeuralReward(embedder=emb, hidden_dim=8)
    nr.fit(train, y, epochs=2)
    with pytest.raises(ConfigError, match="is not a folder"):
        NeuralReward.load(tmp_path / "nowhere", embedder=emb)
    nr.save(tmp_path)
    cfg, weights = tmp_path / CONFIG_FILE, tmp_path / WEIGHTS_FILE
    good_cfg, good_weights = cfg.read_bytes(), weights.read_bytes()

    weights.write_bytes(good_weights[:-10])
    with pytest.raises(ConfigError, match=f"{WEIGHTS_FILE} does not match {CONFIG_FILE}"):
        NeuralReward.load(tmp_path, embedder=emb)
    weights.unlink()
    with pytest.raises(ConfigError, match=f"{WEIGHTS_FILE} is missing"):
        NeuralReward.load(tmp_path, embedder=emb)
    weights.write_bytes(good_weights)

    cfg.write_text("{not json")
    with pytest.raises(ConfigError, match=f"{CONFIG_FILE} is corrupt"):
        NeuralReward.load(tmp_path, embedder=emb)
    cfg.unlink()
    with pytest.raises(ConfigError, match=f"{CONFIG_FILE} is missing"):
        NeuralReward.load(tmp_path, embedder=emb)

    record = json.loads(good_cfg)
    record["config"]["hidden_dimm"] = 3
    cfg.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"{CONFIG_FILE} has a bad 'config': unknown field 'hidden_dimm': remove it"):
        NeuralReward.load(tmp_path, embedder=emb)
    cfg.write_bytes(good_cfg)

    class Wide(HashEmbedder):
        dim = 32

    with pytest.raises(ConfigError, match="trained on 16-dimensional embeddings but the embedder gives 32"):
        NeuralReward.load(tmp_path, embedder=Wide())
    assert NeuralReward.load(tmp_path, embedder=emb).predict(train) == nr.predict(train)


# ---------------------------------------------------------------- bad input
def test_bad_input_errors():
    train, y = toy(10, seed=14)
    nr = fast()
    with pytest.raises(ConfigError, match="fit got 10 trajectories but 9 scores; pass one score per trajectory"):
        nr.fit(train, y[:9])
    with pytest.raises(ConfigError, match="fit got no trajectories"):
        nr.fit([], [])
    with pytest.raises(ConfigError, match=r"scores\[2\] = nan is not a finite number"):
        nr.fit(train, y[:2] + [float("nan")] + y[3:])
    with pytest.raises(ConfigError, match=r"scores\[0\] = None"):
        nr.fit(train[:1], [None])
    with pytest.raises(ConfigError, match=r"fit: trajectories\[1\] \(scenario 's1'\) has no agent text .* said nothing"):
        nr.fit([train[0], traj("   ")], [1.0, 2.0])
    with pytest.raises(ConfigError, match="epochs=0 must be an integer >= 1"):
        nr.fit(train, y, epochs=0)
    with pytest.raises(ConfigError, match="untrained head"):
        nr.predict(train)
    with pytest.raises(ConfigError, match="nothing to save"):
        nr.save("unused")
    with pytest.raises(ConfigError, match="fit_preferences got no pairs"):
        nr.fit_preferences([])
    with pytest.raises(ConfigError, match=r"pairs\[0\] is tuple of length 3"):
        nr.fit_preferences([(train[0], train[1], train[2])])
    nr.fit(train, y, epochs=2)
    with pytest.raises(ConfigError, match="evaluate got 10 trajectories but 3 scores"):
        nr.evaluate(train, y[:3])
    with pytest.raises(ConfigError, match="all 10 values of the second sequence are equal"):
        nr.evaluate(train, [1.0] * 10)
    with pytest.raises(ConfigError, match="the replay buffer is empty"):
        nr.update()


def test_config_errors():
    with pytest.raises(ConfigError, match="mode 'auto' calls a teacher, but none was given"):
        fast(mode="auto")
    with pytest.raises(ConfigError, match="mode 'judge' is not one of"):
        fast(teacher=GoodWords(), mode="judge")
    with pytest.raises(ConfigError, match="holdout_fraction=0; set holdout_fraction > 0 or use mode='teacher'"):
        fast(teacher=GoodWords(), holdout_fraction=0.0)
    with pytest.raises(ConfigError, match=r"bad NeuralReward config: unknown field 'update_evry': remove it or check its spelling"):
        fast(update_evry=3)
    with pytest.raises(ConfigError, match=r"field 'update_every': Input should be greater than or equal to 1 \(got 0\)"):
        fast(update_every=0)
    with pytest.raises(ConfigError, match=r"pass either config= or config fields \['l2'\]"):
        NeuralReward(config=NeuralRewardConfig(), l2=0.0)
    with pytest.raises(ConfigError, match="pass either embedder= or encoder="):
        NeuralReward(embedder=HashEmbedder(), encoder="/some/folder")
    with pytest.raises(ConfigError, match="is not a RewardFunction"):
        NeuralReward(teacher=lambda g: g)

    class Short(GoodWords):
        async def score(self, group):
            return (await super().score(group))[:-1]

    nr = fast(teacher=Short(), mode="teacher")
    with pytest.raises(ConfigError, match="teacher 'good_words' returned 1 results for a group of 2"):
        asyncio.run(nr.score(group([traj("a"), traj("b")])))


# ---------------------------------------------------------------- learning a real teacher on real replies
PACKS = ["customer_service", "tech_support", "sales"]
TEMPERATURES = [0.3, 1.0, 1.6]


async def generate_replies(model) -> list[Trajectory]:
    """One SmolLM2 reply to every opening of every scenario of the built-in packs, all requests at once."""
    from stateset_agents.envs import load_pack
    from stateset_agents.models.base import SamplingParams

    jobs = []
    for name in PACKS:
        pack = load_pack(name)
        system = pack.system_prompt.splitlines()[0]
        # The scenarios this test was measured on (228 replies): customer_service's train scenarios 055-078, added
        # later, are left out so that adding scenarios to a pack does not silently change this test's data.
        jobs += [(s.id, system, opening) for s in pack.scenarios for opening in s.user.opening
                 if not (name == "customer_service" and int(s.id.rsplit("-", 1)[1]) >= 55)]

    async def one(i, sid, system, opening):
        messages = [Message(role="system", content=system), Message(role="user", content=opening)]
        sampling = SamplingParams(temperature=TEMPERATURES[i % 3], max_new_tokens=24, seed=i)
        completion = await model.chat(messages, sampling=sampling)
        return Trajectory(scenario_id=sid, messages=[*messages, Message(role="assistant", content=completion.text)],
                          completions=[completion])

    return list(await asyncio.gather(*[one(i, *job) for i, job in enumerate(jobs)]))


async def teacher_scores(teacher, trajectories):
    by_scenario = defaultdict(list)
    for t in trajectories:
        by_scenario[t.scenario_id].append(t)
    scored = []
    for sid, ts in by_scenario.items():
        results = await teacher.score(TrajectoryGroup(scenario_id=sid, trajectories=ts))
        scored += [(t, r.value) for t, r in zip(ts, results, strict=True) if r.value is not None]
    return scored


@pytest.mark.slow
async def test_learns_reference_similarity_of_real_smollm2_replies():
    """A NeuralReward trained on what ReferenceSimilarity (the real teacher) says about real SmolLM2 replies ranks
    the replies to held-out scenarios like the teacher does: held-out Spearman >= 0.8.

    Data: SmolLM2-135M-Instruct (``default_model()``) answers the opening message of every scenario of the three
    built-in packs once (228 replies, 24 new tokens each, all requests issued together so the engine batches them).
    The system prompt is the first line of the pack's system prompt ("You are a ... agent for ..."), to keep the
    prompts short on a 2-core CPU. Temperatures cycle through 0.3, 1.0 and 1.6 so the replies range from on-topic
    to rambling: at 1.0 alone the teacher's scores bunch in a narrow band. No reference texts or mismatched
    replies are mixed in. Trajectories the teacher calls not applicable (empty replies) are dropped.

    Split: 30% of the scenario ids (fixed seed) are held out, so every held-out reply answers a request the head
    never saw. The figure is printed (run with ``-s``), with the zero-parameter baseline cos(reply, request).
    """
    from stateset_agents.models import default_model
    from stateset_agents.rewards.embeddings import default_embedder
    from stateset_agents.rewards.similarity import ReferenceSimilarity

    model = default_model(max_batch_size=256)
    try:
        trajectories = await generate_replies(model)
    finally:
        model.close()
    scored = await teacher_scores(ReferenceSimilarity(packs=PACKS), trajectories)
    ids = sorted({t.scenario_id for t, _ in scored})
    random.Random(0).shuffle(ids)
    held = set(ids[:len(ids) * 3 // 10])
    train = [(t, v) for t, v in scored if t.scenario_id not in held]
    test = [(t, v) for t, v in scored if t.scenario_id in held]
    assert len(train) >= 120 and len(test) >= 50

    nr = NeuralReward()
    nr.fit([t for t, _ in train], [v for _, v in train])
    rho = nr.evaluate([t for t, _ in test], [v for _, v in test])

    emb = default_embedder()
    cosines = [float(emb.encode([t.messages[-1].content])[0] @ emb.encode([t.messages[1].content])[0])
               for t, _ in test]
    baseline = spearman(cosines, [v for _, v in test])
    print(f"\nheld-out Spearman {rho:.3f} on {len(test)} replies ({len(train)} for training); "
          f"baseline cos(reply, request) {baseline:.3f}")
    assert rho >= 0.8
