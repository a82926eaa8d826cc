"""What a valid answer of the Training-Free learner is: the pydantic models of its JSON answers, the library's rules
for proposed operations (:func:`check_ops`), and the decoding constraint of a comparison narrowed to the library
(:func:`group_schema`). Used by :mod:`.semantic_advantage`, which asks the learner."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..agents.experience import word_count
from ..errors import validation_error_text

__all__ = ["BatchAnswer", "ConsolidatedOp", "GroupAnswer", "LearnerFailed", "LearnerOutputError", "ProposedOp",
           "SummaryAnswer", "check_ops", "extract_json", "group_schema", "validate_answer"]


class LearnerOutputError(ValueError):
    """The learner's answer is not valid; the message is what the learner is told on the retry."""


class LearnerFailed(RuntimeError):
    """The learner gave no valid answer within its retries."""

    def __init__(self, stage: str, errors: list[str]) -> None:
        super().__init__(f"{stage}: no valid answer after {len(errors)} attempt(s); last error: {errors[-1]}")
        self.stage, self.errors = stage, errors


# ------------------------------------------------------------ answer schemas
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Length bounds: what a useful answer needs, and what keeps a constrained small learner from writing one string
# until its token budget runs out (the schemas of these models are the decoding constraint).
class SummaryAnswer(_Answer):
    summary: str = Field(min_length=1, max_length=600)


class ProposedOp(_Answer):
    op: Literal["ADD", "MODIFY", "DELETE", "KEEP"]
    id: str | None = Field(default=None, max_length=40)
    text: str | None = Field(default=None, max_length=400)
    reason: str = Field(default="", max_length=300)

    @field_validator("op", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v


class GroupAnswer(_Answer):
    advantage: str = Field(min_length=1, max_length=600)
    operations: list[ProposedOp] = Field(max_length=8)


class ConsolidatedOp(ProposedOp):
    sources: list[str] = Field(min_length=1)


class BatchAnswer(_Answer):
    operations: list[ConsolidatedOp] = Field(max_length=32)


def group_schema(known_ids: Sequence[str], *, max_ops: int | None, word_limit: int) -> dict[str, Any]:
    """The decoding constraint of one comparison: :class:`GroupAnswer` narrowed to what :func:`check_ops` accepts
    for this library (an empty library: ADD only; MODIFY, DELETE and KEEP name one of ``known_ids``), at most
    ``max_ops`` operations, texts of 3 to ``word_limit`` words, and strings short enough (words of at most 10
    characters) that a small learner's token budget closes the document. Anything it allows still goes through the same
    validation."""
    # a sentence: 3 to word_limit words of at most 10 characters (single spaces), the first starting with a letter
    # (not "..." or "A1"): a length the budget can afford. (A pattern and maxLength together are more than
    # llguidance can check for emptiness, so the pattern bounds the length itself.)
    text = {"type": "string",
            "pattern": rf"^[A-Za-z][^\s]{{0,9}}( [^\s]{{1,10}}){{{min(2, word_limit - 1)},{max(word_limit - 1, 0)}}}$"}
    reason = {"type": "string", "maxLength": 120}

    def op(name: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {"op": {"const": name}, **fields, "reason": reason},
                "required": ["op", *fields], "additionalProperties": False}

    variants = [op("ADD", {"text": text})]
    if known_ids:
        ident = {"enum": list(known_ids)}
        variants += [op("MODIFY", {"id": ident, "text": text}), op("DELETE", {"id": ident}), op("KEEP", {"id": ident})]
    ops: dict[str, Any] = {"type": "array", "items": {"anyOf": variants}}
    if max_ops is not None:
        ops["maxItems"] = max_ops
    return {"type": "object", "properties": {"advantage": {"type": "string", "minLength": 1, "maxLength": 200},
                                             "operations": ops},
            "required": ["advantage", "operations"], "additionalProperties": False}


def extract_json(text: str) -> Any:
    """The JSON object in a model's answer (code fences and text around the outermost braces are ignored)."""
    body = re.sub(r"```(?:json)?", "", text)
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise LearnerOutputError("the answer contains no JSON object; answer with one JSON object only")
    try:
        return json.loads(body[start:end + 1])
    except json.JSONDecodeError as e:
        raise LearnerOutputError(f"the answer is not valid JSON: {e.msg} at character {e.pos}") from e


def validate_answer(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise LearnerOutputError(validation_error_text(e, limit=5)) from e


def check_ops(ops: Sequence[ProposedOp], *, known_ids: Sequence[str], word_limit: int,
              max_ops: int | None = None, sources: Sequence[str] | None = None) -> None:
    """The library's rules for proposed operations; raises LearnerOutputError listing every problem."""
    problems = []
    if max_ops is not None and len(ops) > max_ops:
        problems.append(f"{len(ops)} operations, at most {max_ops} allowed")
    known = ", ".join(known_ids) or "none (the library is empty: only ADD is possible)"
    for i, op in enumerate(ops):
        where = f"operations[{i}] ({op.op})"
        if op.op in ("ADD", "MODIFY"):
            if not op.text or not op.text.strip():
                problems.append(f"{where} needs a non-empty text")
            elif word_count(op.text) > word_limit:
                problems.append(f"{where} text has {word_count(op.text)} words; at most {word_limit}")
        if op.op == "ADD" and op.id is not None:
            problems.append(f"{where} takes no id (ids are given by the library)")
        if op.op in ("MODIFY", "DELETE") and op.id not in known_ids:
            problems.append(f"{where} needs the id of an existing experience, got {op.id!r}; known ids: {known}")
        if op.op == "KEEP" and op.id is not None and op.id not in known_ids:
            problems.append(f"{where} id {op.id!r} is not an existing experience; known ids: {known}")
        if sources is not None and isinstance(op, ConsolidatedOp):
            bad = [s for s in op.sources if s not in sources]
            if bad:
                problems.append(f"{where} cites unknown proposals {bad}; the proposals are {', '.join(sources)}")
    if problems:
        raise LearnerOutputError("; ".join(problems))
