"""benchmarks/plot_fusion_weights.py: the fusion row's valid curves read back from a
hand-written results.json, and the PNG written from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot():
    return load_benchmark("plot_fusion_weights")


def _results(tmp_path: Path, name: str, fusion: dict | None) -> Path:
    rows = {"enabled": ["model", "SASRec"], "SASRec": {}}
    if fusion is not None:
        rows["fusion"] = fusion
    path = tmp_path / name / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"split": "test", "rows": rows}))
    return path


FUSION = {
    "weights": {"all_items": 0.6, "candidates": 0.0},
    # keys as evaluate writes them (f"{w:g}"), in an order that sorts wrongly as text
    "valid_ndcg": {
        "all_items": {"1": 0.120, "0.95": 0.123, "0": 0.081, "0.6": 0.1285, "0.2": 0.106},
        "candidates": "no valid examples of this variant: 0 (the model alone)",
    },
    "metric": "NDCG@10",
    "chosen_on": {"split": "valid", "examples": 1886, "users": 943},
}


def test_curves_read_back_by_weight_and_variants_without_examples_skipped(plot, tmp_path):
    path = _results(tmp_path, "run", FUSION)
    (curve,) = plot.load_curves(path, "recipe")
    assert curve.label == "recipe" and curve.variant == "all_items"
    assert curve.points == ((0.0, 0.081), (0.2, 0.106), (0.6, 0.1285), (0.95, 0.123), (1.0, 0.120))
    assert curve.chosen == 0.6 and curve.metric == "NDCG@10" and curve.users == 943
    # the default label is the results file's folder
    assert plot.load_curves(path)[0].label == str(path.parent)


def test_a_file_without_a_fusion_row_is_named(plot, tmp_path):
    path = _results(tmp_path, "nofusion", None)
    with pytest.raises(ValueError, match=rf"{path}: no fusion row"):
        plot.load_curves(path)
    empty = dict(FUSION, valid_ndcg={"all_items": "no valid examples of this variant: 0"})
    path = _results(tmp_path, "nocurve", empty)
    with pytest.raises(ValueError, match="no valid curve"):
        plot.load_curves(path)
    unchosen = dict(FUSION, weights={"candidates": 0.0})  # a hand-edited file
    path = _results(tmp_path, "unchosen", unchosen)
    with pytest.raises(ValueError, match=rf"{path}: rows.fusion.weights has no chosen weight"):
        plot.load_curves(path)


def test_main_writes_a_png_per_run_and_prints_the_choice(plot, tmp_path, capsys):
    a = _results(tmp_path, "a", FUSION)
    b = _results(
        tmp_path, "b",
        dict(FUSION, weights={"all_items": 0.8, "candidates": 0.3},
             valid_ndcg={"all_items": {"0": 0.07, "0.8": 0.122, "1": 0.118},
                         "candidates": {"0": 0.3, "0.3": 0.31, "1": 0.29}}),
    )  # fmt: skip
    out = tmp_path / "figs" / "curve.png"
    assert plot.main([str(a), str(b), "--labels", "A", "B", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    printed = capsys.readouterr().out
    assert "A all_items: chosen w 0.6" in printed
    assert "B candidates: chosen w 0.3, 0 0.3000, 0.3 0.3100, 1 0.2900" in printed
    assert not list(out.parent.glob("*.tmp*"))  # written through a temp file, renamed


def test_main_refuses_bad_input_with_one_line(plot, tmp_path, capsys):
    missing = tmp_path / "none" / "results.json"
    assert plot.main([str(missing), "--out", str(tmp_path / "x.png")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert plot.main([str(broken), "--out", str(tmp_path / "x.png")]) == 2
    assert f"{broken}: not a results.json" in capsys.readouterr().err
    a = _results(tmp_path, "a", FUSION)
    with pytest.raises(SystemExit):
        plot.main([str(a), "--labels", "A", "B", "--out", str(tmp_path / "x.png")])
    assert "2 labels for 1 results files" in capsys.readouterr().err
