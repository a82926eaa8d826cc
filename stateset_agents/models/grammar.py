"""JSON-schema constrained decoding for the batching engine, with llguidance.

A request whose ``SamplingParams.json_schema`` is set gets a grammar matcher. Before each of its tokens is
sampled, the matcher's allowed-token mask is applied to that row's logits (disallowed tokens get ``-inf``), so
the row samples only tokens that keep the text a prefix of some JSON document valid under the schema; once the
document is complete the matcher stops and the engine ends the completion (``finish_reason="stop"``, no EOS
token). If ``max_new_tokens`` runs out first the text is an unfinished document (``finish_reason="length"``):
raise ``max_new_tokens`` or simplify the schema. The reported log-probs are under the masked distribution: that
is the distribution the tokens were sampled from.

Why llguidance (``benchmarks/grammar_cost.py``, results in benchmarks/RESULTS.md): its mask costs about
0.01-0.07 ms a token here against a 60-100 ms decode step, it has no dependencies of its own, and it reads a
transformers fast tokenizer directly. xgrammar was faster still per token but pulls in triton; lm-format-enforcer
does not import with transformers 5.

Supported schema keywords are llguidance's (type, properties, required, additionalProperties, items, enum, const,
anyOf, minimum/maximum, minLength/maxLength, pattern, ...). A schema it cannot compile is refused with
:class:`ConfigError` before the request is queued.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["COMPACT_JSON", "GrammarCompiler", "JsonConstraint"]

COMPACT_JSON = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
"""llguidance's layout options applied unless the schema's own ``x-guidance`` overrides them: one fixed space
after ``:`` and ``,`` and no other whitespace, so a small model cannot spend its token budget on newlines and
tabs between fields (JSON parsers accept either layout)."""


class JsonConstraint:
    """One request's grammar state (a JSON schema's or a Lark grammar's): ``mask(logits_row)`` before sampling,
    ``advance(token)`` after."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size

    def _bits(self) -> np.ndarray:
        words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(words, bitorder="little")[: self.vocab_size].astype(bool)

    def allowed(self) -> torch.Tensor:
        """Boolean mask over the vocabulary of the tokens the grammar allows next."""
        return torch.from_numpy(self._bits())

    def mask(self, logits: torch.Tensor) -> None:
        """Set every token the grammar does not allow next to ``-inf``, in place (one row of logits)."""
        bits = self._bits()
        if logits.device.type == "cpu" and logits.is_contiguous():
            # numpy on one thread: a 50k-wide torch op would wake the intra-op thread pool for microseconds of
            # work, which costs tens of milliseconds when the cores are busy (measured: benchmarks/grammar_cost.py)
            row = logits.numpy()
            row[: self.vocab_size][~bits] = -np.inf
            row[self.vocab_size:] = -np.inf  # the model's head may be wider than the tokenizer's vocabulary
            return
        logits[: self.vocab_size].masked_fill_(~torch.from_numpy(bits).to(logits.device), float("-inf"))
        logits[self.vocab_size:] = float("-inf")

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"grammar rejected sampled token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The document is complete: no further token is allowed."""
        return bool(self.matcher.is_stopped())


class GrammarCompiler:
    """Builds :class:`JsonConstraint` objects for one tokenizer (the llguidance tokenizer is made once, lazily)."""

    def __init__(self, tokenizer: Any, *, vocab_size: int, eos_token_ids: list[int]) -> None:
        self._hf = tokenizer
        self._vocab = vocab_size
        self._eos = list(eos_token_ids)
        self._lltok: Any = None
        self._lock = threading.Lock()
        self._grammars: dict[str, str] = {}

    def _tokenizer(self) -> Any:
        with self._lock:
            if self._lltok is None:
                try:
                    import llguidance.hf
                except ImportError as e:  # a dependency of the package: only a broken install lacks it
                    raise ConfigError("constrained decoding (json_schema) needs the llguidance package: "
                                      "pip install llguidance") from e
                n = min(self._vocab, len(self._hf))
                self._lltok = llguidance.hf.from_tokenizer(self._hf, n_vocab=n, eos_token=self._eos or None)
            return self._lltok

    def constraint(self, schema: dict[str, Any]) -> JsonConstraint:
        """A fresh matcher for ``schema``; :class:`ConfigError` naming the problem if it does not compile."""
        import llguidance

        lltok = self._tokenizer()
        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                grammar = llguidance.LLMatcher.grammar_from_json_schema({**schema, "x-guidance": {
                    **COMPACT_JSON, **schema.get("x-guidance", {})}})
            except Exception as e:  # llguidance raises ValueError/RuntimeError subclasses for bad schemas
                raise ConfigError(f"json_schema cannot be compiled: {e}; pass a JSON schema object "
                                  "(type, properties, required, ...)") from e
            err = llguidance.LLMatcher.validate_grammar(grammar, lltok)
            if err:
                raise ConfigError(f"json_schema is not supported: {err}; fix the schema (see llguidance's "
                                  "JSON schema support)")
            self._grammars[key] = grammar
        return self._matcher(grammar, "json_schema")

    def constraint_lark(self, lark: str) -> JsonConstraint:
        """A fresh matcher for a Lark grammar (llguidance's dialect: ``%json {schema}`` embeds a JSON schema);
        :class:`ConfigError` naming the problem if it does not compile."""
        import llguidance

        lltok = self._tokenizer()
        grammar = self._grammars.get("lark:" + lark)
        if grammar is None:
            try:
                grammar = llguidance.LLMatcher.grammar_from_lark(lark)
            except Exception as e:
                raise ConfigError(f"grammar cannot be compiled: {e}; pass a Lark grammar with a start rule") from e
            err = llguidance.LLMatcher.validate_grammar(grammar, lltok)
            if err:
                raise ConfigError(f"grammar is not supported: {err}; fix the grammar (see llguidance's Lark syntax)")
            self._grammars["lark:" + lark] = grammar
        return self._matcher(grammar, "grammar")

    def _matcher(self, grammar: str, what: str) -> JsonConstraint:
        import llguidance

        lltok = self._tokenizer()
        matcher = llguidance.LLMatcher(lltok, grammar)
        if matcher.is_error():
            raise ConfigError(f"{what} is not supported: {matcher.get_error()}")
        return JsonConstraint(matcher, lltok.vocab_size)
