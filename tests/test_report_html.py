"""`stateset-agents report RUN_DIR` writes RUN_DIR/report.html: parsed here and checked for its curves, the
before/after table, every evaluation transcript with its filters, escaping, and that nothing loads from a network."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from stateset_agents.cli import main
from stateset_agents.training.report_html import build_html, evaluation_reports
from stateset_agents.transcripts import read_transcripts, write_transcripts
from tests.test_transcripts import QUIT, SOLVED, _report

TOY = str(Path(__file__).parent / "training" / "toy_pack")


class Page(HTMLParser):
    """Tags with attributes, the text under each episode, script bodies, option values per select."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.scripts, self.options, self.episodes = [], [], {}, []
        self._select, self._in_script, self._ep_depth, self._depth = None, False, None, 0
        self.text = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self._depth += tag not in ("meta", "br", "input")
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        if tag == "select":
            self._select = a["id"]
            self.options[self._select] = []
        if tag == "option" and self._select:
            self.options[self._select].append(a["value"])
        if tag == "details" and "ep" in a.get("class", "").split():
            self.episodes.append({**a, "text": ""})
            self._ep_depth = self._depth

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        if tag == "select":
            self._select = None
        if tag == "details" and self._ep_depth == self._depth:
            self._ep_depth = None
        self._depth -= 1

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        if self._ep_depth is not None:
            self.episodes[-1]["text"] += data
        self.text.append(data)


def _metrics(run: Path, steps=4):
    rows = [{"step": s, "reward": 0.1 * s, "reward_std": 0.05, "success_rate": 0.25 * (s - 1),
             "components/outcome": 0.2 * s, "components/efficiency": 0.9, "kl": 0.01 * s, "clip_fraction": 0.1,
             "grad_norm": 1.0} for s in range(1, steps + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
async def grpo_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _metrics(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"algorithm": "grpo", "env": "customer_service",
                                                     "model": "default", "max_steps": 4}))
    (await _report(solve=())).save(run / "eval_before.json")
    (await _report()).save(run / "eval_after.json")
    return run


def _no_network(page: Page):
    for tag, a in page.tags:
        assert tag not in ("link", "iframe", "img", "object", "embed") or a.get("src", "").startswith("data:"), tag
        for name in ("src", "href", "action", "xlink:href"):
            v = a.get(name)
            assert v is None or v.startswith(("#", "data:")), (tag, name, v)
        if tag == "script":
            assert "src" not in a
    assert all("fetch(" not in s and "XMLHttpRequest" not in s and "import(" not in s for s in page.scripts)


async def test_report_page_holds_curves_table_and_every_transcript(grpo_run, capsys):
    assert main(["report", str(grpo_run)]) == 0
    assert f"report: {grpo_run / 'report.html'}" in capsys.readouterr().out
    page = Page((grpo_run / "report.html").read_text())
    _no_network(page)
    text = " ".join(page.text)
    assert "algorithm grpo" in text and "4 steps" in text
    # the curves: one inline SVG with the reward, success and KL series labelled
    [svg] = [a for t, a in page.tags if t == "svg"]
    assert "viewbox" in svg and "width" not in svg  # scales with the page
    for label in ("reward (mean)", "success rate", "kl", "clip_fraction", "outcome", "efficiency"):
        assert label in page.text, label
    # the before/after table: success 0 -> 0.5 over 2 scenarios x k=2, the same seeds, 2 episodes flipped
    cells = [d.strip() for d in page.text]
    i = cells.index("success rate", cells.index("before"))
    assert cells[i + 1:i + 4] == ["0.000", "0.500", "+0.500"]
    assert "Paired episodes (same scenario, trial and seed): FAIL → PASS 2, PASS → FAIL 0, unchanged 2" in text
    # every evaluation transcript, with the data the filters use
    assert len(page.episodes) == 8
    assert sorted((e["data-tag"], e["data-scenario"], e["data-outcome"]) for e in page.episodes) == sorted(
        [("before", s, "fail") for s in (SOLVED, QUIT) for _ in range(2)]
        + [("after", SOLVED, "pass")] * 2 + [("after", QUIT, "fail")] * 2)
    assert page.options == {"f-tag": ["", "after", "before"], "f-scenario": ["", *sorted([SOLVED, QUIT])],
                            "f-outcome": ["", "pass", "fail"]}
    solved = next(e for e in page.episodes if e["data-tag"] == "after" and e["data-outcome"] == "pass")
    rec = next(r for r in read_transcripts(grpo_run / "eval_after.transcripts.jsonl") if r.success)
    call = next(m for m in rec.messages if m["tool_calls"])["tool_calls"][0]["function"]
    assert f"→ {call['name']}({call['arguments']})" in solved["text"]
    for m in rec.messages[1:]:
        assert m["content"] in solved["text"]
    assert "'f-scenario'" in page.scripts[0] and "dataset.outcome" in page.scripts[0]


