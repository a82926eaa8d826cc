"""Conversation environments: the Gymnasium contract, data packs, tools and user simulators."""

from ..toolcalls import format_tool_call, parse_message
from .conversation import END_MARKER, MAX_ACTION_CHARS, MAX_OBSERVATION_CHARS, ConversationEnv
from .outcome import compute_outcome
from .pack import EnvPack, Scenario, ToolSpec, builtin_pack_dirs, load_pack
from .registry import (
    BUILTIN_ENVS,
    ENTRY_POINT_GROUP,
    load_plugins,
    register_builtin_envs,
    register_pack,
    registered_envs,
)
from .users import (
    LLMUser,
    ReplayCache,
    ScriptedUser,
    UserContext,
    UserSimulator,
    UserSimulatorError,
    UserTurn,
)

__all__ = [
    "BUILTIN_ENVS",
    "END_MARKER",
    "ENTRY_POINT_GROUP",
    "MAX_ACTION_CHARS",
    "MAX_OBSERVATION_CHARS",
    "ConversationEnv",
    "EnvPack",
    "LLMUser",
    "ReplayCache",
    "Scenario",
    "ScriptedUser",
    "ToolSpec",
    "UserContext",
    "UserSimulator",
    "UserSimulatorError",
    "UserTurn",
    "builtin_pack_dirs",
    "compute_outcome",
    "format_tool_call",
    "load_pack",
    "load_plugins",
    "parse_message",
    "register_builtin_envs",
    "register_pack",
    "registered_envs",
]
