"""Downstream API: loading checkpoints (and refusing mismatched ones), queries, CLI."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import (
    TINY_CORPUS,
    TINY_TITLES,
    assert_command_picks_the_gpu_when_visible,
    make_tiny_glm_config,
)

from recsysllm.api import Recommender, recommend_main
from recsysllm.checkpoint_meta import (
    CheckpointMeta,
    CheckpointMismatchError,
    model_fingerprint,
    write_meta,
)
from recsysllm.config import Config, LoraArgs, ModelArgs, TokenizerArgs
from recsysllm.data.catalog import EntityCatalog, attribute_key
from recsysllm.prompts import load_prompts

CATALOG = EntityCatalog(
    "toy",
    {title: str(i) for i, title in enumerate(TINY_TITLES)},
    {attribute_key("age", "25-34"): "25-34", attribute_key("age", "18-24"): "18-24"},
)


def _random_glm(config, seed):
    from recsysllm.modeling import GLMForConditionalGeneration

    torch.manual_seed(seed)
    return GLMForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A LoRA checkpoint laid out as training writes it, on a saved random base GLM."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("api")
    glm_config = make_tiny_glm_config()
    base_dir, other_base_dir, checkpoint = root / "base", root / "other_base", root / "checkpoint"
    base = _random_glm(glm_config, seed=0)
    base.save_pretrained(base_dir)
    _random_glm(glm_config, seed=1).save_pretrained(other_base_dir)
    fingerprint = model_fingerprint(base)
    peft_model = get_peft_model(
        base, LoraConfig(r=2, lora_alpha=4, target_modules=["query_key_value", "dense"])
    )
    peft_model.save_pretrained(checkpoint)

    config = Config(
        model=ModelArgs(base_model=str(base_dir)),
        tokenizer=TokenizerArgs(path=str(checkpoint / "tokenizer")),
        lora=LoraArgs(enabled=True, r=2),
    )
    config.data.max_length = 128
    config.eval.num_beams = 10
    config.save_yaml(checkpoint / "config.yaml")
    tiny_tokenizer.save_pretrained(checkpoint / "tokenizer")
    load_prompts().save(checkpoint / "prompts")
    CATALOG.save(checkpoint / "catalog.json")
    meta = CheckpointMeta(
        base_model=str(base_dir),
        base_model_fingerprint=fingerprint,
        tokenizer_fingerprint=tiny_tokenizer.fingerprint,
        catalog_hash=CATALOG.hash,
        lora=True,
    )
    write_meta(checkpoint, meta)
    return {"checkpoint": checkpoint, "other_base": other_base_dir, "root": root}


@pytest.fixture(scope="module")
def recommender(lora_checkpoint):
    return Recommender.from_checkpoint(
        lora_checkpoint["checkpoint"], feature_templates={"age": "is {value} years old"}
    )


def test_recommend_returns_k_distinct_catalog_titles(recommender):
    history = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)"]
    ranked = recommender.recommend(history, {"age": "25-34"}, k=10)
    titles = [title for title, _ in ranked]
    assert len(titles) == 10 and len(set(titles)) == 10
    assert set(titles) <= set(CATALOG.item_keys)
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    excluded = recommender.recommend(history, k=10, exclude_history=True)
    assert not {title for title, _ in excluded} & set(history)


def test_score_candidates_ranks_every_candidate(recommender):
    candidates = ["Babe (1995)", "Heat (1995)", "Scream (1996)"]
    ranked = recommender.score_candidates(["Toy Story (1995)"], candidates)
    assert sorted(title for title, _ in ranked) == sorted(candidates)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_rating_and_explanation_run(recommender):
    rating = recommender.predict_rating({"age": "18-24"}, "Heat (1995)", ["Fargo (1996)"])
    assert rating is None or 1.0 <= rating <= 5.0
    text = recommender.explain({"age": "18-24"}, "Heat (1995)", hint="fabric", max_new_tokens=5)
    assert isinstance(text, str)
    # An explicit template id is honoured only for the right family.
    with pytest.raises(ValueError, match="cannot serve this query"):
        recommender.predict_rating(None, "Heat (1995)", template_id="sequential-1")


def test_unknown_title_names_the_nearest_titles(recommender):
    with pytest.raises(
        KeyError, match=r"'Toy Story \(1996\)' is not in the catalog.*Toy Story \(1995\)"
    ):
        recommender.recommend(["Toy Story (1996)"])
    with pytest.raises(ValueError, match="user feature 'height'"):
        recommender.recommend(["Heat (1995)"], {"height": "tall"})


def test_raw_item_ids_translate_to_catalog_names_and_back(recommender):
    for name, item_id in CATALOG.item_ids.items():
        assert recommender.item_name(item_id) == name
        assert recommender.item_id(name) == item_id
    with pytest.raises(KeyError, match=r"item id 'x9' is not in the catalog"):
        recommender.item_name("x9")
    # An id where a name belongs: the error says whose id it is.
    with pytest.raises(KeyError, match=r"'3' is not in the catalog.*item id of 'Get Shorty"):
        recommender.recommend(["3"])


def test_refuses_a_different_catalog(lora_checkpoint, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(lora_checkpoint["checkpoint"], checkpoint)
    EntityCatalog("toy", {"Heat (1995)": "1"}, {}).save(checkpoint / "catalog.json")
    with pytest.raises(CheckpointMismatchError, match="entity catalog differs"):
        Recommender.from_checkpoint(checkpoint)


def test_refuses_a_different_tokenizer(lora_checkpoint, tmp_path):
    from recsysllm.modeling.glm.tokenization import train_sentencepiece_tokenizer

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(lora_checkpoint["checkpoint"], checkpoint)
    shutil.rmtree(checkpoint / "tokenizer")
    train_sentencepiece_tokenizer(TINY_CORPUS, checkpoint / "tokenizer", vocab_size=250)
    with pytest.raises(CheckpointMismatchError, match="tokenizer differs"):
        Recommender.from_checkpoint(checkpoint)


def test_refuses_a_different_base_model(lora_checkpoint):
    with pytest.raises(CheckpointMismatchError, match="base model differs"):
        Recommender.from_checkpoint(
            lora_checkpoint["checkpoint"], base_model=str(lora_checkpoint["other_base"])
        )


def test_recommend_cli_puts_the_model_on_the_gpu_when_one_is_visible(lora_checkpoint, monkeypatch):
    # As `recsysllm evaluate` does: the loaders default to CPU (transformers' default),
    # the commands to the GPU when one is visible.
    argv = ["--checkpoint", str(lora_checkpoint["checkpoint"]), "--user-history", "Heat (1995)"]
    assert_command_picks_the_gpu_when_visible(
        monkeypatch, lambda extra: recommend_main(argv + extra)
    )


def test_recommend_cli_prints_top_k(lora_checkpoint, capsys):
    argv = [
        "--checkpoint",
        str(lora_checkpoint["checkpoint"]),
        "--user-history",
        "Heat (1995)",
        "-k",
        "3",
    ]
    assert recommend_main(argv) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("  1. ")
    assert all(line.split(". ", 1)[1].split("\t")[0] in CATALOG.items for line in lines)
    assert (
        recommend_main(
            ["--checkpoint", str(lora_checkpoint["checkpoint"]), "--user-history", "Nope"]
        )
        == 2
    )
    assert "nearest catalog titles" in capsys.readouterr().err
    # Raw item ids in, and every line ends with its item's raw id.
    heat = CATALOG.item_ids["Heat (1995)"]
    ids_argv = ["--checkpoint", str(lora_checkpoint["checkpoint"]), "-k", "3"]
    assert recommend_main([*ids_argv, "--user-history-ids", heat]) == 0
    by_ids = capsys.readouterr().out.rstrip().splitlines()
    assert by_ids == lines  # the same query as by name
    for line in by_ids:
        name, _, item_id = line.split(". ", 1)[1].split("\t")
        assert CATALOG.item_ids[name] == item_id
    assert recommend_main([*ids_argv, "--user-history-ids", "x9"]) == 2
    assert "item id 'x9' is not in the catalog" in capsys.readouterr().err
