"""Packaging: a third-party plugin installed with pip registers its env; a built wheel finds the packs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pip(*args, cwd=ROOT):
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, cwd=cwd, capture_output=True, text=True)


def _run(code, path, cwd):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                         env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
def test_plugin_package_registers_through_the_entry_point(tmp_path):
    target = tmp_path / "site"
    _pip("install", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT / "examples/plugin_env"))
    code = ("import json, gymnasium as gym, stateset_agents\n"
            "from gymnasium.utils.env_checker import check_env\n"
            "env = gym.make('acme/ReturnsDesk-v0')\n"
            "check_env(env.unwrapped)\n"
            "obs, info = env.reset(seed=0, options={'scenario': 'rd-helmet-001'})\n"
            "print(json.dumps([obs, info['scenario_id'], env.unwrapped.max_turns]))\n")
    obs, sid, max_turns = json.loads(_run(code, target, tmp_path))
    assert sid == "rd-helmet-001" and obs.startswith("Hi! The helmet") and max_turns == 8
    without = _run("import gymnasium as gym, stateset_agents; print('acme/ReturnsDesk-v0' in gym.registry)",
                   "", tmp_path)
    assert without.strip() == "False"


@pytest.mark.slow
def test_non_editable_wheel_ships_the_packs(tmp_path):
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT))
    wheel = next((tmp_path / "dist").glob("stateset_agents-*.whl"))
    target = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(target), str(wheel))
    code = ("import stateset_agents, json\n"
            "from stateset_agents.envs import load_pack, BUILTIN_ENVS\n"
            "from stateset_agents.rewards import load_reward\n"
            "from stateset_agents.rewards import builtin_rubrics\n"
            "presets = [load_reward(n).name for n in ('customer_service', 'educational')] + sorted(builtin_rubrics())\n"
            "print(json.dumps([stateset_agents.__file__, {n: [load_pack(n).path, len(load_pack(n).scenarios)]"
            " for n in BUILTIN_ENVS.values()}, presets]))\n")
    init, packs, presets = json.loads(_run(code, target, tmp_path))
    assert presets[:2] == ["customer_service", "educational"]
    assert presets[2:] == sorted(["creative_writing", "customer_service", "default", "educational", "sales",
                                  "tech_support"])
    assert init.startswith(str(target))
    for name, (path, count) in packs.items():
        assert path == str(target / "stateset_agents/_packs/environments" / name)
        assert count >= 40
