"""``recsysllm demo`` wiring: which templates and users the evaluation step is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsysllm import demo
from recsysllm.config import load_config
from recsysllm.prompts import load_prompts


def test_demo_templates_are_one_seen_and_one_unseen_ranking_template_per_family():
    prompts = load_prompts()
    config = load_config(demo.DEFAULT_CONFIG)
    by_family: dict[str, list] = {}
    for template_id in demo.DEMO_TEMPLATES:
        family = template_id.rsplit("-", 1)[0]
        template = next(t for t in prompts.templates(family) if t.id == template_id)
        assert template.answer_type == "item"
        by_family.setdefault(family, []).append(template)
    assert set(by_family) == set(config.eval.families) == {"sequential", "direct"}
    for family, templates in by_family.items():
        assert sorted(t.seen for t in templates) == [False, True], family
        # sequential: all-item ranking (no candidates); direct: 1 of N candidates.
        assert {"candidates" in t.placeholders for t in templates} == {family == "direct"}
    # Training draws only seen templates, and the evaluated seen ones are among them.
    trained = set(config.data.train_templates)
    assert {t.id for ts in by_family.values() for t in ts if t.seen} <= trained


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Runs demo.main with fetching, training and evaluation replaced by recorders."""
    recorded: dict[str, object] = {}
    monkeypatch.setattr(demo, "fetch", lambda source, path: recorded.setdefault("fetch", path))

    def train(config):
        recorded["config"] = config
        return tmp_path / "final"

    def evaluate(argv):
        recorded["argv"] = argv
        return 0

    monkeypatch.setattr(demo.training, "train", train)
    monkeypatch.setattr(demo.evaluate_cli, "main", evaluate)
    return recorded


def _value(argv, flag):
    start = argv.index(flag) + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
    return argv[start:end]


def test_demo_evaluates_the_demo_templates_on_test(calls, tmp_path):
    assert demo.main(["--output-dir", str(tmp_path / "run"), "max_steps=3"]) == 0
    argv = calls["argv"]
    assert _value(argv, "--templates") == list(demo.DEMO_TEMPLATES)
    assert _value(argv, "--split") == ["test"]
    assert _value(argv, "--checkpoint") == [str(tmp_path / "final")]
    assert "--limit" not in argv  # eval.limit of the checkpoint's config decides
    assert "--no-fusion" in argv  # the fusion rows would take the demo past 10 minutes
    assert calls["config"].train.max_steps == 3
    assert calls["config"].train.output_dir == str(tmp_path / "run")


def test_demo_templates_all_and_limit(calls, tmp_path, capsys):
    demo.main(["--output-dir", str(tmp_path), "--templates", "all", "--limit", "7"])
    argv = calls["argv"]
    assert "--templates" not in argv
    assert _value(argv, "--limit") == ["7"]
    # The printed command adding the fusion rows is the same evaluation, written elsewhere.
    hint = capsys.readouterr().out.splitlines()[-1].split("recsysllm evaluate ")[1].split()
    assert "--no-fusion" not in hint and _value(hint, "--limit") == ["7"]
    assert _value(hint, "--out") == [str(tmp_path / "eval_fusion" / "results.json")]
    assert _value(hint, "--checkpoint") == _value(argv, "--checkpoint")
    demo.main(["--output-dir", str(tmp_path), "--templates", "direct-3"])
    assert _value(calls["argv"], "--templates") == ["direct-3"]
    demo.main(["--output-dir", str(tmp_path), "--fusion"])
    assert "--no-fusion" not in calls["argv"]  # the config's eval.fusion (on) decides


def test_demo_config_evaluates_every_test_user():
    """All test users (the issue's protocol), and fusion on for ``recsysllm evaluate``."""
    config = load_config(demo.DEFAULT_CONFIG)
    assert config.eval.limit is None
    assert config.eval.fusion and config.eval.sasrec
    assert Path(demo.DEFAULT_CONFIG).read_text().startswith("# ")
