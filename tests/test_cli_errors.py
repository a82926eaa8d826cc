"""Every CLI verb answers a user's mistake (a bad id, a missing file, a malformed config) with one line that names
the bad value and the fix, exit status 2, and no traceback."""

import subprocess
import sys

import pytest

from stateset_agents.cli import main, one_line
from stateset_agents.transcripts import Transcript, write_transcripts


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "broken.yaml").write_text("a: [1\n")
    (d / "unknown_field.yaml").write_text("algorithm: grpo\nenv: customer_service\nbogus_field: 1\n")
    (d / "bad_env.yaml").write_text("algorithm: grpo\nenv: stateset/CustomerSrvice-v0\n")
    (d / "pack" / "scenarios").mkdir(parents=True)
    (d / "pack" / "pack.yaml").write_text("name: x\n")
    (d / "nopack").mkdir()
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text("{garbage")
    (d / "run").mkdir()
    (d / "run" / "metrics.jsonl").write_text("garbage\n")
    (d / "t.jsonl").write_text('{"scenario_id": "x"}\n')
    write_transcripts(d / "ok.transcripts.jsonl", [Transcript(scenario_id="cs-ship-eta-009", messages=[],
                                                              success=False)])
    return d


# (verb, argv with {d} for the fixture folder, what the line must name, the fix it must give)
CASES = [
    # envs validate
    ("envs validate", ["envs", "validate", "customer_servic"], "unknown environment 'customer_servic'",
     "Did you mean 'customer_service'"),
    ("envs validate", ["envs", "validate", "{d}/missing"], "'{d}/missing' does not exist", "pass an existing pack"),
    ("envs validate", ["envs", "validate", "{d}/pack"], "{d}/pack/pack.yaml: field", "fix the pack"),
    ("envs validate", ["envs", "validate", "{d}/nopack"], "'{d}/nopack' has no pack.yaml", "pass a pack folder"),
    # envs audit
    ("envs audit", ["envs", "audit", "stateset/Sales-v9"], "unknown environment 'stateset/Sales-v9'",
     "Did you mean 'stateset/Sales-v0'"),
    ("envs audit", ["envs", "audit", "{d}/missing"], "'{d}/missing' does not exist", "pass an existing pack"),
    ("envs audit", ["envs", "audit", "{d}/pack"], "{d}/pack/pack.yaml: field", "fix the pack"),
    # chat
    ("chat", ["chat", "--env", "stateset/CustomerSrvice-v0", "--as", "agent"],
     "unknown environment 'stateset/CustomerSrvice-v0'", "Did you mean 'stateset/CustomerService-v0'"),
    ("chat", ["chat", "--env", "{d}/missing", "--as", "agent"], "'{d}/missing' does not exist",
     "pass an existing pack"),
    ("chat", ["chat", "--env", "{d}/pack", "--as", "agent"], "pack.yaml: field", "fix the pack"),
    ("chat", ["chat", "--scenario", "cs-nope", "--as", "agent"], "unknown scenario 'cs-nope'", "envs list"),
    ("chat", ["chat", "--experiences", "{d}/missing.json", "--as", "agent"], "'{d}/missing.json'", "pass the"),
    ("chat", ["chat", "--experiences", "{d}/broken.yaml", "--as", "agent"], "is not valid JSON",
     "not an experience library"),
    ("chat", ["chat", "--model", "{d}/model", "--scenario", "cs-delayed-order-001"], "config.json is not valid JSON",
     "save_pretrained"),
    # eval
    ("eval", ["eval", "--env", "sales_pack"], "unknown environment 'sales_pack'", "Did you mean 'sales'"),
    ("eval", ["eval", "--env", "{d}/missing"], "does not exist", "pass an existing pack"),
    ("eval", ["eval", "--env", "{d}/pack"], "pack.yaml: field", "fix the pack"),
    ("eval", ["eval", "--model", "{d}/missing"], "'{d}/missing' is not a model folder", "pass a folder"),
    ("eval", ["eval", "--model", "{d}/model", "--scenarios", "1", "--k", "1"], "config.json is not valid JSON",
     "save_pretrained"),
    ("eval", ["eval", "--reward", "{d}/broken.yaml"], "(line 1, column 4)", "fix the YAML syntax near line 1"),
    ("eval", ["eval", "--reward", "nope"], "no reward preset 'nope'", "or pass the path"),
    ("eval", ["eval", "--scenarios", "999"], "scenarios=999", "use a number from 1 to"),
    # train
    ("train", ["train", "{d}/missing.yaml"], "'{d}/missing.yaml' does not exist", "pass the path of a YAML config"),
    ("train", ["train", "{d}/broken.yaml"], "{d}/broken.yaml: not valid YAML", "fix the YAML syntax near line 1"),
    ("train", ["train", "{d}/unknown_field.yaml"], "unknown field 'bogus_field'", "remove it"),
    ("train", ["train", "{d}/bad_env.yaml"], "unknown environment 'stateset/CustomerSrvice-v0'",
     "Did you mean 'stateset/CustomerService-v0'"),
    # report
    ("report", ["report", "{d}/missing"], "'{d}/missing/metrics.jsonl' does not exist", "pass a run folder"),
    ("report", ["report", "{d}/run"], "has no step records yet", "pass another run folder"),
    # show
    ("show", ["show", "{d}/missing.jsonl"], "cannot read transcripts '{d}/missing.jsonl'", "pass a file written"),
    ("show", ["show", "{d}/t.jsonl"], "{d}/t.jsonl:1: not a transcript record", "pass a file written"),
    ("show", ["show", "{d}"], "is a folder", "pass a transcripts file"),
    ("show", ["show", "{d}/ok.transcripts.jsonl", "--scenario", "cs-ship-eta-00"],
     "--scenario 'cs-ship-eta-00' is not in these transcripts", "Did you mean 'cs-ship-eta-009'"),
    ("show", ["show", "{d}/ok.transcripts.jsonl", "--diff", "{d}/missing.jsonl"], "cannot read transcripts",
     "pass a file written"),
    # serve
    ("serve", ["serve", "--model", "{d}/missing"], "model '{d}/missing' is not a folder", "pass 'default'"),
    ("serve", ["serve", "--model", "{d}/model", "--allow-no-auth"], "config.json is not valid JSON",
     "save_pretrained"),
]


