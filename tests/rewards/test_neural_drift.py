"""NeuralReward ``auto`` mode keeps checking the head against the teacher while it stands in (issue 14, finding 10):
a fraction of groups is audited, and when the head's ranking drifts from the teacher's it falls back."""

from __future__ import annotations

import random

import pytest

from stateset_agents.errors import ConfigError
from stateset_agents.rewards.base import TrajectoryReward
from tests.rewards.test_neural import fast, group, reply, traj


class Teacher(TrajectoryReward):
    """Counts one word in the reply; ``word`` can change mid-run (the teacher's judgement drifts from what the
    head learned, as when the policy's replies move to where the head never saw examples)."""

    name = "word_count"

    def __init__(self, word: str = "refunded"):
        self.word, self.scored = word, 0

    def score_one(self, t):
        self.scored += 1
        return float(t.messages[-1].content.split().count(self.word))


def mixed(rng: random.Random, n: int = 10):
    """Replies with 0-5 'refunded' and, independently, 0-3 'thanks' among filler words."""
    out = []
    for _ in range(n):
        words = reply(rng.randrange(6), rng).split()
        k = rng.randrange(4)
        words = [w for w in words if w != "thanks"] + ["thanks"] * k
        rng.shuffle(words)
        out.append(traj(" ".join(words)))
    return out


async def standing_in(audit_fraction=0.1, **kw):
    teacher = Teacher()
    nr = fast(teacher=teacher, update_every=20, steps_per_update=40, holdout_fraction=0.25, min_holdout=10,
              stand_in_spearman=0.8, audit_fraction=audit_fraction, **kw)
    rng = random.Random(8)
    for _ in range(40):
        if nr.standing_in:
            return nr, teacher, rng
        await nr.score(group(mixed(rng)))
    raise AssertionError(nr.report())


async def test_standing_in_audits_a_fraction_of_groups_with_the_teacher():
    nr, teacher, rng = await standing_in(audit_fraction=0.1)
    before, audits = teacher.scored, nr.stats.audits
    results = [await nr.score(group(mixed(rng))) for _ in range(20)]
    assert nr.stats.audits - audits == 2 and teacher.scored - before == 20  # groups 10 and 20, 10 episodes each
    audited = [r for r in results if "teacher" in r[0].components]
    assert len(audited) == 2
    for res in audited:  # an audited group gets the teacher's values, with the head's prediction beside them
        assert all(r.value == r.components["teacher"] and isinstance(r.components["neural"], float) for r in res)
    assert all(list(r[0].components) == ["neural"] for r in results if r not in audited)
    assert nr.standing_in and nr.stats.audit_spearman >= 0.8 and nr.stats.fallbacks == 0


async def test_the_head_falls_back_to_the_teacher_when_it_drifts():
    nr, teacher, rng = await standing_in(audit_fraction=0.2)
    teacher.word = "thanks"  # what the teacher rewards is no longer what the head ranks by
    for _ in range(10):
        await nr.score(group(mixed(rng)))
        if not nr.standing_in:
            break
    s = nr.stats
    assert not nr.standing_in and s.fallbacks == 1 and s.audit_spearman < 0.8, nr.report()
    assert s.holdout_size == 0 and s.holdout_spearman is None  # re-qualifying needs fresh held-out examples
    assert "fell back to the teacher" in nr.report()
    before = teacher.scored
    results = await nr.score(group(mixed(rng)))
    assert teacher.scored == before + 10 and all("teacher" in r.components for r in results)


async def test_no_audits_keeps_the_old_behaviour():
    nr, teacher, rng = await standing_in(audit_fraction=0.0)
    before = teacher.scored
    for _ in range(20):
        await nr.score(group(mixed(rng)))
    assert teacher.scored == before and nr.stats.audits == 0


def test_audit_fraction_is_checked():
    with pytest.raises(ConfigError, match=r"field 'audit_fraction': Input should be less than or equal to 1 \(got 1.5\)"):
        fast(teacher=Teacher(), audit_fraction=1.5)


async def test_a_policy_that_games_the_standing_in_head_is_caught():
    """The adversary: once the head stands in, reply with words it never saw, keeping the 10 of 100 candidates
    it scores highest. The head gives them about 3.5 (the teacher's scale: 0-5 'refunded'), the teacher 0 each;
    with all-equal teacher values the Spearman is undefined, so the error check is what falls back."""
    nr, teacher, rng = await standing_in(audit_fraction=0.2)
    gamed = []
    for _ in range(10):
        candidates = [traj(" ".join(f"w{rng.randrange(10**6)}" for _ in range(8))) for _ in range(100)]
        best = [c for _, c in sorted(zip(nr.predict(candidates), candidates, strict=True), key=lambda x: -x[0])]
        results = await nr.score(group(best[:10]))
        gamed += [r.value for r in results if "teacher" not in r.components]
        if not nr.standing_in:
            break
    assert not nr.standing_in and nr.stats.fallbacks == 1, nr.report()
    assert nr.stats.audit_spearman is None and nr.stats.audit_error > 1.0
    assert min(gamed) > 1.0  # what the head paid the adversary before the audit caught it
    results = await nr.score(group(best[10:20]))
    assert [r.value for r in results] == [0.0] * 10  # the teacher again
