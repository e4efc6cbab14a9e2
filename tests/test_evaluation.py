"""Evaluation harness: reports from hand-built outcomes, and end to end on a tiny GLM."""

from __future__ import annotations

import json
import math
import shutil

import matplotlib.image
import pytest

from recsysllm.evaluation.evaluator import EvaluationResults, ExampleOutcome
from recsysllm.evaluation.metrics import UNPARSEABLE_RATING_RULE
from recsysllm.evaluation.report import write_reports


def _hand_built_results() -> tuple[EvaluationResults, dict[str, EvaluationResults]]:
    def ranked(template, seen, rank, variant="all_items", family="sequential"):
        return ExampleOutcome(
            family, template, seen, variant, "u", "x", rank=rank, rank_excluding_history=rank
        )

    model = EvaluationResults(
        system="model",
        exclude_history=True,
        outcomes=[
            ranked("2-1", True, 1),
            ranked("2-1", True, 12),
            ranked("2-9", False, 4),
            ranked("5-1", True, 2, "candidates", "direct"),
            ExampleOutcome("rating", "1-1", True, "rating", "u", "4", rating=4.0, text="4"),
            ExampleOutcome("rating", "1-1", True, "rating", "u", "2", rating=None, text="great"),
            ExampleOutcome("rating", "1-6", False, "yesno", "u", "yes", correct=True),
            ExampleOutcome(
                "explanation", "3-1", True, "text", "u", "soft fabric fits well", text="soft fabric"
            ),
        ],
    )
    popularity = EvaluationResults(
        system="popularity",
        exclude_history=True,
        outcomes=[ranked("2-1", True, 3), ranked("2-1", True, None), ranked("2-9", False, 1)],
    )
    return model, {"popularity": popularity}


def test_reports_hold_every_field(tmp_path):
    model, baselines = _hand_built_results()
    metadata = {"checkpoint": "runs/x", "config": {"seed": 1}, "catalog_hash": "abc", "seed": 7}
    paths = write_reports(model, baselines, metadata, tmp_path / "eval" / "results.json")

    document = json.loads(paths["json"].read_text())
    for key in ("checkpoint", "config", "catalog_hash", "seed", "protocol", "model", "baselines"):
        assert key in document
    assert document["protocol"]["unparseable_rating_rule"] == UNPARSEABLE_RATING_RULE
    rows = {(r["family"], r["variant"], r["split"]): r for r in document["model"]["aggregated"]}
    seen = rows[("sequential", "all_items", "seen")]
    assert seen["count"] == 2 and seen["templates"] == ["2-1"]
    assert seen["metrics"]["HR@1"] == 0.5 and seen["metrics"]["HR@10"] == 0.5
    assert rows[("sequential", "all_items", "unseen")]["metrics"]["NDCG@5"] == pytest.approx(
        1 / math.log2(5)
    )
    assert "HR@5 excl. history" in seen["metrics"]
    # The unparseable rating counts and scores as the worst case (target 2 -> 5: error 3).
    rating = rows[("rating", "rating", "seen")]
    assert rating["unparseable"] == 1
    assert rating["metrics"]["MAE"] == pytest.approx(1.5)
    assert rating["metrics"]["RMSE"] == pytest.approx(math.sqrt(9 / 2))
    assert rows[("rating", "yesno", "unseen")]["metrics"]["accuracy"] == 1.0
    assert 0 < rows[("explanation", "text", "seen")]["metrics"]["ROUGE-1"] < 1
    pop = {(r["split"]): r for r in document["baselines"]["popularity"]["aggregated"]}
    assert pop["seen"]["metrics"]["HR@5"] == 0.5

    markdown = paths["markdown"].read_text()
    assert "| popularity | seen |" in markdown and "| model | unseen |" in markdown
    assert "## Model per template" in markdown
    image = matplotlib.image.imread(paths["plot"])
    assert image.ndim == 3 and image.shape[0] > 100
    # Atomic writes leave no temp files behind.
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == [
        "results.json",
        "results.md",
        "results.png",
    ]


# --------------------------------------------------------------------------- end to end

