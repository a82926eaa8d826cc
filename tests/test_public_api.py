import subprocess
import sys

import stateset_agents
from stateset_agents import errors, types


def test_all_names_exist_and_are_unique():
    assert len(stateset_agents.__all__) == len(set(stateset_agents.__all__))
    for name in stateset_agents.__all__:
        assert hasattr(stateset_agents, name), name


def test_all_lists_every_public_reexport():
    public = {n for n in dir(stateset_agents) if not n.startswith("_")}
    submodules = {"agents", "envs", "errors", "models", "rewards", "types", "cli", "cli_commands", "demo", "chat",
                  "rollout", "evaluation", "evaluation_report", "evaluation_compare", "paired", "training",
                  "serving", "transcripts", "transcripts_show", "atomic", "resolve", "toolcalls"}  # subpackages: present once something imported them
    assert public - submodules - set(stateset_agents.__all__) == set()


def test_shared_types_and_errors_are_exported():
    for name in types.__all__:
        if name != "Role":
            assert getattr(stateset_agents, name) is getattr(types, name)
    for name in errors.__all__:
        assert getattr(stateset_agents, name) is getattr(errors, name)


def test_import_prints_nothing_and_configures_no_logging():
    code = ("import logging, stateset_agents; "
            "assert not logging.getLogger().handlers, logging.getLogger().handlers")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "" and out.stderr == ""


def test_did_you_mean_names_close_matches_or_nothing():
    assert errors.did_you_mean("customer_servce", ["customer_service", "sales"]) == "Did you mean 'customer_service'?"
    assert errors.did_you_mean("zzz", ["customer_service", "sales"]) == ""
    assert errors.did_you_mean("cs-ship-01", ["cs-ship-001", "cs-ship-002", "cs-refund-001"], n=2) == \
        "Did you mean 'cs-ship-001', 'cs-ship-002'?"


def test_validation_error_text_names_each_field_the_rule_and_the_value():
    from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        k: int = Field(ge=1)

    class Cfg(BaseModel):
        model_config = ConfigDict(extra="forbid")
        group_size: int = Field(default=2, ge=2)
        inner: Inner | None = None

        @model_validator(mode="after")
        def _check(self):
            if self.group_size == 3:
                raise ValueError("group_size 3 is odd; use 2 or 4")
            return self

    def text(data, **kw):
        try:
            Cfg.model_validate(data)
        except ValidationError as e:
            return errors.validation_error_text(e, **kw)
        raise AssertionError("no error")

    assert text({"group_sise": 4}) == "unknown field 'group_sise': remove it or check its spelling"
    assert text({"group_size": 1}) == "field 'group_size': Input should be greater than or equal to 2 (got 1)"
    assert text({"group_size": 3}) == "group_size 3 is odd; use 2 or 4"
    assert text({"inner": {}}) == "field 'inner.k': Field required"
    assert text({"group_size": 1, "x": 1}, limit=1) == \
        "field 'group_size': Input should be greater than or equal to 2 (got 1) (and 1 more)"
    assert text({"group_size": "x" * 300}).endswith("...)")
