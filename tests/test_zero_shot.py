"""Zero-shot evaluation of an untrained base model: ``recsysllm evaluate --base-model DIR
--config CONFIG`` and the plain-text candidate scorer (tiny random Llama, in-process)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from recsysllm.evaluation.evaluator import EvalProtocol, evaluate_ranker
from recsysllm.evaluation.plain_text import PlainTextRanker, PlainTextScorer
from recsysllm.modeling.decoder import FAMILIES, build_decoder
from recsysllm.schema import Example, Segment
from tests.test_decoder import bpe_dir, decisive, tiny_config, tok  # noqa: F401
from tests.test_evaluation import _write_generic_data

# "the" is one token of the tiny BPE: a title with no token after its first.
TITLES = ("Movie 1 (1995)", "the", "Movie 3 (1996)", "Toy Story (1995)")


def llama():
    config = tiny_config("llama")
    config.max_position_embeddings = 512
    torch.manual_seed(0)
    return config, decisive(build_decoder(config, block_positions=64))


def direct_example(target: str = "Movie 3 (1996)") -> Example:
    segments = [Segment("The user watched"), Segment("Movie 1 (1995)", entity="Movie 1 (1995)")]
    segments.append(Segment(". Recommend one of"))
    for i, title in enumerate(TITLES):
        segments += [Segment(", " if i else " "), Segment(title, entity=title)]
    segments += [Segment(". Recommendation: "), Segment(target, entity=target, answer=True)]
    segments.append(Segment("."))
    return Example(
        segments=tuple(segments),
        task="direct",
        template_id="direct-3",
        user="u1",
        target=target,
        answer_mask="mask",
        answer_type="item",
        candidates=TITLES,
    )


def reference_log_probs(model, prompt: list[int], candidate: tuple[int, ...]) -> float:
    """log p(candidate | prompt) from one uncached causal pass over prompt + candidate."""
    ids = prompt + list(candidate)
    positions = torch.stack([torch.arange(len(ids)), torch.zeros(len(ids), dtype=torch.long)])
    mask = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        logits = model(torch.tensor([ids]), positions[None], mask).logits[0]
    log_probs = torch.log_softmax(logits.double(), -1)
    return sum(float(log_probs[len(prompt) - 1 + i, t]) for i, t in enumerate(candidate))


def test_plain_text_scores_are_causal_log_likelihoods_of_each_title(tok):  # noqa: F811
    _, model = llama()
    example = direct_example()
    scorer = PlainTextScorer(model, tok)
    prompt = scorer.prompt_ids(example)
    # The prompt is the text before the answer, with no special token and no answer id.
    assert tok.decode(prompt).endswith("Recommendation:")
    assert not set(prompt) & set(tok.special_tokens.values())
    candidate_ids = [tok.encode_entity(t) for t in TITLES]
    assert sorted(map(len, candidate_ids)) == [1, 7, 9, 10]
    expected = [reference_log_probs(model, prompt, ids) for ids in candidate_ids]
    found = scorer.scores(example)
    assert [n for _, n in found] == [len(ids) for ids in candidate_ids]
    assert [s for s, _ in found] == pytest.approx(expected, abs=1e-4)
    # The prompt never depends on the answer.
    assert scorer.prompt_ids(direct_example(target="Toy Story (1995)")) == prompt

    summed = PlainTextRanker(scorer).score_candidates([example])[0]
    per_token = PlainTextRanker(scorer, length_normalize=True).score_candidates([example])[0]
    assert summed == pytest.approx(expected, abs=1e-4)
    assert per_token == pytest.approx(
        [e / len(ids) for e, ids in zip(expected, candidate_ids, strict=True)], abs=1e-4
    )
    # Through the harness: the target's rank is 1 + the candidates scoring at least as high.
    results = evaluate_ranker("plain text", PlainTextRanker(scorer), [example], EvalProtocol())
    target_score = expected[TITLES.index(example.target)]
    assert results.outcomes[0].rank == 1 + sum(
        1
        for t, e in zip(TITLES, expected, strict=True)
        if t != example.target and e >= target_score
    )
    with pytest.raises(ValueError, match="1-of-N candidates only"):
        PlainTextRanker(scorer).rank_all([example], [frozenset()], 10)


@pytest.fixture(scope="module")
def base_setup(tmp_path_factory, bpe_dir):  # noqa: F811
    """A tiny random Llama directory (never trained) and a recipe over generic CSV data."""
    from recsysllm.config import Config, LoraArgs, ModelArgs, TokenizerArgs

    root = tmp_path_factory.mktemp("zero_shot")
    mapping = _write_generic_data(root / "data")
    base = root / "base"
    config, _ = llama()
    torch.manual_seed(0)
    FAMILIES["llama"].base_class(config).save_pretrained(base)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bpe_dir / name, base / name)
    recipe = Config(
        model=ModelArgs(base_model="somewhere/else", family="decoder"),
        tokenizer=TokenizerArgs(),
        lora=LoraArgs(enabled=True),
    )
    recipe.data.source, recipe.data.path, recipe.data.k_core = "generic", str(mapping), 1
    recipe.data.max_length = 512
    recipe.data.num_negatives = 19
    recipe.eval.num_beams = 10
    recipe.save_yaml(root / "recipe.yaml")
    return {"root": root, "base": base, "recipe": root / "recipe.yaml"}


def test_cli_evaluates_an_untrained_base_model(base_setup, tmp_path):
    from recsysllm import pipeline
    from recsysllm.config import load_config
    from recsysllm.evaluation.cli import main
    from recsysllm.inference import Inference

    out = tmp_path / "results.json"
    argv = [
        "--base-model", str(base_setup["base"]), "--config", str(base_setup["recipe"]),
        "--out", str(out), "--split", "test", "--families", "direct", "--templates", "direct-3",
        "--limit", "3", "--no-sasrec",
    ]  # fmt: skip
    assert main(argv) == 0
    document = json.loads(out.read_text())
    assert document["checkpoint"] is None and document["untrained"] is True
    assert document["base_model"] == str(base_setup["base"])
    assert document["config"]["model"]["base_model"] == str(base_setup["base"])
    assert set(document["baselines"]) == {"popularity", "random"}
    (row,) = [r for r in document["model"]["aggregated"] if r["split"] == "all"]
    assert (row["variant"], row["count"], row["users"]) == ("candidates", 3, 3)
    assert "- untrained: `True`" in out.with_suffix(".md").read_text()

    # The model row is the base model's own harness scores: nothing was trained or added.
    config = load_config(base_setup["recipe"], [f"model.base_model={base_setup['base']}"])
    model, tokenizer = pipeline.load_base_model_for_inference(config.model, config.tokenizer)
    data = pipeline.prepare_data(config.data, seed=config.data.seed)
    examples = {
        e.user: e
        for e in data.tasks.examples("test", ["direct"], seed=config.data.seed)
        if e.template_id == "direct-3"
    }
    inference = Inference(
        model,
        tokenizer,
        data.catalog,
        max_length=512,
        answer_budget=pipeline.answer_budget(config.data, data.catalog, tokenizer),
    )
    outcomes = [json.loads(line) for line in (tmp_path / "outcomes.jsonl").read_text().splitlines()]
    for outcome in (o for o in outcomes if o["system"] == "model"):
        example = examples[outcome["user"]]
        scores = inference.score_items(inference.prompts([example]), [example.candidates])[0]
        best = max(range(len(scores)), key=lambda i: scores[i])
        assert outcome["top"][0] == [
            example.candidates[best],
            pytest.approx(scores[best], abs=1e-4),
        ]


def test_cli_untrained_needs_a_base_model_a_recipe_and_the_models_tokenizer(base_setup, tmp_path):
    from recsysllm.evaluation.cli import main

    out = str(tmp_path / "results.json")
    with pytest.raises(ValueError, match="--base-model and --config"):
        main(["--base-model", str(base_setup["base"]), "--out", out])
    with pytest.raises(ValueError, match="--base-model and --config"):
        main(["--config", str(base_setup["recipe"]), "--out", out])
    argv = ["--base-model", str(base_setup["base"]), "--config", str(base_setup["recipe"])]
    with pytest.raises(ValueError, match="tokenizer.sentencepiece_vocab_size"):
        main([*argv, "--out", out, "tokenizer.sentencepiece_vocab_size=500"])
