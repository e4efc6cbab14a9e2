"""A small Amazon-2018-format category (< 100 items) trains and evaluates with the demo recipe.

The files are generated here (bad_input_corpus.write_amazon_2018: 60 reviewers x 8 of 40
kettles, gzipped JSON lines with the 2018 fields). With 99 direct negatives asked for and
only 32 items left per user, every direct list gets 32 negatives, recorded in the split
notes and in results.json. The trained checkpoint is then damaged in the ways the issue
lists (flipped payload bytes, truncation, a half-written tokenizer directory).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from bad_input_corpus import write_amazon_2018

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def amazon_run(tmp_path_factory):
    from recsysllm.config import load_config
    from recsysllm.evaluation.cli import main as evaluate_main
    from recsysllm.training import train

    root = tmp_path_factory.mktemp("amazon")
    write_amazon_2018(root / "data", category="Kitchen")
    recipe = yaml.safe_load((REPO / "configs" / "tiny_ml100k.yaml").read_text())
    recipe["data"].update(source="amazon", path=str(root / "data"), category="Kitchen")
    recipe["data"]["num_negatives"] = 99  # more than the catalog can give
    recipe["data"]["max_length"] = 1024  # room for every candidate of a full list
    recipe["model"]["from_scratch"]["max_sequence_length"] = 1024  # positions to match
    recipe["data"]["examples_per_epoch"] = 48  # x 1 epoch / 16 per step = 3 steps
    recipe["train"].update(output_dir=str(root / "run"), logging_steps=1, warmup_steps=1)
    recipe["eval"]["limit"] = 3
    config_path = root / "kitchen.yaml"
    config_path.write_text(yaml.safe_dump(recipe))
    config = load_config(config_path)
    final = train(config)
    results = root / "eval" / "results.json"
    code = evaluate_main(
        ["--config", str(config_path), "--checkpoint", str(final), "--out", str(results)]
    )
    assert code == 0
    return {"root": root, "config": config, "final": final, "results": results}


def test_small_amazon_category_trains_and_evaluates_every_demo_family(amazon_run):
    document = json.loads(amazon_run["results"].read_text())
    text = json.dumps(document)
    # 40 items, each user reviewed 8: 32 negatives per direct list instead of 99.
    assert '"direct_negatives": 32' in text
    assert '"direct negatives per list": 32' in text
    families = amazon_run["config"].eval.families  # the demo's: sequential and direct
    assert set(families) == {"sequential", "direct"}
    assert {row["family"] for row in document["model"]["aggregated"]} == set(families)
    candidates = json.loads((amazon_run["final"] / "candidates.json").read_text())
    assert candidates["num_negatives"] == 32
    assert {len(keys) for keys in candidates["test"].values()} == {33}


def _copy(amazon_run, name):
    target = amazon_run["root"] / name
    shutil.copytree(amazon_run["final"], target)
    return target


def test_flipped_bytes_in_the_weights_are_refused(amazon_run):
    from recsysllm.checkpoint_meta import CorruptWeightsError
    from recsysllm.pipeline import load_checkpoint_for_inference

    checkpoint = _copy(amazon_run, "flipped")
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + (len(data) - 8 - header) // 2] ^= 0x40  # one bit inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptWeightsError, match=r"flipped/model\.safetensors: sha256 .* differs"):
        load_checkpoint_for_inference(checkpoint)


def test_truncated_weights_name_the_file(amazon_run):
    from recsysllm.modeling import load_glm_checkpoint
    from recsysllm.modeling.checkpoint import CheckpointError

    checkpoint = _copy(amazon_run, "truncated")
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated/model\.safetensors: cannot be read"):
        load_glm_checkpoint(checkpoint)


def test_half_written_tokenizer_directory_is_refused(amazon_run):
    """A sentencepiece.model without its config is not read as glm-10b-chinese's tokenizer."""
    from recsysllm.pipeline import build_tokenizer

    output_dir = amazon_run["root"] / "half"
    shutil.copytree(amazon_run["final"] / "tokenizer", output_dir / "tokenizer")
    (output_dir / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(
        ValueError, match=r"tokenizer_config\.json: missing or not written by recsysllm"
    ):
        build_tokenizer(amazon_run["config"].tokenizer, None, output_dir)
