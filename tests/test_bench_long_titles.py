"""benchmarks/bench_long_titles.py: table rows rebuilt from a run's files and the
``--summary`` ablation plot, on hand-written run directories (no training, no evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_long_titles")


@pytest.fixture(scope="module")
def catalog_data(tmp_path_factory):
    """A small generated long-title catalog in ``<root>/data`` and its tables."""
    from recsysllm.data.sources import load_dataset_by_name
    from recsysllm.data.synthetic import write_long_title_category

    root = tmp_path_factory.mktemp("bench_long_titles")
    write_long_title_category(
        root / "data", category="LongTitles", seed=0, num_items=200, num_families=6, num_users=300
    )
    tables = load_dataset_by_name("amazon", str(root / "data"), category="LongTitles")
    return root, tables


@pytest.fixture
def word_tokenizer(monkeypatch):
    """The checkpoint's tokenizer replaced by one token per word (name lengths by hand)."""
    import recsysllm.tokenization

    class Words:
        def encode_entity(self, name: str) -> tuple[str, ...]:
            return tuple(name.split())

    def load(path, saved=False):
        assert Path(path).name == "tokenizer" and saved
        return Words()

    monkeypatch.setattr(recsysllm.tokenization, "load_tokenizer", load)


def pick_items(tables) -> dict[str, str]:
    """Letter -> raw item id: a1, a2, a3 of one brand, b, c, d, e of four other brands."""
    columns = tables.items.to_dict()
    by_brand: dict[str, list[str]] = {}
    for item, brand in zip(columns["item"], columns["brand"], strict=True):
        by_brand.setdefault(brand, []).append(item)
    big = next(items for items in by_brand.values() if len(items) >= 3)
    others = [items[0] for items in by_brand.values() if items is not big][:4]
    return dict(zip(["a1", "a2", "a3", "b", "c", "d", "e"], [*big[:3], *others], strict=True))


def capped_keys(tables, ids: dict[str, str]) -> dict[str, str]:
    """Letter -> catalog key: the title's first 4 words; the a-items share them, so the
    second and third get " #2" / " #3" (lengths 4, 5, 5, 4, 4, 4, 4 words)."""
    columns = tables.items.to_dict()
    title_of = dict(zip(columns["item"], columns["title"], strict=True))
    keys = {letter: " ".join(title_of[raw].split()[:4]) for letter, raw in ids.items()}
    assert keys["a1"] == keys["a2"] == keys["a3"]
    assert len({keys[x] for x in ("a1", "b", "c", "d", "e")}) == 5
    keys["a2"] += " #2"
    keys["a3"] += " #3"
    return keys


# Top lists per system (letters), several of them per user; the ones under a variant or
# system the table does not read would change every diversity number if they were counted.
TOP = {
    "model": [["a1", "a2", "b"], ["a1", "a3", "c"], ["a1", "a2", "a3"], ["b", "a2", "d"]],
    "model+pmi": [["a1", "b", "c"], ["d", "b", "a1"], ["b", "c", "d"], ["a3", "b", "c"]],
    "SASRec": [["c", "d", "e"], ["e", "b", "a1"]],
    "popularity": [["a1", "a2"], ["a1", "a2"], ["a1", "a2"], ["a1", "a2"]],
}
IGNORED = [
    ("model", "candidates", ["e", "e", "e"]),
    ("random", "all_items", ["e", "e", "e"]),
]
# Hand-counted from TOP, catalog of 7 items (a1 a2 a3 b c d e; brands A A A B C D E).
EXPECTED_DIVERSITY = {
    # model: 12 slots; a1 3, a2 3, a3 2, b 2, c 1, d 1; brand A 8
    "model": {"coverage": 6 / 7, "top item": 3 / 12, "top brand": 8 / 12, "prefix group": 8 / 12},
    # model+pmi: 12 slots; b 4, c 3, a1 2, d 2, a3 1; brand A 3, B 4
    "model+pmi": {
        "coverage": 5 / 7,
        "top item": 4 / 12,
        "top brand": 4 / 12,
        "prefix group": 4 / 12,
    },
    # SASRec: 6 slots; e 2, c d b a1 1; brand E 2
    "SASRec": {"coverage": 5 / 7, "top item": 2 / 6, "top brand": 2 / 6, "prefix group": 2 / 6},
    # popularity: 8 slots; a1 4, a2 4; brand A 8
    "popularity": {"coverage": 2 / 7, "top item": 4 / 8, "top brand": 1.0, "prefix group": 1.0},
}
# system -> (HR@10, its stderr, NDCG@10, its stderr, users)
METRICS = {
    "model": (0.375, 0.0218, 0.1875, 0.0143, 4),
    "model+pmi": (0.3125, 0.0207, 0.15625, 0.0121, 4),
    "SASRec": (0.5, 0.025, 0.3, 0.02, 4),
    "popularity": (0.125, 0.0125, 0.0625, 0.006, 4),
}


