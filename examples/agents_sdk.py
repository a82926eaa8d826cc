"""An OpenAI Agents SDK agent talking to `stateset-agents serve`, with a pack scenario's tools as function tools.

    .venv/bin/python examples/agents_sdk.py [--model default|PATH|RUN_DIR] [--scenario cs-return-start-016]
        [--message "..."] [--tool-choice auto|required|none|TOOL] [--port 8765]

1. starts `stateset-agents serve --model MODEL` on loopback with a fresh API key (a trained run works: pass the run
   folder the demo wrote, e.g. runs/customer_service);
2. turns every tool of the scenario's pack into an SDK `FunctionTool` whose JSON schema is the pack's and whose body
   runs the call against a copy of the scenario's database (`envs.tools.run_tool`, the same code the environment runs);
3. runs the agent with the SDK's `OpenAIChatCompletionsModel` and prints each tool call, each result and the answer;
4. stops the server.

SmolLM2-135M untrained rarely calls a tool on its own: `--tool-choice required` forces one call (decoded under the
tool's schema, so its arguments are valid), after which the SDK hands the choice back to the model.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import secrets
import subprocess
import sys
import time

import httpx


def _tools(pack, db):
    from agents import FunctionTool

    from stateset_agents.envs.tools import ToolError, run_tool

    def make(spec):
        async def invoke(_ctx, raw: str) -> str:
            try:
                result = run_tool(pack, spec.name, json.loads(raw or "{}"), db)
            except ToolError as e:  # the env shows tool errors to the agent; so does this example
                result = {"error": str(e)}
            print(f"  tool {spec.name}({raw}) -> {json.dumps(result)[:200]}")
            return json.dumps(result)

        return FunctionTool(name=spec.name, description=spec.description, params_json_schema=spec.parameters,
                            on_invoke_tool=invoke, strict_json_schema=False)

    return [make(t) for t in pack.tools]


def _serve(model: str, port: int, key: str) -> subprocess.Popen:
    env = dict(os.environ, STATESET_API_KEY=key)
    proc = subprocess.Popen([sys.executable, "-m", "stateset_agents", "serve", "--model", model, "--port", str(port),
                             "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the server did not start within 180 s")


async def _run(args, key: str) -> None:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from openai import AsyncOpenAI

    from stateset_agents.envs import load_pack

    set_tracing_disabled(True)  # the SDK exports traces to OpenAI unless told not to
    pack = load_pack(args.pack)
    scenario = pack.scenario(args.scenario)
    db = copy.deepcopy(scenario.database)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key=key, max_retries=0, timeout=600)
    try:
        agent = Agent(name=pack.name, instructions=pack.system_prompt, tools=_tools(pack, db),
                      model=OpenAIChatCompletionsModel(model="default", openai_client=client),
                      model_settings=ModelSettings(tool_choice=args.tool_choice, max_tokens=96, temperature=0.7))
        message = args.message or scenario.user.opening[0]
        print(f"user: {message}")
        result = await Runner.run(agent, message, max_turns=args.max_turns)
        print(f"agent: {result.final_output}")
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="default, a model folder, or a training run folder")
    ap.add_argument("--pack", default="customer_service")
    ap.add_argument("--scenario", default="cs-return-start-016")
    ap.add_argument("--message", default=None, help="the user's message (default: the scenario's opening)")
    ap.add_argument("--tool-choice", default="required", help="auto, required, none, or a tool name")
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    key = secrets.token_hex(16)
    server = _serve(args.model, args.port, key)
    try:
        asyncio.run(_run(args, key))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
