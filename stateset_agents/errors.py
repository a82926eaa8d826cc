"""The exception tree of stateset_agents.

Every message names the bad value and says how to fix it.

    StatesetError                      base of everything raised on purpose here
    ├── ConfigError (ValueError)       a bad argument, config field or option
    ├── PackError (ValueError)         a malformed environment or reward pack (names file, scenario, field)
    ├── UnknownScenarioError (KeyError-like ValueError)
    │                                  a scenario id that is not in the pack (lists close matches)
    ├── EpisodeError (RuntimeError)    the env was used out of order (step before reset, after the end)
    ├── SyncInAsyncError (RuntimeError)
    │                                  a sync env method called inside a running event loop
    ├── PluginError (RuntimeError)     a third-party environment plugin failed to load
    ├── ModelError (RuntimeError)      a language model backend failed (endpoint down, bad response)
    │   └── ContextOverflowError       the prompt plus max_new_tokens does not fit in the model's positions
    ├── ModelNotInstalledError (ImportError)
    │                                  the default model or an optional extra is not installed
    └── TrainingError (RuntimeError)   training cannot go on (e.g. the reward applies to nothing in a batch)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ConfigError",
    "ContextOverflowError",
    "EpisodeError",
    "ModelError",
    "ModelNotInstalledError",
    "PackError",
    "PluginError",
    "StatesetError",
    "SyncInAsyncError",
    "TrainingError",
    "UnknownScenarioError",
]  # the exception tree only; did_you_mean and validation_error_text (below) help write their messages


class StatesetError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(StatesetError, ValueError):
    """A bad argument, option or config field. The message names the value and the fix."""


class PackError(StatesetError, ValueError):
    """A malformed data pack. The message names the file, the scenario id (if any) and the field."""

    def __init__(self, message: str, *, file: str | None = None, scenario: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.scenario = scenario
        self.field = field


class UnknownScenarioError(StatesetError, ValueError):
    """A scenario id that the pack does not contain."""


class EpisodeError(StatesetError, RuntimeError):
    """The environment was used out of order: step before reset, or step after the episode ended."""


class SyncInAsyncError(StatesetError, RuntimeError):
    """A synchronous env method was called while an event loop is running in this thread."""


class PluginError(StatesetError, RuntimeError):
    """A third-party environment plugin (entry-point group `stateset_agents.environments`) failed."""


class ModelError(StatesetError, RuntimeError):
    """A language-model backend failed: endpoint unreachable, bad response, generation error."""


class ContextOverflowError(ModelError):
    """The conversation no longer fits: prompt tokens + ``max_new_tokens`` exceed the model's positions."""


class ModelNotInstalledError(StatesetError, ImportError):
    """A model package or optional extra is missing. The message gives the exact install command."""


class TrainingError(StatesetError, RuntimeError):
    """Training cannot go on: the message says what was found and what to change."""


def did_you_mean(value: object, choices: Iterable[str], *, n: int = 3) -> str:
    """The fix for an unknown name or id: ``"Did you mean 'a', 'b'?"`` with up to ``n`` close matches of
    ``value`` among ``choices``, or ``""`` when none is close. Every "unknown X" message words it this way."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.5)
    return f"Did you mean {', '.join(map(repr, close))}?" if close else ""


def error_location(err: Mapping[str, Any]) -> str:
    """A pydantic error's location as a dotted path (``components.0.weight``; ``""`` for the whole object)."""
    return ".".join(str(x) for x in err.get("loc", ()))


def validation_error_text(e: Any, *, limit: int | None = None) -> str:
    """A pydantic ``ValidationError`` in this library's words, one clause per error joined by ``"; "``:
    ``unknown field 'x': remove it or check its spelling``, ``field 'x': RULE (got VALUE)``, or a cross-field
    check's own message (on a whole object or section, which says what to change). ``limit`` keeps the first
    errors and says how many more there are."""
    errs = e.errors()
    shown = errs if limit is None else errs[:limit]
    parts = []
    for err in shown:
        loc = error_location(err)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}: remove it or check its spelling")
        elif not loc:
            parts.append(msg)
        elif isinstance(err.get("input"), dict):  # a check on a whole section, or a field missing from it
            parts.append(f"field {loc!r}: {msg}")
        else:
            got = repr(err.get("input"))
            parts.append(f"field {loc!r}: {msg} (got {got if len(got) <= 120 else got[:117] + '...'})")
    more = len(errs) - len(shown)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
