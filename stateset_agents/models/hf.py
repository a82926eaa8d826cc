"""HFChatModel: a local transformers causal LM behind the ChatModel protocol, with a batching engine."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ContextOverflowError, ModelError
from ..types import Completion, Message, ToolCall
from .base import SamplingParams
from .engine import GenerationEngine

__all__ = ["HFChatModel"]


class HFChatModel:
    """Any transformers causal LM in a local folder, chatting through its chat template.

    Concurrent ``chat()`` calls are decoded together by a :class:`GenerationEngine` (see its docs). Each
    :class:`Completion` carries ``prompt_ids`` (the templated prompt), ``completion_ids`` (sampled tokens,
    EOS included when it ended the reply) and ``logprobs`` (one per completion token, under the sampling
    distribution; see :mod:`stateset_agents.models.engine`). Tool calls in the reply are parsed into
    ``tool_calls`` with the environments' parser. ``tools`` are passed to the chat template; a template that
    does not use them ignores them (put tool descriptions in the system prompt then, as MultiTurnAgent does).

    Args:
        path: folder with config, weights and tokenizer (``save_pretrained`` layout).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        device: ``"cpu"`` (default), ``"cuda"``, ...
        max_batch_size: most requests decoded together.
        model / tokenizer: already-loaded objects instead of ``path`` (e.g. the policy being trained).
        prefix_cache_tokens: shortest prompt prefix shared by concurrent or consecutive requests whose keys and
            values the engine caches and reuses (the system message of an environment); 0 turns it off, and the
            conversation cache with it.
        conversation_cache_tokens: positions of finished requests' keys and values the engine keeps, so that the
            next turn of a conversation prefills only what is new (models/seq_cache.py); 0 turns it off.
        fast_decode: decode steps through a snapshot of the effective weights (merged LoRA, fused projections;
            models/fast_decode.py) for Llama-family models; False uses the transformers forward throughout.
        precision: ``native`` (the model's dtype) or ``int8`` (int8 weights in the decode snapshot, CPU only;
            sampled log-probs then come from the int8 model, see training/mismatch.py).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, dtype: str = "float32", device: str = "cpu",
                 max_batch_size: int = 32, model: Any = None, tokenizer: Any = None, name: str | None = None,
                 prefix_cache_tokens: int = 64, fast_decode: bool = True, precision: str = "native",
                 conversation_cache_tokens: int = 16384) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model is None or tokenizer is None:
            if path is None:
                raise ConfigError("HFChatModel needs `path` (a local model folder) or both `model` and `tokenizer`")
            p = Path(path)
            if not (p / "config.json").is_file():
                raise ConfigError(f"{str(p)!r} is not a model folder (no config.json); pass a folder written by "
                                  "save_pretrained, or use stateset_agents.models.default_model()")
            dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
            if dtype not in dtypes:
                raise ConfigError(f"dtype {dtype!r} is not one of {sorted(dtypes)}")
            tokenizer = AutoTokenizer.from_pretrained(p)
            model = AutoModelForCausalLM.from_pretrained(p, dtype=dtypes[dtype]).to(device)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError(f"the tokenizer of {path or name!r} has no chat template; set tokenizer.chat_template")
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        self.name = name or (Path(path).name if path is not None else type(model).__name__)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.engine = GenerationEngine(model, tokenizer, max_batch_size=max_batch_size, eos_token_ids=sorted(eos_ids),
                                       min_prefix_tokens=prefix_cache_tokens, fast_decode=fast_decode,
                                       precision=precision,
                                       conversation_cache_tokens=conversation_cache_tokens if prefix_cache_tokens else 0)

    def prompt_ids(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The chat-templated prompt, ending with the assistant generation prompt."""
        dicts = [_template_message(m) for m in messages]
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": True}
        if tools:
            kwargs["tools"] = tools
        out = self.tokenizer.apply_chat_template(dicts, **kwargs)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return list(ids)

    async def chat(self, messages: list[Message], *, sampling: SamplingParams,
                   tools: list[dict[str, Any]] | None = None,
                   on_token: Callable[[int, float], None] | None = None) -> Completion:
        """One completion. ``on_token`` (optional, for streaming) is called on this event loop with each
        sampled token id and its log-prob as it is sampled, before this returns."""
        from ..toolcalls import parse_message

        if not messages:
            raise ConfigError("chat() needs at least one message")
        prompt = self.prompt_ids(messages, tools)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(prompt) + sampling.max_new_tokens > limit:
            raise ContextOverflowError(
                f"prompt of {len(prompt)} tokens + max_new_tokens={sampling.max_new_tokens} exceeds the model's "
                f"{limit} positions; shorten the conversation (MultiTurnAgent context_tokens) or lower max_new_tokens")
        try:
            result = await self.engine.generate(prompt, sampling, on_token=on_token)
        except ConfigError:  # the request itself is bad (e.g. a json_schema that does not compile)
            raise
        except Exception as e:
            raise ModelError(f"generation with {self.name!r} failed: {type(e).__name__}: {e}") from e
        parsed = parse_message(result.text)
        calls = [ToolCall(id=f"call_{i + 1}", name=c.name, arguments=c.arguments)
                 for i, c in enumerate(parsed.calls) if c.error is None and c.name and isinstance(c.arguments, dict)]
        return Completion(text=result.text, tool_calls=calls,
                          finish_reason="tool_calls" if calls and result.finish_reason == "stop" else result.finish_reason,
                          prompt_ids=prompt, completion_ids=result.completion_ids, logprobs=result.logprobs,
                          model=self.name, usage={"prompt_tokens": len(prompt),
                                                  "completion_tokens": len(result.completion_ids)},
                          sampling=sampling)

    def close(self) -> None:
        self.engine.close()


def _template_message(m: Message) -> dict[str, Any]:
    d = m.to_openai()
    if m.tool_calls:
        # Templates differ in how they render calls; the text form keeps the documented format visible.
        from ..toolcalls import format_tool_call

        calls = "".join(format_tool_call(c.name, c.arguments) for c in m.tool_calls)
        d["content"] = (m.content + "\n" if m.content else "") + calls
        d.pop("tool_calls")
    if m.role == "tool":
        # ChatML templates without tool support: show tool results as a user turn, labelled.
        d = {"role": "user", "content": f"[tool result: {m.name}] {m.content}"}
    return d
