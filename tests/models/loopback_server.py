"""A real OpenAI-compatible HTTP server on 127.0.0.1, backed by an HFChatModel (for tests only).

It runs the stdlib ThreadingHTTPServer on a free port; each request is answered by ``model.chat`` on a
background event loop. ``fail_next`` makes the next N requests answer with a given status (retry tests).
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stateset_agents import Message, SamplingParams


class LoopbackServer:
    def __init__(self, model, *, api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key
        self.fail_next: list[int] = []
        self.requests: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                if server.fail_next:
                    status = server.fail_next.pop(0)
                    return self._send(status, {"error": {"message": f"injected {status}"}}, {"Retry-After": "0"})
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                if self.path != "/v1/chat/completions" or not body.get("messages"):
                    return self._send(400, {"error": {"message": "messages: field required"}})
                msgs = [Message(role=m["role"], content=m.get("content") or "", tool_call_id=m.get("tool_call_id"))
                        for m in body["messages"]]
                sampling = SamplingParams(temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
                                          max_new_tokens=body.get("max_tokens", 64), stop=body.get("stop") or [],
                                          seed=body.get("seed"))
                fut = asyncio.run_coroutine_threadsafe(server.model.chat(msgs, sampling=sampling), server.loop)
                c = fut.result(timeout=60)
                choice = {"index": 0, "message": {"role": "assistant", "content": c.text},
                          "finish_reason": c.finish_reason}
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": [{"token": str(t), "logprob": lp}
                                                      for t, lp in zip(c.completion_ids, c.logprobs, strict=True)]}
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [choice], "usage": {"prompt_tokens": len(c.prompt_ids),
                                                                "completion_tokens": len(c.completion_ids)}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._loop_thread.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join()
        self.loop.close()
