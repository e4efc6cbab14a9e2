"""Evaluation harness: reports from hand-built outcomes, and end to end on a tiny GLM."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from recsysllm.config import FUSION_GRID
from recsysllm.evaluation.evaluator import EvalProtocol, EvaluationResults, ExampleOutcome
from recsysllm.evaluation.metrics import UNPARSEABLE_RATING_RULE
from recsysllm.evaluation.report import write_reports

PROTOCOL = EvalProtocol(ks=(1, 5, 10), exclude_history=True)


def _hand_built_results() -> tuple[EvaluationResults, dict[str, EvaluationResults]]:
    def ranked(template, seen, rank, variant="all_items", family="sequential"):
        return ExampleOutcome(family, template, seen, variant, f"u{rank}", "x", rank=rank)

    model = EvaluationResults(
        system="model",
        protocol=PROTOCOL,
        outcomes=[
            ranked("2-1", True, 1),
            ranked("2-1", True, 12),
            ranked("2-9", False, 4),
            ranked("5-1", True, 2, "candidates", "direct"),
            ExampleOutcome("rating", "1-1", True, "rating", "u", "4", rating=4.0, text="4"),
            ExampleOutcome("rating", "1-1", True, "rating", "u", "2", rating=None, text="great"),
            ExampleOutcome(
                "rating",
                "1-6",
                False,
                "yesno",
                "u",
                "yes",
                correct=True,
                yes_score=1.0,
                positive=True,
            ),
            ExampleOutcome(
                "rating",
                "1-6",
                False,
                "yesno",
                "u",
                "no",
                correct=False,
                yes_score=2.0,
                positive=False,
            ),
            ExampleOutcome(
                "explanation", "3-1", True, "text", "u", "soft fabric fits well", text="soft fabric"
            ),
        ],
    )
    popularity = EvaluationResults(
        system="popularity",
        protocol=PROTOCOL,
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
    assert set(seen["stderr"]) == set(seen["metrics"])
    assert seen["stderr"]["HR@1"] == pytest.approx(0.5)  # hits (1, 0): std 0.7071 / sqrt(2)
    # The unparseable rating counts and scores as the worst case (target 2 -> 5: error 3).
    rating = rows[("rating", "rating", "seen")]
    assert rating["unparseable"] == 1
    assert rating["metrics"]["MAE"] == pytest.approx(1.5)
    assert rating["metrics"]["RMSE"] == pytest.approx(math.sqrt(9 / 2))
    yesno = rows[("rating", "yesno", "unseen")]
    assert yesno["metrics"]["accuracy"] == 0.5
    assert yesno["metrics"]["AUC"] == 0.0  # the negative example scored "yes" higher
    assert document["protocol"]["exclusion"].startswith("user's training history excluded")
    assert 0 < rows[("explanation", "text", "seen")]["metrics"]["ROUGE-1"] < 1
    pop = {(r["split"]): r for r in document["baselines"]["popularity"]["aggregated"]}
    assert pop["seen"]["metrics"]["HR@5"] == 0.5

    markdown = paths["markdown"].read_text()
    assert "| popularity | seen |" in markdown and "| model | unseen |" in markdown
    assert "## Model per template" in markdown
    assert "Every row: user's training history excluded" in markdown
    assert "0.5000 ± 0.5000" in markdown  # HR@1 of the seen sequential row
    outcomes = [json.loads(line) for line in paths["outcomes"].read_text().splitlines()]
    assert len(outcomes) == len(model.outcomes) + len(baselines["popularity"].outcomes)
    assert outcomes[0]["system"] == "model" and outcomes[0]["rank"] == 1
    assert {"user", "family", "template_id", "target", "top", "rank", "rating"} <= set(outcomes[0])
    image = matplotlib.image.imread(paths["plot"])
    assert image.ndim == 3 and image.shape[0] > 100
    # Atomic writes leave no temp files behind.
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == [
        "outcomes.jsonl",
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
    from recsysllm.modeling.glm.tokenization import train_sentencepiece_tokenizer
    from recsysllm.prompts import load_prompts

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
    protocol = EvalProtocol(history={e.user: set(e.history) for e in examples})
    results = evaluate(
        model,
        tokenizer,
        catalog,
        examples,
        protocol=protocol,
        batch_size=8,
        num_beams=10,
        max_length=128,
        max_new_tokens=8,
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
            assert isinstance(outcome.correct, bool) and math.isfinite(outcome.yes_score)
        else:
            assert isinstance(outcome.text, str)

    baselines = evaluate_baselines(
        examples,
        items=catalog.item_keys,
        item_counts={catalog.item_keys[0]: 3},
        protocol=protocol,
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
        "all_items": {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"},
        "candidates": {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"},
        "yesno": {"accuracy", "AUC"},
        "rating": {"RMSE", "MAE"},
        "text": {"BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"},
    }
    for example in examples:
        for split in ("seen" if example.seen else "unseen", "all"):
            row = aggregated[(example.task, example_variant(example), split)]
            assert expected_metrics[row["variant"]] <= set(row["metrics"])
            assert all(v is None or math.isfinite(v) for v in row["metrics"].values())
            assert set(row["stderr"]) == set(row["metrics"])
    rating_all = aggregated[("rating", "rating", "all")]
    unparseable = sum(1 for o in results.outcomes if o.variant == "rating" and o.rating is None)
    assert rating_all["unparseable"] == unparseable
    assert rating_all["count"] == sum(1 for e in examples if e.answer_type == "rating")
    assert set(document["baselines"]) == {"popularity", "random"}
    assert paths["markdown"].stat().st_size > 0 and paths["plot"].stat().st_size > 0
    assert matplotlib.image.imread(paths["plot"]).ndim == 3


def test_harness_ranks_and_unparseable_ratings(tiny_setup, monkeypatch):
    """With decoding replaced by known outputs, ranks and rating errors follow by hand;
    the exclusion passed to the beam search is the user's whole history."""
    from recsysllm import generation
    from recsysllm.evaluation import evaluator

    model, tokenizer, catalog, prompts, examples = tiny_setup
    sequential = [e for e in examples if e.template_id == "sequential-1"]  # 2 users
    ratings = [e for e in examples if e.template_id == "rating-1"]  # targets "4"
    # Each user's whole history: more than the 3 items its prompt shows.
    history = {
        e.user: {*e.history, *[k for k in catalog.item_keys if k != e.target][:8]}
        for e in sequential
    }
    seen_exclusions = []

    def fake_recommend(model, prompts_, trie, k, num_beams=None, exclude=None, **kwargs):
        # The target after two other items, never an excluded one.
        seen_exclusions.extend(exclude)
        out = []
        for example, excluded in zip(sequential, exclude, strict=False):
            filler = [
                key for key in catalog.item_keys if key != example.target and key not in excluded
            ]
            ranked = [*filler[:2], example.target, *filler[2:9]]
            out.append([(key, -float(i)) for i, key in enumerate(ranked)])
        return out

    texts = iter(["4 stars", "no idea"])
    monkeypatch.setattr(generation, "recommend_items", fake_recommend)
    monkeypatch.setattr(
        generation,
        "generate_text",
        lambda model, prompts_, *a, **k: [next(texts) for _ in prompts_],
    )
    results = evaluator.evaluate(
        model, tokenizer, catalog, sequential + ratings, batch_size=4, num_beams=10,
        protocol=EvalProtocol(history=history), max_length=128, prompts=prompts, progress=False,
    )  # fmt: skip
    assert seen_exclusions == [frozenset(history[e.user]) for e in sequential]
    assert all(len(x) > 3 for x in seen_exclusions)  # not only the prompt's 3 items
    rows = {(r["variant"]): r for r in results.aggregated() if r["split"] == "all"}
    ranking = rows["all_items"]["metrics"]
    assert ranking["HR@1"] == 0.0 and ranking["HR@5"] == 1.0
    assert ranking["NDCG@5"] == pytest.approx(1 / math.log2(4))
    outcome = results.outcomes[0]
    assert outcome.rank == 3 and outcome.top[2][0] == sequential[0].target
    # "4 stars" -> 4 (error 0); "no idea" is unparseable -> worst case 1 for target 4 (error 3).
    assert rows["rating"]["unparseable"] == 1
    assert rows["rating"]["metrics"]["MAE"] == pytest.approx(1.5)
    assert rows["rating"]["metrics"]["RMSE"] == pytest.approx(math.sqrt(9 / 2))


