"""docs/DATA.md runs as written: its files and commands, on a generated table.

The fast test loads the page's mapping and recipe and parses its commands; the slow
one (``-m slow``, about a CPU minute) runs them all.

The page's ``yaml file=PATH`` blocks are written under a temporary directory, a
generated interactions table and title table take the place of the user's CSVs, and
every command of its ``bash`` blocks runs there in order (``recsysllm`` and
``python`` as this interpreter; training cut to ``max_steps=3`` and evaluation to
``--limit 3`` users), then its ``python`` block (SASRec cut to 2 epochs).
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsysllm.cli import COMMANDS
from recsysllm.config import load_config
from recsysllm.data.sources import load_dataset_by_name
from recsysllm.data.splits import build_splits
from recsysllm.evaluation.cli import build_parser as build_evaluate_parser

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "DATA.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_blocks() -> list[tuple[str, str, str]]:
    """(language, info after the language, body) of every fenced block, in page order."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in BLOCK.finditer(DOC.read_text())]


def write_tables(directory: Path, seed: int = 0) -> None:
    """my-shop/interactions.csv and items.csv: 120 users, 130 items, 10-16 events each.

    Direct candidates need 99 negatives the user never touched, so the 5-core catalog
    must keep well over 100 items.
    """
    rng = np.random.default_rng(seed)
    brands = ["Acme", "Borealis", "Cobalt", "Dune", "Ember"]
    kinds = [
        "Turbo Blender",
        "Trail Shoes",
        "Desk Lamp",
        "Rain Jacket",
        "Coffee Grinder",
        "Yoga Mat",
    ]
    titles = [f"{b} {k} {1000 * n}" for b in brands for k in kinds for n in range(1, 6)][:130]
    assert "Acme Turbo Blender 3000" in titles  # the page's recommend example names it
    directory.mkdir(parents=True)
    with open(directory / "items.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "title"])
        writer.writerows([f"p{i}", title] for i, title in enumerate(titles))
    with open(directory / "interactions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        for user in range(120):
            items = rng.choice(len(titles), size=int(rng.integers(10, 17)), replace=False)
            for step, item in enumerate(items):
                rating = int(rng.integers(1, 6))
                writer.writerow(
                    [f"u{user}", f"p{item}", rating, 1_600_000_000 + 3600 * (100 * user + step)]
                )


def command(line: str) -> list[str]:
    words = shlex.split(line)
    if words[0] == "recsysllm":
        words = [sys.executable, "-m", "recsysllm", *words[1:]]
        if words[3] == "train":
            words.append("max_steps=3")
        elif words[3] == "evaluate":
            words += ["--limit", "3"]
    elif words[0] == "python":
        words[0] = sys.executable
    return words


def page_commands() -> list[str]:
    """Every command line of the page's bash blocks, in order."""
    return [
        line
        for language, _, body in doc_blocks()
        if language == "bash"
        for line in body.splitlines()
        if line.strip()
    ]


def write_page_files(directory: Path) -> None:
    write_tables(directory / "my-shop")
    files = [(info, body) for _, info, body in doc_blocks() if info.startswith("file=")]
    assert {info for info, _ in files} == {"file=my-shop/mapping.yaml", "file=my-shop/tiny.yaml"}
    for info, body in files:
        (directory / info.removeprefix("file=")).write_text(body)


def test_the_data_page_files_load_and_its_commands_parse(tmp_path, monkeypatch):
    """Fast tier: the mapping and recipe load, every command names a real subcommand."""
    write_page_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = load_config("my-shop/tiny.yaml")
    assert config.data.source == "generic"
    splits = build_splits(load_dataset_by_name("generic", config.data.path), k=config.data.k_core)
    assert len(splits.users) == 120
    commands = page_commands()
    assert [shlex.split(line)[:2] for line in commands] == [
        ["python", "-c"],
        ["recsysllm", "train"],
        ["recsysllm", "evaluate"],
        ["recsysllm", "recommend"],
        ["recsysllm", "recommend"],
    ]
    for line in commands[1:]:
        assert shlex.split(line)[1] in COMMANDS
    evaluate_args = build_evaluate_parser().parse_args(shlex.split(commands[2])[2:])
    assert evaluate_args.checkpoint == f"{config.train.output_dir}/final"


@pytest.mark.slow
def test_the_data_page_runs_end_to_end(tmp_path):
    env = dict(
        os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false"
    )
    write_page_files(tmp_path)
    blocks = doc_blocks()
    outputs = []
    for line in page_commands():
        done = subprocess.run(command(line), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)

    # The load check reports the 5-core data: every user, most items.
    users, items = re.match(r"(\d+) users, (\d+) items,", outputs[0]).groups()
    assert int(users) == 120 and 100 < int(items) <= 130
    assert (tmp_path / "runs/my-shop/final").is_dir()
    results = (tmp_path / "runs/my-shop/eval/results.json").read_text()
    for family in ("sequential", "direct", "rating"):
        assert f'"{family}"' in results
    assert (tmp_path / "runs/my-shop/eval/results.md").is_file()
    # recommend prints catalog titles.
    with open(tmp_path / "my-shop/items.csv") as f:
        titles = {row[1] for row in csv.reader(f)}
    printed = [line.strip() for line in outputs[3].splitlines() if line.strip()]
    assert printed and any(title in line for line in printed for title in titles)
    # A query by raw item id; every line of both ends with its item's id.
    with open(tmp_path / "my-shop/items.csv") as f:
        ids = {row[1]: row[0] for row in csv.reader(f)}
    by_ids = [line.strip() for line in outputs[4].splitlines() if line.strip()]
    assert len(by_ids) == len(printed) == 5
    for line in printed + by_ids:
        name, _, item_id = line.split(". ", 1)[1].split("\t")
        assert ids[name] == item_id

    python_blocks = [body for language, _, body in blocks if language == "python"]
    assert len(python_blocks) == 1
    script = python_blocks[0].replace("SASRecConfig()", "SASRecConfig(max_epochs=2)")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(r"SASRec HR@10 [0-9.]+\n", done.stdout)