async def test_message_text_is_escaped(grpo_run):
    path = grpo_run / "eval_after.transcripts.jsonl"
    recs = read_transcripts(path)
    evil = '</pre></details><script>alert("x")</script><img src="http://example.com/a.png">'
    recs[0].messages[1]["content"] = evil
    write_transcripts(path, recs)
    html = build_html(grpo_run)
    page = Page(html)
    assert len(page.scripts) == 1 and not [t for t, _ in page.tags if t == "img"]
    assert evil in "".join(page.text)  # shown as text, exactly
    _no_network(page)


async def test_training_free_run_uses_per_seed_reports_with_spread(tmp_path):
    run = tmp_path / "tf"
    (run / "eval").mkdir(parents=True)
    _metrics(run, steps=2)
    for tag, solve in (("before", ()), ("after", (SOLVED,))):
        reports = [await _report(solve=solve, seed=s) for s in (0, 1)]
        for s, r in zip((0, 1), reports, strict=True):
            r.save(run / "eval" / f"{tag}-seed{s}.json")
        (run / f"eval_{tag}.json").write_text(json.dumps({"tag": tag, "per_seed": []}))  # the summary shape
    assert [r.seed for r in evaluation_reports(run, "after")] == [0, 1]
    page = Page(build_html(run))
    cells = [d.strip() for d in page.text]
    i = cells.index("success rate", cells.index("before"))
    assert cells[i + 1:i + 4] == ["0.000 ± 0.000 (n=2)", "0.500 ± 0.000 (n=2)", "+0.500"]
    assert len(page.episodes) == 16 and page.options["f-tag"] == ["", "after-seed0", "after-seed1",
                                                                  "before-seed0", "before-seed1"]


def test_train_cli_writes_transcripts_and_the_report(tiny_model_path, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "algorithm": "grpo", "model": str(tiny_model_path), "env": TOY, "reward": "customer_service",
        "max_steps": 1, "max_new_tokens": 8, "scenarios_per_step": 2, "group_size": 2, "use_lora": False,
        "progress": False, "save_every": 0, "eval_k": 1, "output_dir": str(tmp_path / "run")}))
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "run"
    before = read_transcripts(run / "eval_before.transcripts.jsonl")
    after = read_transcripts(run / "eval_after.transcripts.jsonl")
    assert [(t.scenario_id, t.seed) for t in before] == [(t.scenario_id, t.seed) for t in after]
    assert all(t.messages and t.messages[0]["role"] == "system" for t in before + after)
    page = Page((run / "report.html").read_text())
    assert len(page.episodes) == len(before) + len(after)
    capsys.readouterr()
    assert main(["show", str(run / "eval_before.transcripts.jsonl"), "--diff",
                 str(run / "eval_after.transcripts.jsonl")]) == 0
    assert f"{len(before)} pairs shown" in capsys.readouterr().out