def aggregated(hr, hr_se, ndcg, ndcg_se, users) -> list[dict]:
    """The "all" row of sequential all-item ranking, between rows the table must skip."""

    def row(variant, split, scale):
        return {
            "family": "sequential",
            "variant": variant,
            "split": split,
            "users": users if scale == 1 else users + 7,
            "metrics": {"HR@10": hr * scale, "NDCG@10": ndcg * scale},
            "stderr": {"HR@10": hr_se * scale, "NDCG@10": ndcg_se * scale},
        }

    return [
        row("all_items", "seen", 0.5),
        row("candidates", "all", 0.25),
        row("all_items", "all", 1),
    ]


def make_run(bench, root: Path, tables, name: str, cap: str, steps: int, scale: float) -> Path:
    """``root/name`` as a bench run leaves it: ``run/final/`` (catalog, config, meta; no
    weights, the tokenizer is ``word_tokenizer``) and ``eval/`` with METRICS x ``scale``."""
    from recsysllm.checkpoint_meta import CheckpointMeta, write_meta
    from recsysllm.config import config_from_dict
    from recsysllm.data.catalog import EntityCatalog

    run_dir = root / name
    final = run_dir / "run" / "final"
    final.mkdir(parents=True)
    ids = pick_items(tables)
    keys = capped_keys(tables, ids)
    EntityCatalog(tables.name, {keys[x]: ids[x] for x in ids}, {}).save(final / "catalog.json")
    args = bench.parse_args(["--out-dir", str(root), "--disambiguation", "number"])
    config_from_dict(bench.recipe(args, cap, run_dir), where="test").save_yaml(
        final / "config.yaml"
    )
    write_meta(final, CheckpointMeta(None, "base", "tokenizer", lora=False, step=steps))
    document = {
        "model": {"aggregated": aggregated(*_scaled("model", scale))},
        "baselines": {
            system: {"aggregated": aggregated(*_scaled(system, scale))}
            for system in ("SASRec", "model+pmi", "popularity")
        }
        | {"random": {"aggregated": aggregated(0.01, 0.001, 0.005, 0.001, 4)}},
        "rows": {"model+pmi": {"alphas": {"all_items": 0.3, "candidates": 0.1}}},
    }
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text(json.dumps(document))
    lines = [
        {"system": system, "variant": "all_items", "top": [[keys[x], -1.0] for x in top]}
        for system, tops in TOP.items()
        for top in tops
    ]
    lines += [
        {"system": system, "variant": variant, "top": [[keys[x], -1.0] for x in top]}
        for system, variant, top in IGNORED
    ]
    with open(run_dir / "eval" / "outcomes.jsonl", "w") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)
    return run_dir


def _scaled(system: str, scale: float) -> tuple:
    hr, hr_se, ndcg, ndcg_se, users = METRICS[system]
    return hr * scale, hr_se * scale, ndcg * scale, ndcg_se * scale, users


