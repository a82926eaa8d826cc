"""The decision tokens of an agent turn, which SFT can weight above the rest (``SFTConfig.decision_weight``).

Most of a demonstrated turn is easy to predict once its decisions are made (the JSON of a call's arguments, copied
ids, the wording of a reply), so under a plain per-token mean the few tokens that make the decisions carry a small
share of the gradient. Two decisions are marked here:

- the **kind** of the turn: its first token (a message, or the opening of a tool call);
- the **tool**: the tokens of each called tool's name in ``<tool_call>{"name": "NAME"``.

Offsets come from decoding the turn's own tokens, so any tokenizer works; a name split across tokens marks every
token that overlaps it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .batch import Sample

__all__ = ["decision_mask", "mark_decisions"]

_NAME = re.compile(r'<tool_call>\s*\{\s*"name"\s*:\s*"([^"]*)"')


def decision_mask(tokenizer: Any, completion: Sequence[int]) -> list[bool]:
    """For each token of one agent turn's completion, whether it makes a decision (see the module docs)."""
    ids = list(completion)
    if not ids:
        return []
    ends = [len(tokenizer.decode(ids[:j + 1])) for j in range(len(ids))]  # character end of each token
    text = tokenizer.decode(ids)
    mask = [False] * len(ids)
    mask[0] = True
    for m in _NAME.finditer(text):
        a, b = m.span(1)
        start = 0
        for j, end in enumerate(ends):
            if end > a and start < b:  # the token's characters [start, end) overlap the name's
                mask[j] = True
            start = end
    return mask


def mark_decisions(samples: Sequence[Sample], tokenizer: Any) -> None:
    """Store each sample's decision mask over its loss tokens (in loss-token order) in ``extra["decision"]``."""
    for s in samples:
        flags: list[bool] = []
        for a, b in s.loss_spans():
            flags.extend(decision_mask(tokenizer, s.input_ids[a:b]))
        s.extra["decision"] = flags
