"""`stateset-agents chat`: the model as agent, a person as agent, a person as user."""

import subprocess
import sys

from rich.console import Console

from stateset_agents import ConversationEnv
from stateset_agents.chat import play_chat
from stateset_agents.envs import format_tool_call


def _env():
    return ConversationEnv("customer_service", scenario="cs-delayed-order-001", max_turns=4)


async def test_model_as_agent(tiny_model):
    console = Console(record=True, width=100)
    info = await play_chat(_env(), model=tiny_model, console=console, max_new_tokens=8)
    assert "outcome" in info and "score" in console.export_text()


async def test_person_as_agent():
    typed = iter(["What's your order number?", format_tool_call("track_shipment", {"order_id": "ORD-1042"}),
                  "It will arrive on March 14."])
    console = Console(record=True, width=100)
    info = await play_chat(_env(), human="agent", read=lambda prompt: next(typed), console=console)
    assert info["outcome"]["success"] and "The order number is ORD-1042." in console.export_text()


async def test_person_as_user(tiny_model):
    typed = iter(["My lamp never came.", "ORD-1042", "/quit"])
    info = await play_chat(_env(), model=tiny_model, human="user", read=lambda prompt: next(typed),
                           console=Console(record=True), max_new_tokens=8)
    users = [m.content for m in info["messages"] if m.role == "user"]
    assert users[0] == "My lamp never came."
    assert info["outcome"]["ended_by"] in ("user_stop_marker", "max_turns", "agent")


def test_cli_chat_as_agent_from_stdin():
    out = subprocess.run([sys.executable, "-m", "stateset_agents", "chat", "--scenario", "cs-delayed-order-001",
                          "--as", "agent"], input="Your order number please?\nThanks, bye [END]\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "The order number is ORD-1042." in out.stdout and "ended by agent" in out.stdout
