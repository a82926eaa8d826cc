"""stateset_agents: train conversational agents with reinforcement learning.

Importing the package registers the built-in Gymnasium environments (``stateset/CustomerService-v0``,
``stateset/TechSupport-v0``, ``stateset/Sales-v0``) and those of installed plugins. It prints nothing
and configures no logging.
"""

from .agents import MultiTurnAgent
from .envs import (
    END_MARKER,
    ConversationEnv,
    EnvPack,
    LLMUser,
    ReplayCache,
    Scenario,
    ScriptedUser,
    UserSimulator,
    load_pack,
    register_pack,
)
from .envs.registry import load_plugins as _load_plugins
from .envs.registry import register_builtin_envs as _register_builtin_envs
from .errors import (
    ConfigError,
    ContextOverflowError,
    EpisodeError,
    ModelError,
    ModelNotInstalledError,
    PackError,
    PluginError,
    StatesetError,
    SyncInAsyncError,
    TrainingError,
    UnknownScenarioError,
)
from .evaluation import EvalReport, aevaluate, evaluate, pass_at_k, pass_hat_k
from .models import ChatModel, OpenAIChatModel, SamplingParams
from .rollout import rollout
from .types import Completion, Message, RewardResult, ToolCall, Trajectory, TrajectoryGroup

__version__ = "0.1.0"

__all__ = [
    "END_MARKER",
    "ChatModel",
    "Completion",
    "ConfigError",
    "ContextOverflowError",
    "ConversationEnv",
    "EnvPack",
    "EpisodeError",
    "EvalReport",
    "LLMUser",
    "Message",
    "ModelError",
    "ModelNotInstalledError",
    "MultiTurnAgent",
    "OpenAIChatModel",
    "PackError",
    "PluginError",
    "ReplayCache",
    "RewardResult",
    "SamplingParams",
    "Scenario",
    "ScriptedUser",
    "StatesetError",
    "SyncInAsyncError",
    "ToolCall",
    "TrainingError",
    "Trajectory",
    "TrajectoryGroup",
    "UnknownScenarioError",
    "UserSimulator",
    "__version__",
    "aevaluate",
    "evaluate",
    "load_pack",
    "pass_at_k",
    "pass_hat_k",
    "register_pack",
    "rollout",
]

_register_builtin_envs()
_load_plugins()
