"""``/api/conversations``: persistent multi-turn conversations with a domain agent.

A conversation has a domain strategy (``customer_service``, ``tech_support``, ``sales``, ``educational`` or none),
an optional extra system prompt, and sampling settings. Posting a user message runs one turn of a
:class:`~stateset_agents.agents.MultiTurnAgent` over the whole history (its context budget condenses old turns) and
stores the user message and the reply together in one transaction, so a failed turn stores nothing. Turns of one
conversation run one at a time; different conversations run concurrently (and batch in the engine).

    POST   /api/conversations                       {"domain", "system_prompt", "temperature", "max_tokens"}
    GET    /api/conversations?limit=50              newest first, without messages
    GET    /api/conversations/{id}                  the conversation with its messages
    POST   /api/conversations/{id}/messages         {"content"} -> the agent's reply
    DELETE /api/conversations/{id}
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..agents.multiturn import MultiTurnAgent, strategies
from ..models.base import SamplingParams
from ..types import Message
from .db import Database, dumps
from .errors import APIError
from .streaming import reply_content

__all__ = ["ConversationStore", "router"]

router = APIRouter()


class NewConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str | None = "customer_service"
    """The agent's strategy prompt, or null for none."""
    system_prompt: str = Field(default="", max_length=8000)
    """Extra instructions appended to the strategy."""
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    context_tokens: int = Field(default=2048, ge=64, le=32768)
    """The agent's prompt budget; older turns are condensed beyond it."""


class UserTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1)


class ConversationStore:
    """Conversations and their messages in the service database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, domain: str | None, system_prompt: str, settings: dict[str, Any]) -> dict[str, Any]:
        cid, now = f"conv_{secrets.token_hex(10)}", time.time()
        self.db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                        (cid, domain, system_prompt, dumps(settings), now, now))
        return self.get(cid)

    def get(self, cid: str, *, messages: bool = True) -> dict[str, Any]:
        rows = self.db.query("SELECT * FROM conversations WHERE id = ?", (cid,))
        if not rows:
            raise APIError(404, f"no conversation {cid!r}; create one with POST /api/conversations",
                           param="conversation_id", code="conversation_not_found")
        row = rows[0]
        out = {"id": row["id"], "domain": row["domain"], "system_prompt": row["system_prompt"],
               "settings": json.loads(row["settings"]), "created": row["created"], "updated": row["updated"]}
        if messages:
            out["messages"] = [json.loads(r["message"]) for r in self.db.query(
                "SELECT message FROM messages WHERE conversation_id = ? ORDER BY idx", (cid,))]
        return out

    def recent(self, limit: int) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT c.id, c.domain, c.created, c.updated, COUNT(m.idx) AS n_messages FROM conversations c "
            "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id ORDER BY c.updated DESC LIMIT ?",
            (limit,))
        return rows

    def append(self, cid: str, messages: list[Message]) -> None:
        """Add messages at the end, in one transaction."""
        now = time.time()
        with self.db.transaction() as c:
            (n,) = c.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (cid,)).fetchone()
            for i, m in enumerate(messages):
                c.execute("INSERT INTO messages VALUES (?, ?, ?, ?)",
                          (cid, n + i, dumps(m.model_dump(mode="json", exclude_none=True)), now))
            c.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, cid))

    def delete(self, cid: str) -> bool:
        with self.db.transaction() as c:
            c.execute("DELETE FROM messages WHERE conversation_id = ?", (cid,))
            return c.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount > 0


def _store(request: Request) -> ConversationStore:
    return request.app.state.service.conversations


def _fitted_prompt(model: Any, agent: MultiTurnAgent, conversation: list[Message]) -> list[Message]:
    """The agent's prompt (its context budget applied; in a worker thread, off the event loop), or 400 when even
    the condensed prompt does not fit the model's positions (the first and the newest messages are always kept)."""
    prompt = agent.build_prompt(conversation)
    limit = getattr(getattr(getattr(model, "model", None), "config", None), "max_position_embeddings", None)
    if limit and hasattr(model, "prompt_ids"):
        n = len(model.prompt_ids(prompt))
        if n + agent.sampling.max_new_tokens > limit:
            raise APIError(400, f"field 'content': after condensing older turns the prompt has {n} tokens and "
                                f"max_tokens is {agent.sampling.max_new_tokens}, more than the model's {limit} "
                                "positions (the first and the newest messages are always kept); send a shorter "
                                "message or start a new conversation", param="content")
    return prompt