def test_yes_no_compares_the_two_answer_words(tiny_setup, monkeypatch):
    """The opposite answer is tokenized as render_example would tokenize it; the
    yes-minus-no score feeds a TALLRec-style AUC."""
    from recsysllm import generation
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

    def answer_ids(e):
        tokenized = tokenizer.tokenize_example(e)
        return tuple(tokenized.input_ids[slice(*tokenized.answer_span)])

    by_word = {example.target: answer_ids(example), other_word: answer_ids(other)}
    expected = [by_word[template.answer_words[0]], by_word[template.answer_words[1]]]
    assert expected[0] != expected[1]
    seen_pairs = []

    def fake_scores(model, prompts_, candidates, **kwargs):
        seen_pairs.extend(candidates)
        return [[-1.0, -2.0] for _ in candidates]  # the positive word always wins

    monkeypatch.setattr(generation, "score_candidates", fake_scores)
    results = evaluator.evaluate(
        model, tokenizer, catalog, [example], num_beams=10, max_length=128,
        protocol=EvalProtocol(), prompts=prompts, progress=False,
    )  # fmt: skip
    assert seen_pairs == [expected]
    outcome = results.outcomes[0]
    assert outcome.yes_score == 1.0
    assert outcome.correct is (example.target == template.answer_words[0])