FEATURE_TEMPLATES = {"age": "is {value} years old"}


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A random tiny GLM, a 20-title catalog and examples of every family/variant."""
    import torch
    from conftest import TINY_CORPUS, TINY_TITLES, make_tiny_glm_config

    from recsysllm.data.catalog import EntityCatalog, attribute_key
    from recsysllm.data.tasks import render_example
    from recsysllm.modeling import GLMForConditionalGeneration
    from recsysllm.prompts import load_prompts
    from recsysllm.tokenization import train_sentencepiece_tokenizer

    tokenizer = train_sentencepiece_tokenizer(
        TINY_CORPUS, tmp_path_factory.mktemp("spm"), vocab_size=300
    )
    config = make_tiny_glm_config()
    torch.manual_seed(0)
    model = GLMForConditionalGeneration(config).eval()
    catalog = EntityCatalog(
        "toy",
        {t: str(i) for i, t in enumerate(TINY_TITLES)},
        {attribute_key("age", "25-34"): "25-34"},
    )
    prompts = load_prompts()
    examples = []
    for user in range(2):
        history, target_item = TINY_TITLES[user : user + 3], TINY_TITLES[10 + user]
        for family in ("sequential", "direct", "rating", "explanation"):
            for template in prompts.select(family, "all"):
                fields = {"item": target_item}
                if template.answer_type == "item":
                    fields, target = {}, target_item
                    if "candidates" in template.placeholders:
                        fields["candidates"] = [TINY_TITLES[15], target_item, TINY_TITLES[16]]
                elif template.answer_type == "yesno":
                    target = template.answer_words[user]
                elif template.answer_type == "rating":
                    target = "4"
                else:
                    target = "great fit and the fabric is soft"
                    if "hint" in template.placeholders:
                        fields["hint"] = "fabric"
                if "item" not in template.placeholders:
                    fields.pop("item", None)
                examples.append(
                    render_example(
                        template,
                        catalog,
                        user=str(user),
                        user_features={"age": "25-34"},
                        feature_templates=FEATURE_TEMPLATES,
                        history=history,
                        target=target,
                        **fields,
                    )
                )
    return model, tokenizer, catalog, prompts, examples


def test_evaluate_end_to_end_writes_every_field(tiny_setup, tmp_path):
    from recsysllm.evaluation.baselines import evaluate_baselines
    from recsysllm.evaluation.evaluator import evaluate, example_variant
    from recsysllm.generation import parse_rating

    model, tokenizer, catalog, prompts, examples = tiny_setup
    results = evaluate(
        model,
        tokenizer,
        catalog,
        examples,
        batch_size=8,
        num_beams=10,
        max_length=128,
        max_new_tokens=8,
        exclude_history=True,
        prompts=prompts,
        progress=False,
    )
    assert len(results.outcomes) == len(examples)
    for example, outcome in zip(examples, results.outcomes, strict=True):
        assert (outcome.template_id, outcome.user) == (example.template_id, example.user)
        variant = example_variant(example)
        if variant == "candidates":
            assert 1 <= outcome.rank <= len(example.candidates)
        elif variant == "all_items":
            assert outcome.rank is None or 1 <= outcome.rank <= 10
        elif variant == "rating":
            assert outcome.rating == parse_rating(outcome.text)
        elif variant == "yesno":
            assert isinstance(outcome.correct, bool)
        else:
            assert isinstance(outcome.text, str)

    baselines = evaluate_baselines(
        examples,
        items=catalog.item_keys,
        item_counts={catalog.item_keys[0]: 3},
        ks=results.ks,
        seed=0,
    )
    metadata = {"checkpoint": "in-memory", "config": {}, "catalog_hash": catalog.hash, "seed": 0}
    paths = write_reports(results, baselines, metadata, tmp_path / "results.json")
    document = json.loads(paths["json"].read_text())

    templates = {(e.task, e.template_id) for e in examples}
    assert {(r["family"], r["template_id"]) for r in document["model"]["per_template"]} == templates
    aggregated = {
        (r["family"], r["variant"], r["split"]): r for r in document["model"]["aggregated"]
    }
    expected_metrics = {
        "all_items": {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "HR@10 excl. history"},
        "candidates": {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"},
        "yesno": {"accuracy"},
        "rating": {"RMSE", "MAE"},
        "text": {"BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"},
    }
    for example in examples:
        for split in ("seen" if example.seen else "unseen", "all"):
            row = aggregated[(example.task, example_variant(example), split)]
            assert expected_metrics[row["variant"]] <= set(row["metrics"])
            assert all(math.isfinite(v) for v in row["metrics"].values())
    rating_all = aggregated[("rating", "rating", "all")]
    unparseable = sum(1 for o in results.outcomes if o.variant == "rating" and o.rating is None)
    assert rating_all["unparseable"] == unparseable
    assert rating_all["count"] == sum(1 for e in examples if e.answer_type == "rating")
    assert set(document["baselines"]) == {"popularity", "random"}
    assert paths["markdown"].stat().st_size > 0 and paths["plot"].stat().st_size > 0
    assert matplotlib.image.imread(paths["plot"]).ndim == 3


def test_harness_ranks_and_unparseable_ratings(tiny_setup, monkeypatch):
    """With decoding replaced by known outputs, ranks and rating errors follow by hand."""
    from recsysllm.evaluation import evaluator

    model, tokenizer, catalog, prompts, examples = tiny_setup
    sequential = [e for e in examples if e.template_id == "sequential-1"]  # 2 users
    ratings = [e for e in examples if e.template_id == "rating-1"]  # targets "4"

    def fake_recommend(model, prompts_, trie, k, num_beams=None, exclude=None, **kwargs):
        # Target at rank 3 without exclusion; with exclusion every history item is gone
        # and the target moves to rank 1.
        out = []
        for example in sequential[: len(prompts_)]:
            filler = [key for key in catalog.item_keys if key != example.target]
            ranked = [*filler[:2], example.target, *filler[2:9]]
            if exclude is not None:
                ranked = [example.target, *[key for key in filler if key not in exclude[0]][:9]]
            out.append([(key, -float(i)) for i, key in enumerate(ranked)])
        return out

    texts = iter(["4 stars", "no idea"])
    monkeypatch.setattr(evaluator, "recommend_items", fake_recommend)
    monkeypatch.setattr(
        evaluator, "generate_text", lambda model, prompts_, *a, **k: [next(texts) for _ in prompts_]
    )
    results = evaluator.evaluate(
        model, tokenizer, catalog, sequential + ratings, batch_size=4, num_beams=10,
        max_length=128, exclude_history=True, prompts=prompts, progress=False,
    )  # fmt: skip
    rows = {(r["variant"]): r for r in results.aggregated() if r["split"] == "all"}
    ranking = rows["all_items"]["metrics"]
    assert ranking["HR@1"] == 0.0 and ranking["HR@5"] == 1.0
    assert ranking["NDCG@5"] == pytest.approx(1 / math.log2(4))
    assert ranking["HR@1 excl. history"] == 1.0
    # "4 stars" -> 4 (error 0); "no idea" is unparseable -> worst case 1 for target 4 (error 3).
    assert rows["rating"]["unparseable"] == 1
    assert rows["rating"]["metrics"]["MAE"] == pytest.approx(1.5)
    assert rows["rating"]["metrics"]["RMSE"] == pytest.approx(math.sqrt(9 / 2))


def test_yes_no_compares_the_two_answer_words(tiny_setup, monkeypatch):
    """The opposite answer is tokenized as render_example would tokenize it."""
    from recsysllm.data.tasks import render_example
    from recsysllm.evaluation import evaluator

    model, tokenizer, catalog, prompts, examples = tiny_setup
    example = next(e for e in examples if e.template_id == "rating-5")  # like / dislike
    template = prompts.get("rating-5")
    other_word = next(w for w in template.answer_words if w != example.target)
    other = render_example(
        template, catalog, user="0", user_features={"age": "25-34"},
        feature_templates=FEATURE_TEMPLATES, history=list(example.history),
        item=next(s.entity for s in example.segments if s.entity in catalog.items and s.entity not in example.history),
        target=other_word,
    )  # fmt: skip
    expected = [evaluator._answer_ids(tokenizer.tokenize_example(e)) for e in (example, other)]
    assert expected[0] != expected[1]
    seen_pairs = []

    def fake_scores(model, prompts_, candidates, **kwargs):
        seen_pairs.extend(candidates)
        return [[-1.0, -2.0] for _ in candidates]  # the gold answer always wins

    monkeypatch.setattr(evaluator, "score_candidates", fake_scores)
    results = evaluator.evaluate(
        model,
        tokenizer,
        catalog,
        [example],
        num_beams=10,
        max_length=128,
        prompts=prompts,
        progress=False,
    )
    assert seen_pairs == [expected]
    assert results.outcomes[0].correct is True


def test_evaluate_rejects_bad_examples(tiny_setup):
    import dataclasses

    from recsysllm.evaluation.evaluator import evaluate

    model, tokenizer, catalog, prompts, examples = tiny_setup
    rating = next(e for e in examples if e.answer_type == "rating")
    bad = dataclasses.replace(rating, target="four")
    with pytest.raises(ValueError, match=r"template='rating-1'.*'four' is not a number"):
        evaluate(model, tokenizer, catalog, [bad], num_beams=10, max_length=128, progress=False)
    with pytest.raises(ValueError, match="num_beams"):
        evaluate(model, tokenizer, catalog, [rating], num_beams=5, max_length=128, progress=False)


# --------------------------------------------------------------------------- CLI


def _write_generic_data(directory, num_users=20, per_user=6):
    """Each user rates ``per_user`` distinct items (120 items: room for 1 + 99 candidates)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["user,item,ts,stars"]
    for user in range(num_users):
        for step in range(per_user):
            item = user * per_user + step
            rows.append(f"u{user:02d},{item},{1_000_000 + 86_400 * step},{1 + (user + step) % 5}")
    (directory / "ratings.csv").write_text("\n".join(rows) + "\n")
    titles = ["item,name"] + [f"{i},Movie {i} (1995)" for i in range(num_users * per_user)]
    (directory / "items.csv").write_text("\n".join(titles) + "\n")
    (directory / "mapping.yaml").write_text(
        "name: toy\n"
        "interactions: {path: ratings.csv, user: user, item: item, timestamp: ts, rating: stars}\n"
        "items: {path: items.csv, item: item, title: name}\n"
    )
    return directory / "mapping.yaml"


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A full-weights checkpoint and its config, over a generic CSV data set."""
    import torch

    from recsysllm import pipeline
    from recsysllm.checkpoint_meta import CheckpointMeta, model_fingerprint, write_meta
    from recsysllm.config import Config, LoraArgs, ModelArgs, TokenizerArgs
    from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration

    root = tmp_path_factory.mktemp("cli")
    mapping = _write_generic_data(root / "data")
    checkpoint = root / "checkpoint"
    tiny_tokenizer.save_pretrained(checkpoint / "tokenizer")
    model_fields = {
        "hidden_size": 32,
        "num_layers": 2,
        "num_attention_heads": 4,
        "max_sequence_length": 512,
    }
    config = Config(
        model=ModelArgs(from_scratch=model_fields),
        tokenizer=TokenizerArgs(path=str(checkpoint / "tokenizer")),
        lora=LoraArgs(enabled=False),
    )
    config.data.source, config.data.path, config.data.k_core = "generic", str(mapping), 1
    config.data.max_length = 512
    config.eval.num_beams = 10
    config.save_yaml(root / "config.yaml")
    config.save_yaml(checkpoint / "config.yaml")

    data = pipeline.prepare_data(config.data, seed=config.data.seed)
    data.prompts.save(checkpoint / "prompts")
    data.catalog.save(checkpoint / "catalog.json")
    torch.manual_seed(0)
    model = GLMForConditionalGeneration(GLMConfig(vocab_size=320, **model_fields))
    model.save_pretrained(checkpoint)
    meta = CheckpointMeta(
        base_model=None,
        base_model_fingerprint=model_fingerprint(model),
        tokenizer_fingerprint=tiny_tokenizer.fingerprint,
        catalog_hash=data.catalog.hash,
        lora=False,
    )
    write_meta(checkpoint, meta)
    return {"root": root, "config": root / "config.yaml", "checkpoint": checkpoint, "data": data}


def test_cli_writes_reports_for_the_first_users(cli_checkpoint, tmp_path, capsys):
    from recsysllm.evaluation.cli import main

    out = tmp_path / "eval" / "results.json"
    argv = [
        "--config", str(cli_checkpoint["config"]), "--checkpoint", str(cli_checkpoint["checkpoint"]),
        "--split", "test", "--prompts", "all", "--families", "sequential", "direct", "rating",
        "--limit", "2", "--batch-size", "4", "--num-beams", "10", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "| popularity |" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert (
        document["split"] == "test"
        and document["catalog_hash"] == cli_checkpoint["data"].catalog.hash
    )
    assert document["config"]["data"]["source"] == "generic"
    prompts = cli_checkpoint["data"].prompts
    # --limit 2: the first two users (sorted ids) under every template.
    for row in document["model"]["per_template"]:
        assert row["count"] == 2, row
    templates = {t.id for f in ("sequential", "direct", "rating") for t in prompts.select(f, "all")}
    assert {row["template_id"] for row in document["model"]["per_template"]} == templates
    splits = {row["split"] for row in document["model"]["aggregated"]}
    assert splits == {"seen", "unseen", "all"}
    assert {"popularity", "random", "global_mean", "user_mean"} == set(document["baselines"])
    assert out.with_suffix(".md").stat().st_size > 0
    assert matplotlib.image.imread(out.with_suffix(".png")).ndim == 3


def test_cli_refuses_a_changed_catalog(cli_checkpoint, tmp_path):
    from recsysllm.checkpoint_meta import CheckpointMismatchError
    from recsysllm.evaluation.cli import main

    # Same config, but one title changed: the rebuilt catalog no longer matches.
    data_dir = tmp_path / "data"
    shutil.copytree(cli_checkpoint["root"] / "data", data_dir)
    items = data_dir / "items.csv"
    items.write_text(items.read_text().replace("Movie 3 (1995)", "Movie 3 (1996)"))
    argv = [
        "--config", str(cli_checkpoint["config"]), "--checkpoint", str(cli_checkpoint["checkpoint"]),
        "--out", str(tmp_path / "results.json"), f"data.path={data_dir / 'mapping.yaml'}",
    ]  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match="entity catalog differs"):
        main(argv)