@router.post("/api/conversations", status_code=201)
async def create_conversation(request: Request, body: NewConversation) -> dict[str, Any]:
    service = request.app.state.service
    if body.domain is not None and body.domain not in strategies():
        raise APIError(400, f"field 'domain': {body.domain!r} is not one of {sorted(strategies())} (or null)",
                       param="domain")
    limit = service.config.max_tokens_limit
    max_tokens = body.max_tokens or min(service.config.conversation_max_tokens, limit)
    if max_tokens > limit:
        raise APIError(400, f"field 'max_tokens': {max_tokens} is above this server's limit of {limit} "
                            "(max_tokens_limit)", param="max_tokens")
    settings = {"temperature": body.temperature, "max_tokens": max_tokens, "context_tokens": body.context_tokens}
    return _store(request).create(body.domain, body.system_prompt, settings)


@router.get("/api/conversations")
async def list_conversations(request: Request, limit: int = Query(default=50, ge=1, le=1000)) -> dict[str, Any]:
    return {"data": _store(request).recent(limit)}


@router.get("/api/conversations/{conversation_id}")
async def get_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
    return _store(request).get(conversation_id)


@router.delete("/api/conversations/{conversation_id}")
async def delete_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
    store = _store(request)
    store.get(conversation_id, messages=False)  # 404 when unknown
    async with request.app.state.service.conversation_lock(conversation_id):
        store.delete(conversation_id)
    return {"id": conversation_id, "deleted": True}


@router.post("/api/conversations/{conversation_id}/messages")
async def post_message(request: Request, conversation_id: str, body: UserTurn) -> dict[str, Any]:
    service = request.app.state.service
    cfg = service.config
    if len(body.content) > cfg.max_message_chars:
        raise APIError(400, f"field 'content': {len(body.content)} characters is above this server's limit of "
                            f"{cfg.max_message_chars} (max_message_chars)", param="content")
    store = _store(request)
    async with service.conversation_lock(conversation_id):
        conv = store.get(conversation_id)
        if len(conv["messages"]) + 2 > cfg.max_conversation_messages:
            raise APIError(409, f"conversation {conversation_id!r} holds {len(conv['messages'])} messages; a turn "
                                f"would pass the limit of {cfg.max_conversation_messages} (max_conversation_messages)"
                                "; start a new conversation", param="conversation_id")
        s = conv["settings"]
        agent = MultiTurnAgent(service.model, domain=conv["domain"], system_prompt=conv["system_prompt"],
                               context_tokens=s["context_tokens"],
                               sampling=SamplingParams(temperature=s["temperature"], max_new_tokens=s["max_tokens"]))
        history = [Message.model_validate(m) for m in conv["messages"]]
        user = Message(role="user", content=body.content)
        prompt = await asyncio.to_thread(_fitted_prompt, service.model, agent, [*history, user])
        async with service.generation_slot(1):
            completion = await service.model.chat(prompt, sampling=agent.sampling)
        reply = Message(role="assistant", content=reply_content(completion), tool_calls=completion.tool_calls or None)
        await asyncio.to_thread(store.append, conversation_id, [user, reply])
    return {"conversation_id": conversation_id, "reply": reply.model_dump(mode="json", exclude_none=True),
            "finish_reason": completion.finish_reason, "usage": completion.usage,
            "messages": len(conv["messages"]) + 2}
