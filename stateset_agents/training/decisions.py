"""The decision tokens of an agent turn, which SFT can weight above the rest (``SFTConfig.decision_weight``).

Most of a demonstrated turn is easy to predict once its decisions are made (the JSON of a call's arguments, copied
ids, the wording of a reply), so under a plain per-token mean the few tokens that make the decisions carry a small
share of the gradient. Two decisions are marked here:

- the **kind** of the turn: its first token (a message, or the opening of a tool call);
- the **tool**: the tokens of each called tool's name in ``<tool_call>{"name": "NAME"``.

Offsets come from decoding the turn's own tokens, so any tokenizer works; a name split across tokens marks every
token that overlaps it.

With ``tool_balance`` (``SFTConfig.tool_balance``, beta in [0, 1]) a tool's name tokens are weighted by
``(mean calls per tool / calls of this tool) ** beta`` on top of ``decision_weight``: demonstrations call a few tools
far more often than the rest (``lookup_order`` 22 times as often as ``unlock_account`` in the customer_service train
split), and a model that has not learnt the mapping falls back on the frequent ones; beta = 1 gives every tool the
same total weight (a class-balanced loss), 0 leaves the counts as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .batch import Sample

__all__ = ["TOOL_NAME_RE", "decision_mask", "decision_tools", "mark_decisions"]

TOOL_NAME_RE = re.compile(r'<tool_call>\s*\{\s*"name"\s*:\s*"([^"]*)"')
"""The called tool's name (group 1) in the documented ``<tool_call>{"name": ...`` form (toolcalls.format_tool_call)."""


def decision_tools(tokenizer: Any, completion: Sequence[int]) -> list[str | bool]:
    """For each token of one agent turn's completion: the tool's name where the token is part of a called tool's
    name, True for the turn's first token (its kind), False otherwise."""
    ids = list(completion)
    if not ids:
        return []
    ends = [len(tokenizer.decode(ids[:j + 1])) for j in range(len(ids))]  # character end of each token
    text = tokenizer.decode(ids)
    out: list[str | bool] = [False] * len(ids)
    out[0] = True
    for m in TOOL_NAME_RE.finditer(text):
        a, b = m.span(1)
        start = 0
        for j, end in enumerate(ends):
            if end > a and start < b:  # the token's characters [start, end) overlap the name's
                out[j] = m.group(1)
            start = end
    return out


def decision_mask(tokenizer: Any, completion: Sequence[int]) -> list[bool]:
    """For each token of one agent turn's completion, whether it makes a decision (see the module docs)."""
    return [x is not False for x in decision_tools(tokenizer, completion)]


def mark_decisions(samples: Sequence[Sample], tokenizer: Any, weight: float = 1.0, tool_balance: float = 0.0) -> None:
    """Store each sample's decision mask over its loss tokens (in loss-token order) in ``extra["decision"]`` and
    each loss token's weight in ``extra["loss_weight"]``: 1, ``weight`` for a kind token, ``weight`` times the tool's
    balance factor for a name token (see the module docs)."""
    per_sample = []
    calls: dict[str, int] = {}
    for s in samples:
        marks: list[str | bool] = []
        for a, b in s.loss_spans():
            turn = decision_tools(tokenizer, s.input_ids[a:b])
            marks.extend(turn)
            for name, prev in zip(turn, [False, *turn[:-1]], strict=True):
                if isinstance(name, str) and name != prev:  # the first token of a name: one call
                    calls[name] = calls.get(name, 0) + 1
        per_sample.append(marks)
    mean = sum(calls.values()) / max(1, len(calls))
    factor = {t: (mean / n) ** tool_balance for t, n in calls.items()}
    for s, marks in zip(samples, per_sample, strict=True):
        s.extra["decision"] = [m is not False for m in marks]
        s.extra["loss_weight"] = [1.0 if m is False else weight * (factor[m] if isinstance(m, str) else 1.0)
                                  for m in marks]
