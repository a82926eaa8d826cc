"""Built-in reward components. Each is a :class:`TrajectoryReward` with a documented meaning and limits."""

from __future__ import annotations

import contextlib
import json
import re
from functools import cache
from pathlib import Path

import yaml

from ..errors import ConfigError, PackError
from ..types import Trajectory
from .base import TrajectoryReward, agent_messages, agent_text

__all__ = ["EfficiencyReward", "LengthWindowReward", "LexiconReward", "OutcomeReward", "RepetitionPenalty",
           "ToolUseReward", "lexicon_path"]


class OutcomeReward(TrajectoryReward):
    """The environment's judgement (see docs/environments.md). ``field="progress"`` (default): the outcome's
    ``progress`` in [0, 1], partial credit for what the agent changed or obtained (0 for doing nothing, after a
    forbidden action or a false claim). ``field="success"``: 1.0 for a solved scenario, else 0.0 (the env's own
    reward). None when the episode produced no outcome."""

    def __init__(self, name: str = "outcome", field: str = "progress") -> None:
        if field not in ("progress", "success"):
            raise ConfigError(f"OutcomeReward field {field!r} is not one of 'progress', 'success'; use "
                              "progress for partial credit or success for 0/1")
        self.name = name
        self.field = field

    def score_one(self, t: Trajectory) -> float | None:
        if t.outcome is None:
            return None
        return float(t.outcome["success"]) if self.field == "success" else float(t.outcome["progress"])

    def explain(self, t: Trajectory, value: float | None) -> str:
        if t.outcome is None:
            return "no outcome"
        o = t.outcome
        return (f"success={o['success']} progress={o['progress']:.2f} goal={o['goal_reached']} "
                f"state={o['state_match']} facts={o['facts_score']:.2f} forbidden={o['forbidden_actions']}")


class ToolUseReward(TrajectoryReward):
    """Fraction of the agent's tool calls that worked: parsed, known tool, valid arguments, no tool error
    (read from the tool messages the env returned). None when the agent made no tool call."""

    def __init__(self, name: str = "tool_use") -> None:
        self.name = name

    def score_one(self, t: Trajectory) -> float | None:
        results = [m for m in t.messages if m.role == "tool"]
        if not results:
            return None
        ok = 0
        for m in results:
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                ok += bool(json.loads(m.content).get("ok"))
        return ok / len(results)


class EfficiencyReward(TrajectoryReward):
    """1.0 for an episode finished in one agent turn, falling linearly to 0.0 at ``max_turns`` turns:
    ``1 - (turns - 1) / (max_turns - 1)``. Counts agent messages. Rewards brevity whether or not the goal was
    reached, so give it a small weight next to the outcome."""

    def __init__(self, max_turns: int = 12, name: str = "efficiency") -> None:
        if max_turns < 2:
            raise ConfigError(f"max_turns={max_turns} must be >= 2")
        self.max_turns, self.name = max_turns, name

    def score_one(self, t: Trajectory) -> float | None:
        turns = len(agent_messages(t))
        if turns == 0:
            return None
        return max(0.0, 1.0 - (turns - 1) / (self.max_turns - 1))


class LengthWindowReward(TrajectoryReward):
    """Fraction of the agent's user-facing messages whose word count lies in [min_words, max_words].
    Messages that are only tool calls are not counted; None when there is no such message."""

    def __init__(self, min_words: int = 5, max_words: int = 80, name: str = "length_window") -> None:
        if not 0 <= min_words <= max_words:
            raise ConfigError(f"need 0 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
        self.min_words, self.max_words, self.name = min_words, max_words, name

    def score_one(self, t: Trajectory) -> float | None:
        from ..toolcalls import parse_message

        texts = [parse_message(m.content).text for m in agent_messages(t)]
        counts = [len(x.split()) for x in texts if x.strip()]
        if not counts:
            return None
        return sum(self.min_words <= c <= self.max_words for c in counts) / len(counts)


class RepetitionPenalty(TrajectoryReward):
    """Distinct word n-grams / all word n-grams over everything the agent said (1.0 = no repetition).
    None when the agent said fewer than ``n`` words."""

    def __init__(self, n: int = 3, name: str = "repetition") -> None:
        if n < 1:
            raise ConfigError(f"n={n} must be >= 1")
        self.n, self.name = n, name

    def score_one(self, t: Trajectory) -> float | None:
        words = re.findall(r"[\w']+", agent_text(t).lower())
        grams = [tuple(words[i:i + self.n]) for i in range(len(words) - self.n + 1)]
        if not grams:
            return None
        return len(set(grams)) / len(grams)


def lexicon_path(name: str) -> Path:
    from ..envs.pack import pack_root

    return pack_root("rewards") / "lexicons" / f"{name}.yaml"


@cache
def _load_lexicon(path: str) -> tuple[list[str], list[str], int]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PackError(f"{p}: cannot read lexicon: {e}", file=str(p)) from e
    if not isinstance(data, dict) or not isinstance(data.get("positive"), list):
        raise PackError(f"{p}: field 'positive': a lexicon needs a list of positive phrases", file=str(p),
                        field="positive")
    target = data.get("target", 2)
    if not isinstance(target, int) or target < 1:
        raise PackError(f"{p}: field 'target': must be an integer >= 1, got {target!r}", file=str(p), field="target")
    return [s.lower() for s in data["positive"]], [s.lower() for s in data.get("negative", [])], target


class LexiconReward(TrajectoryReward):
    """A HEURISTIC: counts phrases from a lexicon (``rewards/lexicons/NAME.yaml``: ``positive``, ``negative``,
    ``target``) in what the agent said. ``value = clip((positive hits - negative hits) / target, 0, 1)``.
    It measures vocabulary, not behaviour: saying "I understand" scores as empathy whatever follows. The
    built-in ones are named ``heuristic_empathy``, ``heuristic_professionalism`` and
    ``heuristic_action_orientation`` so no log mistakes them for a judgement."""

    def __init__(self, lexicon: str, *, name: str | None = None) -> None:
        path = Path(lexicon) if Path(lexicon).suffix in (".yaml", ".yml") else lexicon_path(lexicon)
        if not path.is_file():
            raise ConfigError(f"lexicon {lexicon!r} not found at {path}; built-in lexicons: empathy, "
                              "professionalism, action_orientation")
        self.positive, self.negative, self.target = _load_lexicon(str(path))
        self.name = name or f"heuristic_{path.stem}"

    def score_one(self, t: Trajectory) -> float | None:
        text = " ".join(agent_text(t).lower().split())
        if not text:
            return None
        pos = sum(text.count(p) for p in self.positive)
        neg = sum(text.count(p) for p in self.negative)
        return min(1.0, max(0.0, (pos - neg) / self.target))