def _fill(x, d):
    return x.replace("{d}", str(d))


@pytest.mark.parametrize(("verb", "argv", "what", "fix"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_one_line_error_with_the_fix(bad, capsys, verb, argv, what, fix):
    rc = main([_fill(a, bad) for a in argv])
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert rc == 2, text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error: ") and "Traceback" not in text
    assert _fill(what, bad) in text and _fill(fix, bad) in text, text


@pytest.mark.parametrize("argv", [["demo", "--seed", "x"], ["eval", "--k", "many"], ["chat", "--as", "robot"],
                                  ["show"], ["nonsense"]])
def test_usage_errors_are_one_line_with_the_help_command(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert "error: " in err and "--help`" in err


def test_yaml_marks_fold_into_one_line():
    msg = ('x.yaml: not valid YAML: while parsing a flow sequence\n  in "<unicode string>", line 1, column 4:\n'
           '    a: [1\n       ^\nexpected \',\' or \']\', but got \'<stream end>\'\n'
           '  in "<unicode string>", line 2, column 1:\n    \n    ^')
    assert one_line(msg) == ("x.yaml: not valid YAML: while parsing a flow sequence (line 1, column 4) expected ',' "
                             "or ']', but got '<stream end>' (line 2, column 1); fix the YAML syntax near line 1")
    assert one_line("plain message") == "plain message"


def test_real_process_prints_no_traceback_and_chat_takes_a_pack_folder(tmp_path):
    from stateset_agents.envs import builtin_pack_dirs

    run = [sys.executable, "-m", "stateset_agents"]
    out = subprocess.run([*run, "chat", "--env", "stateset/Nope-v0", "--as", "agent"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout
    assert out.stdout.strip().startswith("error: unknown environment 'stateset/Nope-v0'")
    folder = str(builtin_pack_dirs()["customer_service"])
    out = subprocess.run([*run, "chat", "--env", folder, "--scenario", "cs-delayed-order-001", "--as", "agent"],
                         input="Your order number please?\nThanks, bye [END]\n", capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "The order number is ORD-1042." in out.stdout and "ended by agent" in out.stdout
