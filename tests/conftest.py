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


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from stateset_agents.models.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    from stateset_agents.models.hf import HFChatModel

    model = HFChatModel(tiny_model_path, max_batch_size=32)
    yield model
    model.close()
