from __future__ import annotations

import pytest

import stateset_agents  # noqa: F401  (registers the environments)
from stateset_agents.envs import BUILTIN_ENVS, builtin_pack_dirs, load_pack

ALL_SCENARIOS = [
    pytest.param(env_id, name, s.id, id=s.id)
    for env_id, name in BUILTIN_ENVS.items()
    if name in builtin_pack_dirs()
    for s in load_pack(name).scenarios
]