def test_evaluate_rejects_bad_examples(tiny_setup):
    import dataclasses

    from recsysllm.evaluation.evaluator import evaluate

    model, tokenizer, catalog, prompts, examples = tiny_setup
    rating = next(e for e in examples if e.answer_type == "rating")
    bad = dataclasses.replace(rating, target="four")
    protocol = EvalProtocol()
    with pytest.raises(ValueError, match=r"template='rating-1'.*'four' is not a number"):
        evaluate(
            model, tokenizer, catalog, [bad], protocol=protocol, num_beams=10, max_length=128,
            progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="num_beams"):
        evaluate(
            model, tokenizer, catalog, [rating], protocol=protocol, num_beams=5, max_length=128,
            progress=False,
        )  # fmt: skip
    direct = [e for e in examples if e.candidates]
    with pytest.raises(ValueError, match=r"template 'direct-3' needs \d+ tokens.*max_length is 24"):
        evaluate(
            model, tokenizer, catalog, direct, protocol=protocol, num_beams=10, max_length=24,
            progress=False,
        )  # fmt: skip


def _inference(tiny_setup):
    from recsysllm.inference import Inference
    from recsysllm.prompt_layout import AnswerBudget

    model, tokenizer, catalog, prompts, examples = tiny_setup
    budget = AnswerBudget.for_catalog(catalog, tokenizer, text=8)
    return Inference(model, tokenizer, catalog, max_length=128, answer_budget=budget)


def test_model_ranker_decodes_once_and_a_longer_list_keeps_the_top_k(tiny_setup, monkeypatch):
    from recsysllm.evaluation.evaluator import ModelRanker

    inference = _inference(tiny_setup)
    examples = [e for e in tiny_setup[4] if e.template_id == "sequential-1"]
    exclude = [frozenset(e.history) for e in examples]
    short = ModelRanker(inference, num_beams=12).rank_all(examples, exclude, 5)
    ranker = ModelRanker(inference, num_beams=12, list_length=12)
    calls = []
    original = inference.rank_items
    monkeypatch.setattr(
        inference, "rank_items", lambda *a, **k: calls.append(a[1]) or original(*a, **k)
    )
    long = ranker.rank_all(examples, exclude, 12)
    # The constrained search's top 5 is the prefix of its top 12 (same beams).
    assert [items[:5] for items in long] == short
    assert ranker.rank_all(examples, exclude, 5) == short and calls == [12]
    # Another exclusion for the same example is decoded again.
    ranker.rank_all(examples[:1], [frozenset()], 5)
    assert calls == [12, 12]