def test_run_rows_read_the_written_numbers(bench, catalog_data, word_tokenizer, tmp_path):
    root, tables = catalog_data
    run_dir = make_run(bench, tmp_path, tables, "long-cap-4-number", "4", steps=123, scale=1)
    rows = bench.run_rows(run_dir, tables, "4 (number)", 12.4, 56.6)
    assert [r["system"] for r in rows] == ["model", "model+pmi", "SASRec", "popularity"]
    for r in rows:
        hr, hr_se, ndcg, ndcg_se, users = METRICS[r["system"]]
        assert r["HR@10"] == (hr, hr_se)
        assert r["NDCG@10"] == (ndcg, ndcg_se)
        assert r["users"] == users
        for name, value in EXPECTED_DIVERSITY[r["system"]].items():
            assert r[name] == pytest.approx(value), (r["system"], name)
        assert r["alpha"] == (0.3 if r["system"] == "model+pmi" else None)
        assert r["cap"] == "4 (number)"
        assert r["steps"] == 123
        assert r["names"] == "4 / 5 (2 numbered)"  # word counts 4 5 5 4 4 4 4
    table = bench.markdown(rows).splitlines()
    assert table[2] == (
        "| 4 (number) | model | 4 | 0.3750 ± 0.0218 | 0.1875 ± 0.0143 | 0.857 | 0.250 "
        "| 0.667 | 0.667 | 4 / 5 (2 numbered) | 123 | 12 | 57 |"
    )
    assert table[3].startswith("| 4 (number) | model+pmi (alpha 0.3) | 4 |")
    unmeasured = bench.markdown(bench.run_rows(run_dir, tables, "4 (number)", None, None))
    assert all(line.endswith("| 123 | - | - |") for line in unmeasured.splitlines()[2:])


def test_summary_table_and_plot(bench, catalog_data, word_tokenizer, monkeypatch, capsys):
    import recsysllm.data.sources

    root, tables = catalog_data
    # Directory names that disagree with the configs: the labels must come from the configs.
    capped = make_run(bench, root, tables, "long-cap-99-words", "4", steps=123, scale=1)
    full = make_run(bench, root, tables, "long-cap-7-words", "none", steps=321, scale=0.5)
    loads = []
    real_load = recsysllm.data.sources.load_dataset_by_name

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(recsysllm.data.sources, "load_dataset_by_name", counting_load)
    args = bench.parse_args(["--summary", str(capped), str(full), "--plot", "unused.png"])
    runs = bench.summary(args)
    assert loads == [("amazon", str((root / "data").resolve()))]  # one data directory, loaded once
    assert [label for label, _ in runs] == ["4 number", "none"]
    assert [r["cap"] for r in runs[0][1]] == ["4 (number)"] * 4
    assert [r["cap"] for r in runs[1][1]] == ["none"] * 4
    assert [r["steps"] for r in runs[1][1]] == [321] * 4
    assert runs[1][1][0]["HR@10"] == (0.375 * 0.5, 0.0218 * 0.5)

    plot = root / "plots" / "summary.png"
    argv = ["--summary", str(capped), str(full), "--plot", str(plot)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| 4 (number) | model | 4 | 0.3750 ± 0.0218 |" in printed
    assert "| none | model | 4 | 0.1875 ± 0.0109 |" in printed
    assert printed.count("| - | - |") == 8
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    plot.write_bytes(b"stale")
    assert bench.main(argv) == 0
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in plot.parent.iterdir()) == ["summary.png"]  # no temp file left


def test_summary_refuses_a_run_of_other_data(bench, catalog_data, word_tokenizer, tmp_path):
    root, tables = catalog_data
    run_dir = make_run(bench, tmp_path, tables, "long-cap-4-number", "4", steps=1, scale=1)
    args = bench.parse_args(["--summary", str(run_dir), "--plot", "x.png", "--data", "ml100k"])
    with pytest.raises(SystemExit, match="trained on 'amazon' data"):
        bench.summary(args)
    with pytest.raises(SystemExit):
        bench.parse_args(["--summary", str(run_dir)])  # --plot missing
