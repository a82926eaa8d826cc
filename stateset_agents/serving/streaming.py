"""From sampled tokens to the text a client sees: the reply's ``content`` and its streamed deltas.

``reply_content(completion)`` is the ``content`` of a non-streaming reply: the model's text, except that when
the reply holds tool calls (``Completion.tool_calls``) the tool-call markup is removed (and trailing whitespace
with it); the calls go to ``tool_calls``.

:class:`DeltaDecoder` makes real token streaming add up to exactly that content. The engine calls back with each
sampled token; the decoder decodes everything so far and sends the part that can no longer change, holding back:

- an incomplete UTF-8 character (the decoder shows it as U+FFFD until its last byte arrives);
- the longest ending that could still grow into a stop string or the ``<tool_call>`` tag (a stop string is
  never sent, and markup is never sent as content);
- everything from ``<tool_call>`` on, and everything while the reply so far could be a bare JSON tool call
  (it starts with ``{``, ``[`` or a ``````` fence);
- trailing whitespace (content is right-stripped when calls are removed).

When generation ends, :meth:`DeltaDecoder.finish` sends the rest of the final content. Because only text that is
final was sent, the deltas always concatenate to ``reply_content``; if they ever would not, ``finish`` raises
instead of sending a wrong stream.
"""

from __future__ import annotations

from typing import Any

from ..toolcalls import TOOL_CALL_TAG as _TAG
from ..toolcalls import strip_tool_calls
from ..types import Completion

__all__ = ["DeltaDecoder", "StreamMismatchError", "reply_content"]


class StreamMismatchError(RuntimeError):
    """The text already streamed is not a prefix of the final content (a bug; the stream reports it)."""


def reply_content(completion: Completion) -> str:
    """The ``content`` of a reply (see the module docs)."""
    if not completion.tool_calls:
        return completion.text
    if _TAG not in completion.text:
        return ""  # the whole message was a bare JSON call
    return strip_tool_calls(completion.text).rstrip()


def _partial_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest ending of ``text`` that is a proper prefix of one of ``markers``."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best


class DeltaDecoder:
    """Incremental detokenizer for one streamed completion (see the module docs)."""

    def __init__(self, tokenizer: Any, stop: list[str] | None = None, eos_token_ids: set[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.eos = set(eos_token_ids or ())
        self.ids: list[int] = []
        self.sent = ""

    def _safe(self, text: str) -> str:
        cuts = [i for i in (text.find(m) for m in [_TAG, *self.stop]) if i >= 0]
        if cuts:
            text = text[:min(cuts)]
        head = text.lstrip()
        if head[:1] in ("{", "[", "`"):
            return ""
        text = text[:len(text) - _partial_suffix(text, [_TAG, *self.stop])]
        return text.rstrip("\ufffd").rstrip()

    def push(self, token_id: int) -> str:
        """Add one sampled token; return the new text that is safe to send (possibly empty)."""
        if token_id in self.eos:  # ends the reply; the engine leaves it out of the text
            return ""
        self.ids.append(token_id)
        safe = self._safe(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            delta, self.sent = safe[len(self.sent):], safe
            return delta
        return ""

    def finish(self, content: str) -> str:
        """The rest of the final ``content`` (from :func:`reply_content`)."""
        if not content.startswith(self.sent):
            raise StreamMismatchError(f"streamed {self.sent[-40:]!r} is not a prefix of the final content "
                                      f"{content[:80]!r}")
        rest, self.sent = content[len(self.sent):], content
        return rest