def test_model_ranker_guided_search_is_the_exact_fused_top_k(tiny_setup):
    """With a beam per catalog item, the guided search's top-k is the brute-force
    fused ranking of every eligible item: (1 - w) teacher-forced log-probability
    (``score_items``) + w log prior; weight 0 is the model's own answer."""
    import torch

    from recsysllm.evaluation.evaluator import ModelRanker

    inference = _inference(tiny_setup)
    keys = list(tiny_setup[2].item_keys)
    examples = [e for e in tiny_setup[4] if e.template_id == "sequential-1"]
    exclude = [frozenset(e.history) for e in examples]
    generator = torch.Generator().manual_seed(0)
    prior = torch.log_softmax(torch.randn(len(examples), len(keys), generator=generator) * 2, -1)
    ranker = ModelRanker(inference, num_beams=len(keys))
    lm = inference.score_items(inference.prompts(examples), [keys] * len(examples))
    guided = ranker.rank_all_guided(examples, exclude, 6, keys, prior, 0.6)
    for row, (excluded, ranked) in enumerate(zip(exclude, guided, strict=True)):
        fused = {
            key: 0.4 * lm[row][i] + 0.6 * float(prior[row, i])
            for i, key in enumerate(keys)
            if key not in excluded
        }
        best = sorted(fused, key=fused.get, reverse=True)[:6]
        assert [key for key, _ in ranked] == best
        assert [s for _, s in ranked] == pytest.approx([fused[key] for key in best], abs=1e-4)
    assert ranker.rank_all_guided(examples, exclude, 6, keys, prior, 0.0) == ranker.rank_all(
        examples, exclude, 6
    )


def test_length_normalised_row_divides_by_the_scored_tokens(tiny_setup):
    from recsysllm.evaluation.evaluator import ModelRanker

    inference = _inference(tiny_setup)
    direct = [e for e in tiny_setup[4] if e.candidates][:2]
    summed = ModelRanker(inference, 10).score_candidates(direct)
    normalized = ModelRanker(inference, 10, length_normalize=True).score_candidates(direct)
    for example, sums, means in zip(direct, summed, normalized, strict=True):
        lengths = [len(inference.item_trie.ids_of(key)) + 1 for key in example.candidates]
        assert means == pytest.approx([s / n for s, n in zip(sums, lengths, strict=True)])


def test_item_priors_score_the_user_free_prompt(tiny_setup):
    from recsysllm.evaluation.evaluator import ItemPriors
    from recsysllm.inference import user_free_example

    inference = _inference(tiny_setup)
    model, tokenizer, catalog, prompts, examples = tiny_setup
    sequential = [e for e in examples if e.template_id == "sequential-1"]
    direct = next(e for e in examples if e.candidates)
    free = user_free_example(sequential[0], prompts.get("sequential-1"), catalog)
    # No history items, no profile attribute: no entity but the answer's placeholder.
    assert not [s for s in free.segments if s.entity is not None and not s.answer]
    assert "no items yet" in "".join(s.text for s in free.segments)
    # The same prompt for both users of a template: one prior, every catalog item.
    assert user_free_example(sequential[1], prompts.get("sequential-1"), catalog).segments == (
        free.segments
    )
    priors = ItemPriors(inference, prompts)
    prior = priors.all_items(sequential[0])
    assert set(prior) == set(catalog.item_keys) and priors.all_items(sequential[1]) is prior
    keys = list(catalog.item_keys)[:3]
    expected = inference.score_items([inference.prompt(free)], [keys])[0]
    assert [prior[k] for k in keys] == pytest.approx(expected, abs=1e-5)
    # Candidate templates keep their candidates in the user-free prompt.
    free_direct = user_free_example(direct, prompts.get(direct.template_id), catalog)
    shown = [s.entity for s in free_direct.segments if s.entity is not None and not s.answer]
    assert shown == list(direct.candidates)
    expected = inference.score_items([inference.prompt(free_direct)], [direct.candidates])[0]
    assert priors.candidates(direct) == pytest.approx(expected, abs=1e-5)


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
    config.data.num_negatives = 19  # 1 of 20 candidates: they fit 512 tokens whole
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


def test_cli_puts_the_model_on_the_gpu_when_one_is_visible(cli_checkpoint, tmp_path, monkeypatch):
    # The help says "default: cuda if available"; the loaders' own default is CPU, so a
    # GPU node once evaluated on its CPU cores (found on an H200: 1.9 examples/s).
    from conftest import assert_command_picks_the_gpu_when_visible

    from recsysllm.evaluation import cli

    argv = ["--checkpoint", str(cli_checkpoint["checkpoint"]), "--out", str(tmp_path / "r.json")]
    assert_command_picks_the_gpu_when_visible(monkeypatch, lambda extra: cli.main(argv + extra))


