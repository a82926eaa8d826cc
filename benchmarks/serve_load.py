"""Load on the service: N concurrent chat clients on loopback for a bounded time, against SmolLM2.

The server is the real command, ``python -m stateset_agents serve --model default`` (fp32, CPU, API key on), in its
own process. For each concurrency level (default 1, 8, 32), that many clients each send
``POST /v1/chat/completions`` requests back to back (a customer-service system prompt and one of 8 customer
questions, ``max_tokens`` 32, temperature 0.7, a different seed each) until the level's time is up; requests in
flight then finish and count. Reported per level: requests/s, new tokens/s (the ``usage.completion_tokens`` of
successful replies over the level's wall time), p50/p95 latency, errors (any non-200 reply or transport error),
and the engine's batch size (the ``stateset_engine_batch_size`` gauge of ``/metrics``, sampled twice a second:
mean and max). ``--stream`` streams the replies and also reports the time to
the first content chunk.

Run:  .venv/bin/python benchmarks/serve_load.py [--duration 20] [--levels 1 8 32] [--threads 1] [--json OUT]
(``--json`` appends the run to the file's ``runs``.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "My order ORD-{i} hasn't arrived yet, where is it?", "I was charged twice for invoice INV-{i}.",
    "The blender in order {i} arrived cracked. What can you do?", "Can I change the address on order {i}?",
    "I can't log in to my account, it says locked.", "Please cancel order {i}, I ordered the wrong size.",
    "How long do refunds take to show up?", "Do you ship to Canada? My order {i} is for Toronto.",
]
SYSTEM = "You are a helpful customer service agent for an online store. Keep replies under three sentences."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, key: str, state: Path, max_batch_size: int, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stateset_agents", "serve", "--model", "default", "--port", str(port),
           "--state-dir", str(state / "state"), "--runs-dir", str(state / "runs"), "--max-batch-size",
           str(max_batch_size), "--log-level", "warning"] + (["--threads", str(threads)] if threads else [])
    return subprocess.Popen(cmd, env={**os.environ, "STATESET_API_KEY": key}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not become healthy within {timeout} s")


async def one_request(client, i: int, max_tokens: int, stream: bool) -> tuple[float, int, float | None, str | None]:
    """(latency s, completion tokens, time to first content s or None, error or None)."""
    body = {"model": "default", "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(i=1000 + i)}]}
    start = time.perf_counter()
    try:
        if not stream:
            r = await client.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                return time.perf_counter() - start, 0, None, f"{r.status_code}: {r.text[:200]}"
            return time.perf_counter() - start, r.json()["usage"]["completion_tokens"], None, None
        first, tokens = None, 0
        body.update(stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return time.perf_counter() - start, 0, None, f"{r.status_code}: {(await r.aread())[:200]!r}"
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    return time.perf_counter() - start, 0, None, data["error"]["message"]
                if first is None and any(c["delta"].get("content") for c in data["choices"]):
                    first = time.perf_counter() - start
                if data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
        return time.perf_counter() - start, tokens, first, None
    except Exception as e:  # transport errors count as errors, never as results
        return time.perf_counter() - start, 0, None, f"{type(e).__name__}: {e}"


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


async def run_level(url: str, key: str, concurrency: int, duration: float, max_tokens: int,
                    stream: bool) -> dict:
    import httpx

    results: list[tuple[float, int, float | None, str | None]] = []
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600,
                                 limits=limits) as client:
        start = time.perf_counter()
        deadline = start + duration

        batches: list[float] = []

        async def worker() -> None:
            while time.perf_counter() < deadline:
                results.append(await one_request(client, next(counter), max_tokens, stream))

        async def sample_batch() -> None:  # the engine's batch-size gauge, twice a second
            while True:
                text = (await client.get("/metrics")).text
                batches.extend(float(line.split()[-1]) for line in text.splitlines()
                               if line.startswith("stateset_engine_batch_size "))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_batch())
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - start
        sampler.cancel()
    ok = [r for r in results if r[3] is None]
    lat = [r[0] for r in ok]
    ttft = [r[2] for r in ok if r[2] is not None]
    out = {"concurrency": concurrency, "wall_s": round(wall, 2), "requests": len(results),
           "errors": len(results) - len(ok),
           "requests_per_s": round(len(ok) / wall, 3), "new_tokens_per_s": round(sum(r[1] for r in ok) / wall, 1),
           "mean_new_tokens": round(statistics.mean([r[1] for r in ok]), 1) if ok else None,
           "p50_latency_s": _round(_pct(lat, 50)), "p95_latency_s": _round(_pct(lat, 95)),
           "engine_batch_mean": round(statistics.mean(batches), 1) if batches else None,
           "engine_batch_max": max(batches) if batches else None,
           "first_errors": sorted({r[3] for r in results if r[3]})[:3]}
    if stream:
        out.update(p50_ttft_s=_round(_pct(ttft, 50)), p95_ttft_s=_round(_pct(ttft, 95)))
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per level")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds each level sends new requests")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=32, help="the server's engine batch bound")
    ap.add_argument("--threads", type=int, default=None, help="the server's torch threads (serve --threads)")
    ap.add_argument("--stream", action="store_true", help="stream replies (SSE) and report time to first token")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if not (1 <= args.duration <= 600) or max(args.levels) > 256 or min(args.levels) < 1:
        ap.error("--duration must be within 1..600 s and --levels within 1..256 (a bounded load)")
    key, port = secrets.token_urlsafe(24), _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(port, key, Path(tmp), args.max_batch_size, args.threads)
        try:
            t0 = time.perf_counter()
            wait_healthy(url, proc)
            startup = time.perf_counter() - t0
            asyncio.run(run_level(url, key, 1, 1.0, 4, args.stream))  # warm-up, not reported
            levels = []
            for n in args.levels:
                load_before = os.getloadavg()[0]
                level = asyncio.run(run_level(url, key, n, args.duration, args.max_tokens, args.stream))
                level["load_average_1m_before"] = round(load_before, 2)
                levels.append(level)
                print(json.dumps(level), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": "SmolLM2-135M-Instruct (fp32, CPU)",
              "server": f"stateset-agents serve --max-batch-size {args.max_batch_size}"
                        + (f" --threads {args.threads}" if args.threads else "") + " (API key on)",
              "max_tokens": args.max_tokens, "temperature": 0.7, "stream": args.stream,
              "duration_per_level_s": args.duration, "server_startup_s": round(startup, 1),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count()},
              "levels": levels}
    print(f"{'clients':>7} {'req/s':>7} {'new tok/s':>9} {'p50 s':>7} {'p95 s':>7} {'errors':>6} {'batch':>9}")
    for lv in levels:
        print(f"{lv['concurrency']:>7} {lv['requests_per_s']:>7} {lv['new_tokens_per_s']:>9} "
              f"{lv['p50_latency_s']!s:>7} {lv['p95_latency_s']!s:>7} {lv['errors']:>6} "
              f"{lv['engine_batch_mean']!s:>5}/{lv['engine_batch_max']!s:<3}")
    if args.json:  # one file holds every run: a new run is appended to its "runs"
        out = Path(args.json)
        data = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"benchmark": "serve_load", "runs": []}
        data["runs"].append(result)
        out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"written: {args.json} (run {len(data['runs'])})")


if __name__ == "__main__":
    main()
