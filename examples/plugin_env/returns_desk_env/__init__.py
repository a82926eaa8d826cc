"""An example third-party environment pack for stateset_agents."""

from pathlib import Path

ENV_ID = "acme/ReturnsDesk-v0"


def register() -> None:
    """Called by stateset_agents when it is imported (entry point `stateset_agents.environments`)."""
    from stateset_agents import register_pack

    register_pack(Path(__file__).parent / "pack", ENV_ID, max_turns=8)