def test_cli_uses_the_checkpoint_config_and_a_seeded_user_sample(cli_checkpoint, tmp_path, capsys):
    from recsysllm.evaluation.cli import main

    out = tmp_path / "eval" / "results.json"
    argv = [
        "--checkpoint", str(cli_checkpoint["checkpoint"]),  # no --config: the checkpoint's
        "--split", "test", "--prompts", "all", "--families", "sequential", "direct", "rating",
        "--limit", "3", "--batch-size", "4", "--num-beams", "10", "--out", str(out),
        "--sasrec-cache", str(out.parent / "sasrec-cache"), "--sasrec-max-epochs", "5",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| popularity |" in printed and "Every row: user's training history excluded" in printed
    document = json.loads(out.read_text())
    assert (
        document["split"] == "test"
        and document["catalog_hash"] == cli_checkpoint["data"].catalog.hash
    )
    assert document["config"]["data"]["source"] == "generic"
    assert document["settings"]["max_length"] == 512 and document["settings"]["seed"] == 42
    assert document["settings"]["config_source"] == "checkpoint"
    assert document["settings"]["device"] == "cpu"  # no GPU here (CI)
    assert document["protocol"]["exclude_history"] is True
    # --limit 3: a seeded random sample of users (not the first three), recorded, and
    # the same users under every template and system.
    sample = document["user_sample"]
    users = sorted({e.user for e in cli_checkpoint["data"].tasks.examples("test", ["rating"])})
    picks = np.random.default_rng(42).choice(len(users), size=3, replace=False)
    assert sample["users"] == sorted(users[i] for i in picks.tolist())
    assert sample["users"] != users[:3]
    assert sample["population"] == len(users) and sample["limit"] == 3
    for row in document["model"]["per_template"]:
        assert row["count"] == 3 and row["users"] == 3, row
        assert "truncated" in row
    prompts = cli_checkpoint["data"].prompts
    templates = {t.id for f in ("sequential", "direct", "rating") for t in prompts.select(f, "all")}
    assert {row["template_id"] for row in document["model"]["per_template"]} == templates
    splits = {row["split"] for row in document["model"]["aggregated"]}
    assert splits == {"seen", "unseen", "all"}
    assert {
        "popularity", "random", "global_mean", "user_mean", "item_mean", "SASRec", "fusion",
        "fusion-rescore",
    } == set(document["baselines"])  # fmt: skip
    # SASRec and fusion by default: every ranking row of the model has theirs, with the
    # same examples and users, standard errors and diversity columns.
    for name in ("SASRec", "fusion", "popularity"):
        rows = {
            (r["family"], r["variant"], r["split"]): r
            for r in document["baselines"][name]["aggregated"]
        }
        for row in document["model"]["aggregated"]:
            if row["variant"] not in ("all_items", "candidates"):
                continue
            other = rows[(row["family"], row["variant"], row["split"])]
            assert (other["count"], other["users"]) == (row["count"], row["users"])
            assert set(other["stderr"]) == set(other["metrics"]) == set(row["metrics"])
            assert {"coverage", "top item share", "top 1% share", "Gini"} <= set(other["diversity"])
            assert other["diversity"]["k"] == 10 and row["diversity"]["lists"] == row["count"]
    facts = document["rows"]
    assert facts["enabled"] == {
        "SASRec": True, "fusion": True, "fusion-rescore": True, "model+pmi": False,
        "model+lennorm": False,
    }  # fmt: skip
    assert facts["SASRec"]["cache"] == "trained" and facts["SASRec"]["seed"] == 42
    assert Path(facts["SASRec"]["cache_entry"]).parent == out.parent / "sasrec-cache"
    assert set(facts["fusion"]["weights"]) == {"all_items", "candidates"}
    assert facts["fusion"]["chosen_on"]["split"] == "valid"
    assert facts["fusion"]["chosen_on"]["users"] == 3  # the evaluated users' valid targets
    assert set(facts["fusion"]["valid_ndcg"]["all_items"]) == {f"{w:g}" for w in FUSION_GRID}
    assert facts["fusion"]["weights"]["all_items"] in FUSION_GRID
    assert "guided search" in facts["fusion"]["all_items"]
    assert set(facts["fusion-rescore"]["weights"]) == {"all_items"}
    # The rescoring row: all-item examples only (candidates score alike in both rows).
    rescored = document["baselines"]["fusion-rescore"]["aggregated"]
    assert {r["variant"] for r in rescored} == {"all_items"}
    markdown = out.with_suffix(".md").read_text()
    assert "| SASRec |" in markdown and "| fusion |" in markdown and "coverage@10" in markdown
    assert "| fusion-rescore |" in markdown and "- fusion: " in markdown
    assert "- fusion-rescore: " in markdown
    outcomes = [
        json.loads(line) for line in (out.parent / "outcomes.jsonl").read_text().splitlines()
    ]
    assert {o["user"] for o in outcomes} == set(sample["users"])
    for system in ("SASRec", "fusion"):
        assert {o["user"] for o in outcomes if o["system"] == system} == set(sample["users"])
    model_ranked = [o for o in outcomes if o["system"] == "model" and o["variant"] == "all_items"]
    assert model_ranked and all(len(o["top"]) == 10 for o in model_ranked)
    assert out.with_suffix(".md").stat().st_size > 0
    assert matplotlib.image.imread(out.with_suffix(".png")).ndim == 3


def test_cli_refuses_a_config_that_changes_the_examples(cli_checkpoint, tmp_path):
    from recsysllm.evaluation.cli import ConfigMismatchError, main

    out = tmp_path / "results.json"
    base = ["--checkpoint", str(cli_checkpoint["checkpoint"]), "--out", str(out)]
    # The training YAML with another max_length: refused, naming the field.
    with pytest.raises(ConfigMismatchError, match=r"data\.max_length is 256 .* trained with 512"):
        main([*base, "--config", str(cli_checkpoint["config"]), "data.max_length=256"])
    with pytest.raises(ConfigMismatchError, match=r"data\.k_core"):
        main([*base, "data.k_core=2"])
    # Explicitly allowed: runs, and the override is recorded.
    argv = [
        *base, "--allow-config-override", "--families", "rating", "--templates", "rating-1",
        "--limit", "2", "data.history_budget=5",
    ]  # fmt: skip
    assert main(argv) == 0
    document = json.loads(out.read_text())
    assert document["settings"]["overridden_example_fields"] == ["history_budget"]
    assert document["settings"]["history_budget"] == 5
    assert {row["template_id"] for row in document["model"]["per_template"]} == {"rating-1"}
    with pytest.raises(ValueError, match="unknown template id 'nope'"):
        main([*base, "--templates", "nope"])
    # Allowed, but past the model's 512 learned positions: refused before any example.
    with pytest.raises(ValueError, match=r"data\.max_length is 600 .* hold 512 positions"):
        main([*base, "--allow-config-override", "data.max_length=600"])


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


def test_cli_pmi_and_length_norm_rows(cli_checkpoint, tmp_path):
    from recsysllm.evaluation.cli import main

    out = tmp_path / "results.json"
    argv = [
        "--checkpoint", str(cli_checkpoint["checkpoint"]), "--out", str(out),
        "--families", "sequential", "direct", "--templates", "sequential-1", "direct-1",
        "--limit", "3", "--num-beams", "10", "--no-sasrec", "--pmi", "--length-norm-row",
    ]  # fmt: skip
    assert main(argv) == 0
    document = json.loads(out.read_text())
    assert {"model+pmi", "model+lennorm", "popularity", "random"} == set(document["baselines"])
    facts = document["rows"]
    assert facts["enabled"]["SASRec"] is False and "fusion" not in facts
    assert set(facts["model+pmi"]["alphas"]) == {"all_items", "candidates"}
    assert all(0.0 <= a <= 1.0 for a in facts["model+pmi"]["alphas"].values())
    assert set(facts["model+pmi"]["valid_ndcg"]["all_items"]) == {f"{0.1 * i:g}" for i in range(11)}
    assert facts["model+pmi"]["chosen_on"]["users"] == 3
    model_rows = {(r["family"], r["split"]): r for r in document["model"]["aggregated"]}
    for name in ("model+pmi", "model+lennorm"):
        for row in document["baselines"][name]["aggregated"]:
            twin = model_rows[(row["family"], row["split"])]
            assert (row["count"], row["users"]) == (twin["count"], twin["users"])
    # The model+pmi ranking rescores the model's own list (num_beams 10 = the 10 kept):
    # the same items, another order.
    outcomes = [json.loads(line) for line in (tmp_path / "outcomes.jsonl").read_text().splitlines()]
    model = {(o["user"], o["template_id"]): o for o in outcomes if o["system"] == "model"}
    pmi = [o for o in outcomes if o["system"] == "model+pmi" and o["variant"] == "all_items"]
    assert len(pmi) == 3
    for o in pmi:
        twin = model[(o["user"], o["template_id"])]
        assert sorted(k for k, _ in o["top"]) == sorted(k for k, _ in twin["top"])


def test_cli_renormalize_setting_reaches_the_scores(cli_checkpoint, tmp_path):
    """eval.renormalize (default: all_items) renormalises the all-item search only; a
    renormalised log-probability is never below the full-softmax one (the allowed
    tokens hold at most all the mass), and "none" restores the full softmax."""
    from recsysllm.evaluation.cli import main

    outcomes = {}
    for name, flag in (("default", []), ("none", ["--renormalize", "none"])):
        out = tmp_path / name / "results.json"
        argv = [
            "--checkpoint", str(cli_checkpoint["checkpoint"]), "--out", str(out),
            "--families", "sequential", "direct", "--limit", "3", "--num-beams", "10",
            "--no-sasrec", *flag,
        ]  # fmt: skip
        assert main(argv) == 0
        document = json.loads(out.read_text())
        assert document["settings"]["renormalize"] == ([] if flag else ["all_items"])
        lines = (out.parent / "outcomes.jsonl").read_text().splitlines()
        outcomes[name] = {
            (o["user"], o["template_id"]): o
            for o in map(json.loads, lines)
            if o["system"] == "model" and o["variant"] in ("all_items", "candidates")
        }
    assert outcomes["default"].keys() == outcomes["none"].keys()
    higher = 0
    for key, renormalized in outcomes["default"].items():
        raw = dict(outcomes["none"][key]["top"])
        if renormalized["variant"] == "candidates":  # not renormalised by default
            assert renormalized["top"] == outcomes["none"][key]["top"]
            continue
        for item, score in renormalized["top"]:
            if item in raw:
                assert score >= raw[item] - 1e-5
                higher += score > raw[item] + 1e-4
        assert sum(math.exp(score) for _, score in renormalized["top"]) <= 1 + 1e-5
    assert higher > 0


def test_cli_on_the_valid_split_chooses_fusion_on_the_evaluated_examples(
    cli_checkpoint, tmp_path, capsys
):
    from recsysllm.evaluation.cli import main

    out = tmp_path / "results.json"
    cache = tmp_path / "cache"
    argv = [
        "--checkpoint", str(cli_checkpoint["checkpoint"]), "--out", str(out), "--split", "valid",
        "--families", "sequential", "--templates", "sequential-1", "--limit", "2",
        "--num-beams", "10", "--sasrec-cache", str(cache), "--sasrec-max-epochs", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    facts = json.loads(out.read_text())["rows"]
    assert facts["fusion"]["chosen_on"] == {
        "split": "valid", "examples": 2, "users": 2, "same_as_evaluated": True
    }  # fmt: skip
    assert facts["SASRec"]["cache"] == "trained" and facts["SASRec"]["stopped"] == "max_epochs"
    assert "a lower bound" in out.with_suffix(".md").read_text()
    # Evaluated again: SASRec's weights come from the cache.
    assert main(argv) == 0
    assert json.loads(out.read_text())["rows"]["SASRec"]["cache"] == "reused"
    assert "SASRec: reused" in capsys.readouterr().err


def test_fusion_grid_and_rescore_come_from_the_config_unless_flagged():
    from recsysllm.config import FUSION_GRID, EvalArgs
    from recsysllm.evaluation.cli import build_parser, row_settings

    configured = EvalArgs(fusion_grid=[0.0, 0.9], fusion_rescore=False)
    plain = build_parser().parse_args(["--checkpoint", "ck", "--out", "o"])
    settings = row_settings(plain, configured, num_beams=10, batch_size=4, seed=0)
    assert settings.fusion_grid == (0.0, 0.9) and settings.fusion_rescore is False
    flagged = build_parser().parse_args(
        ["--checkpoint", "ck", "--out", "o", "--fusion-grid", "0.5", "1", "--fusion-rescore"]
    )
    settings = row_settings(flagged, configured, num_beams=10, batch_size=4, seed=0)
    assert settings.fusion_grid == (0.5, 1.0) and settings.fusion_rescore is True
    assert tuple(EvalArgs().fusion_grid) == FUSION_GRID
    for bad in ([], [0.5, 1.5]):
        with pytest.raises(ValueError, match="eval.fusion_grid"):
            EvalArgs(fusion_grid=bad)
