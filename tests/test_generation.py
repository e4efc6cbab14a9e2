"""Decoding against uncached references: greedy, scoring, constrained beams, positions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recsysllm.collator import BlankInfillingCollator, PromptInputs
from recsysllm.generation import (
    ItemPrior,
    generate_ids,
    generate_text,
    parse_rating,
    recommend_items,
    score_candidates,
)
from recsysllm.modeling import GLMForConditionalGeneration
from recsysllm.positions import part_a_intra_positions, span_intra_positions
from recsysllm.schema import Example, Segment, TokenizedExample
from recsysllm.trie import EntityTrie

# Special ids of a stand-in tokenizer over the tiny model's 320 rows; plain text is 10..319.
SPECIAL = SimpleNamespace(
    pad_token_id=0,
    cls_token_id=1,
    eos_token_id=2,
    mask_token_id=3,
    smask_token_id=4,
    gmask_token_id=5,
    sop_token_id=6,
    eop_token_id=7,
    banned_generation_ids=(8, 9),
    vocab_size=310,  # rows 310..319 of the tiny model are padding rows
)
# Every special but [eop], the explicit ban list, and the padding rows.
BANNED = (0, 1, 2, 3, 4, 5, 6, 8, 9, *range(310, 320))
SOP, EOP = SPECIAL.sop_token_id, SPECIAL.eop_token_id


@pytest.fixture
def model(tiny_glm_config):
    torch.manual_seed(0)
    model = GLMForConditionalGeneration(tiny_glm_config).eval()
    # Larger weights than the 0.02 init: decisive logits, so that float noise between
    # cached and uncached passes cannot flip an argmax.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3)
    return model


def make_prompt(rng: np.random.Generator, length: int) -> PromptInputs:
    """[CLS] text (with one unmasked entity) [MASK] text [eos], as build_prompt lays it out."""
    body = rng.integers(10, 320, size=length).tolist()
    mask_at = int(rng.integers(1, length + 1))
    ids = [
        SPECIAL.cls_token_id,
        *body[: mask_at - 1],
        SPECIAL.mask_token_id,
        *body[mask_at - 1 :],
        2,
    ]
    units = [-1] * len(ids)
    if mask_at > 3:  # an unmasked two-token entity right before the mask
        units[mask_at - 2 : mask_at] = [0, 0]
    return PromptInputs(
        input_ids=ids,
        inter=list(range(len(ids))),
        intra=part_a_intra_positions(units),
        mask_position=mask_at,
        mask_inter=mask_at,
    )


def reference_log_probs(model, prompt: PromptInputs, part_b: list[int], part_b_intra: list[int]):
    """[|B|, V] log-probs of one uncached pass over Part A + Part B (GLM's A/B mask)."""
    a, b = len(prompt.input_ids), len(part_b)
    ids = torch.tensor(prompt.input_ids + part_b)[None]
    inter = prompt.inter + [prompt.mask_inter] * b
    positions = torch.tensor([inter, prompt.intra + part_b_intra])[None]
    mask = torch.zeros(a + b, a + b, dtype=torch.bool)
    mask[:, :a] = True
    mask[a:, a:] = torch.ones(b, b, dtype=torch.bool).tril()
    with torch.no_grad():
        logits = model(
            input_ids=ids, position_ids=positions, attention_mask=mask[None, None]
        ).logits
    return torch.log_softmax(logits[0, a:].float(), -1)


def reference_item_log_prob(model, prompt: PromptInputs, ids: tuple[int, ...]) -> float:
    """Teacher-forced log p(ids + [eop]) with the collator's intra rule for one entity."""
    log_probs = reference_log_probs(
        model, prompt, [SOP, *ids], span_intra_positions([0] * len(ids))
    )
    targets = torch.tensor([*ids, EOP])
    return log_probs.gather(1, targets[:, None]).sum().item()


def reference_greedy(model, prompt: PromptInputs, max_new_tokens: int) -> list[int]:
    """Step-by-step argmax of full uncached forwards; plain text intra 1, 2, 3, ..."""
    generated: list[int] = []
    for _ in range(max_new_tokens):
        part_b = [SOP, *generated]
        log_probs = reference_log_probs(model, prompt, part_b, list(range(1, len(part_b) + 1)))[-1]
        log_probs[list(BANNED)] = -math.inf
        token = int(log_probs.argmax())
        if token == EOP:
            break
        generated.append(token)
    return generated


def random_items(
    rng: np.random.Generator, count: int, low: int = 10, high: int = 30
) -> dict[str, tuple]:
    """Items over a small token range, so many share prefixes and some prefix others."""
    items: dict[tuple, str] = {}
    while len(items) < count:
        ids = tuple(int(i) for i in rng.integers(low, high, size=int(rng.integers(1, 5))))
        items.setdefault(ids, f"item{len(items)}")
    return {key: ids for ids, key in items.items()}


def test_greedy_matches_uncached_argmax(model):
    rng = np.random.default_rng(1)
    prompts = [make_prompt(rng, n) for n in (5, 12, 8)]  # different lengths: padding
    got = generate_ids(model, prompts, SPECIAL, max_new_tokens=7)
    assert got == [reference_greedy(model, p, 7) for p in prompts]
    assert all(len(g) == 7 for g in got)  # random weights: no early [eop] hides a bug


class EopAfter(torch.nn.Module):
    """Makes [eop] the argmax right after a given input token (rows stop at different steps)."""

    def __init__(self, model: torch.nn.Module, token: int) -> None:
        super().__init__()
        self.model, self.token, self.config = model, token, model.config

    def forward(self, **inputs):
        output = self.model(**inputs)
        input_ids = inputs["input_ids"][:, -output.logits.shape[1] :]  # logits_to_keep
        output.logits[..., EOP] += 100.0 * (input_ids == self.token)
        return output


def test_rows_stop_at_eop_independently(model):
    rng = np.random.default_rng(2)
    prompts = [make_prompt(rng, n) for n in (6, 9, 4)]
    free = generate_ids(model, prompts, SPECIAL, max_new_tokens=6)
    stopper = EopAfter(model, free[1][2])  # prompt 1 stops after its third token
    got = generate_ids(stopper, prompts, SPECIAL, max_new_tokens=6)
    assert got == [reference_greedy(stopper, p, 6) for p in prompts]
    assert got[1] == free[1][: free[1].index(free[1][2]) + 1]


def test_score_candidates_matches_uncached(model):
    rng = np.random.default_rng(3)
    prompts = [make_prompt(rng, 9), make_prompt(rng, 4)]
    candidates = [[(11, 12, 13), (40,), (50, 51)], [(60, 61, 62, 63), (70,)]]
    expected = [
        [reference_item_log_prob(model, p, c) for c in cs]
        for p, cs in zip(prompts, candidates, strict=True)
    ]
    # rows_per_pass=2: chunks mix prompts and candidate lengths.
    got = score_candidates(model, prompts, candidates, tokenizer=SPECIAL, rows_per_pass=2)
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(expected), rtol=1e-5, atol=1e-5)
    normalized = score_candidates(
        model, prompts, candidates, length_normalize=True, tokenizer=SPECIAL
    )
    lengths = np.array([len(c) + 1 for cs in candidates for c in cs])
    np.testing.assert_allclose(
        np.concatenate(normalized), np.concatenate(expected) / lengths, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="prompt 1, candidate 0: no token ids"):
        score_candidates(model, prompts, [[(11,)], [()]], tokenizer=SPECIAL)


def test_recommend_items_distinct_catalog_items_with_exact_scores(model):
    rng = np.random.default_rng(4)
    items = random_items(rng, 30)
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, n) for n in (7, 10, 5)]
    k = 5
    results = recommend_items(model, prompts, trie, k, tokenizer=SPECIAL)
    for prompt, ranked in zip(prompts, results, strict=True):
        keys = [key for key, _ in ranked]
        scores = [score for _, score in ranked]
        assert len(set(keys)) == k and all(key in items for key in keys)
        assert scores == sorted(scores, reverse=True)
        expected = [reference_item_log_prob(model, prompt, items[key]) for key in keys]
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_wide_beams_find_the_exact_top_k(model):
    """With a beam per item nothing is pruned: the result is the true top-k of all items."""
    rng = np.random.default_rng(5)
    items = random_items(rng, 20)
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, 8), make_prompt(rng, 6)]
    for length_normalize in (False, True):
        results = recommend_items(
            model,
            prompts,
            trie,
            4,
            num_beams=len(items),
            length_normalize=length_normalize,
            tokenizer=SPECIAL,
        )
        for prompt, ranked in zip(prompts, results, strict=True):
            every = {}
            for key, ids in items.items():
                log_prob = reference_item_log_prob(model, prompt, ids)
                every[key] = log_prob / (len(ids) + 1) if length_normalize else log_prob
            best = sorted(every, key=every.get, reverse=True)[:4]
            assert [key for key, _ in ranked] == best
            np.testing.assert_allclose(
                [s for _, s in ranked], [every[key] for key in best], atol=1e-5
            )


def test_exclusion_and_k_distinct_guarantee(model):
    rng = np.random.default_rng(6)
    items = random_items(rng, 9, low=10, high=14)  # dense prefixes
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, 7), make_prompt(rng, 9)]
    keys = sorted(items)
    exclude = [set(keys[:4]), set(keys[4:8])]
    # 5 eligible items per prompt and k=5 with the default num_beams=k: all of them.
    results = recommend_items(model, prompts, trie, 5, exclude=exclude, tokenizer=SPECIAL)
    for excluded, ranked in zip(exclude, results, strict=True):
        assert {key for key, _ in ranked} == set(items) - excluded
    # Excluding everything below a shared prefix prunes it; asking for more than exist
    # returns what exists.
    assert (
        len(
            recommend_items(
                model, prompts[:1], trie, 9, exclude=[set(keys[:3])], tokenizer=SPECIAL
            )[0]
        )
        == 6
    )
    with pytest.raises(ValueError, match=r"num_beams \(2\) must be >= k \(3\)"):
        recommend_items(model, prompts, trie, 3, num_beams=2, tokenizer=SPECIAL)


def test_trained_item_comes_first(tiny_glm_config):
    torch.manual_seed(0)
    model = GLMForConditionalGeneration(tiny_glm_config)
    rng = np.random.default_rng(7)
    items = random_items(rng, 25)
    target = "item3"
    prompt = make_prompt(rng, 10)
    ids = items[target]
    a, b = len(prompt.input_ids), len(ids) + 1
    mask = torch.zeros(a + b, a + b, dtype=torch.bool)
    mask[:, :a] = True
    mask[a:, a:] = torch.ones(b, b, dtype=torch.bool).tril()
    batch = {
        "input_ids": torch.tensor(prompt.input_ids + [SOP, *ids])[None],
        "position_ids": torch.tensor(
            [
                prompt.inter + [prompt.mask_inter] * b,
                prompt.intra + span_intra_positions([0] * len(ids)),
            ]
        )[None],
        "attention_mask": mask[None, None],
        "labels": torch.tensor([-100] * a + [*ids, EOP])[None],
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    ranked = recommend_items(model, [prompt], EntityTrie(items), 3, tokenizer=SPECIAL)[0]
    assert ranked[0][0] == target
    assert ranked[0][1] > math.log(0.5)  # the model is confident, not just lucky


class Recorder(torch.nn.Module):
    """Wraps a model and keeps the inputs of every call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, **inputs):
        self.calls.append(
            {k: inputs[k].clone() for k in ("input_ids", "position_ids", "attention_mask")}
        )
        return self.model(**inputs)


def sequential_example(
    history: list[str], answer: str, items: dict[str, tuple]
) -> TokenizedExample:
    """A tokenized task example built by hand: text tokens 300+, items from ``items``."""
    ids, units, segments = [300, 301], [-1, -1], [Segment("The user watched")]
    for unit, key in enumerate([*history, answer]):
        if unit == len(history):
            ids, units = [*ids, 302], [*units, -1]  # "next:"
            segments.append(Segment("next:"))
            start = len(ids)
        ids += items[key]
        units += [unit] * len(items[key])
        segments.append(Segment(key, entity=key, answer=unit == len(history)))
    example = Example(
        tuple(segments), task="sequential", target=answer, answer_mask="mask", answer_type="item"
    )
    return TokenizedExample(ids, units, [0] * len(ids), (start, len(ids)), "mask", example)


def test_generation_positions_equal_collator_part_b(model):
    """Generated item tokens get the inter/intra positions the collator trains them with."""
    rng = np.random.default_rng(8)
    items = {key: ids for key, ids in random_items(rng, 20).items() if len(ids) > 1}
    keys = sorted(items)
    collator = BlankInfillingCollator(SPECIAL, max_length=64)
    example = sequential_example(keys[1:4], keys[0], items)
    recorder = Recorder(model)
    ranked = recommend_items(
        recorder, [collator.build_prompt(example)], EntityTrie(items), 1, tokenizer=SPECIAL
    )
    generated = ranked[0][0][0]
    # Part B fed to the model: [sop] (last column of the prompt pass), then one token per step.
    fed_ids = [int(recorder.calls[0]["input_ids"][0, -1])]
    fed_positions = [recorder.calls[0]["position_ids"][0, :, -1].tolist()]
    for call in recorder.calls[1:]:
        fed_ids.append(int(call["input_ids"][0, 0]))
        fed_positions.append(call["position_ids"][0, :, 0].tolist())
    truth = collator.encode(sequential_example(keys[1:4], generated, items))
    assert fed_ids == list(truth.part_b_ids)
    assert fed_positions == [
        list(p) for p in zip(truth.part_b_inter, truth.part_b_intra, strict=True)
    ]
    assert [intra for _, intra in fed_positions] == list(range(1, len(items[generated]) + 2))


def test_beam_of_one_is_greedy_and_masks_are_right(model):
    rng = np.random.default_rng(9)
    prompts = [make_prompt(rng, 6), make_prompt(rng, 11)]
    greedy = generate_ids(model, prompts, SPECIAL, max_new_tokens=6)
    beam = generate_ids(model, prompts, SPECIAL, max_new_tokens=6, strategy="beam", num_beams=1)
    assert beam == greedy
    recorder = Recorder(model)
    generate_ids(recorder, prompts, SPECIAL, max_new_tokens=4, strategy="beam", num_beams=3)
    # Each step's mask row: its prompt's non-padded keys, padding unseen, then [sop] and
    # every generated key (rows are grouped per prompt, 3 beams each).
    width = max(len(p.input_ids) for p in prompts)
    assert len(recorder.calls) == 4
    for step, call in enumerate(recorder.calls[1:], start=1):
        mask = call["attention_mask"][:, 0, 0]  # [rows, K]
        expected = [
            [True] * len(p.input_ids) + [False] * (width - len(p.input_ids)) + [True] * (1 + step)
            for p in prompts
            for _ in range(3)
        ]
        assert mask.tolist() == expected
        assert call["position_ids"][:, 0, 0].tolist() == [
            p.mask_inter for p in prompts for _ in range(3)
        ]


def test_unconstrained_beam_scores_are_sequence_log_probs(model):
    rng = np.random.default_rng(10)
    prompt = make_prompt(rng, 7)
    best = generate_ids(model, [prompt], SPECIAL, max_new_tokens=3, strategy="beam", num_beams=8)[0]
    greedy = generate_ids(model, [prompt], SPECIAL, max_new_tokens=3)[0]

    def log_prob(tokens):  # 3 tokens, no [eop] (cut by max_new_tokens), plain intra
        part_b = [SOP, *tokens[:-1]]
        log_probs = reference_log_probs(model, prompt, part_b, list(range(1, len(part_b) + 1)))
        return log_probs.gather(1, torch.tensor(tokens)[:, None]).sum().item()

    assert len(best) == 3 and log_prob(best) >= log_prob(greedy) - 1e-6


def test_sampling_follows_the_model_distribution(model):
    rng = np.random.default_rng(11)
    prompt = make_prompt(rng, 6)
    log_probs = reference_log_probs(model, prompt, [SOP], [1])[0]
    log_probs[list(BANNED)] = -math.inf
    top = log_probs.topk(3)
    expected = top.values.softmax(-1).numpy()  # top_k=3 renormalised
    draws = generate_ids(
        model, [prompt] * 3000, SPECIAL, max_new_tokens=1, strategy="sample", top_k=3, seed=1
    )
    tokens = np.array([(d or [EOP])[0] for d in draws])
    assert set(tokens.tolist()) <= set(top.indices.tolist())
    observed = np.array([(tokens == t).mean() for t in top.indices.tolist()])
    np.testing.assert_allclose(observed, expected, atol=0.03)
    again = generate_ids(model, [prompt] * 5, SPECIAL, max_new_tokens=4, strategy="sample", seed=3)
    assert again == generate_ids(
        model, [prompt] * 5, SPECIAL, max_new_tokens=4, strategy="sample", seed=3
    )
    top_one = generate_ids(model, [prompt], SPECIAL, max_new_tokens=4, strategy="sample", top_k=1)
    assert top_one == generate_ids(model, [prompt], SPECIAL, max_new_tokens=4)
    nucleus = generate_ids(
        model, [prompt] * 200, SPECIAL, max_new_tokens=1, strategy="sample", top_p=1e-4
    )
    assert {(d or [EOP])[0] for d in nucleus} == {
        int(log_probs.argmax())
    }  # tiny top_p keeps the argmax
    hot = generate_ids(
        model, [prompt] * 50, SPECIAL, max_new_tokens=8, strategy="sample", temperature=50.0
    )
    assert not set(t for d in hot for t in d) & set(BANNED)


def test_generate_text_with_the_real_tokenizer(model, tiny_tokenizer):
    """Decoding goes through tokenizer.decode, and no special id or padding row is sampled."""
    rng = np.random.default_rng(12)
    prompt = make_prompt(rng, 5)
    prompt.input_ids = [i % tiny_tokenizer.vocab_size for i in prompt.input_ids]
    special = {
        getattr(tiny_tokenizer, f"{n}_token_id") for n in ("cls", "eos", "pad", "mask", "sop")
    }
    ids = generate_ids(model, [prompt], tiny_tokenizer, max_new_tokens=5)
    texts = generate_text(model, [prompt], tiny_tokenizer, max_new_tokens=5)
    assert texts == [tiny_tokenizer.decode(ids[0])]
    hot = generate_ids(
        model, [prompt] * 50, tiny_tokenizer, max_new_tokens=8, strategy="sample", temperature=50.0
    )
    generated = {t for answer in hot for t in answer}
    assert not generated & special and max(generated) < tiny_tokenizer.vocab_size


def test_half_precision_runs(model):
    rng = np.random.default_rng(13)
    items = random_items(rng, 15)
    prompts = [make_prompt(rng, 6)]
    ranked = recommend_items(
        model.to(torch.bfloat16), prompts, EntityTrie(items), 4, tokenizer=SPECIAL
    )[0]
    assert len({key for key, _ in ranked}) == 4 and all(math.isfinite(s) for _, s in ranked)


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        (" 4", 4.0),
        ("4 stars out of 5", 4.0),
        ("3.5", 3.5),
        ("rating: 5.", 5.0),
        ("great", None),
        ("", None),
        ("1", 1.0),
        # Out of scale or signed: parsed as what it is; the evaluator counts and scores it.
        ("0", 0.0),
        ("10/10", 10.0),
        ("5.5", 5.5),
        (" -3", -3.0),
        ("-2 stars", -2.0),
        ("+4", 4.0),
    ],
)
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


def test_bad_inputs_are_named(model):
    prompt = PromptInputs([1, 3, 2], [0, 1], [0, 0, 0], 1, 1)
    with pytest.raises(ValueError, match=r"prompt 0: input_ids \(3\), inter \(2\)"):
        generate_ids(model, [prompt], SPECIAL, max_new_tokens=2)
    with pytest.raises(ValueError, match="strategy 'top'"):
        generate_ids(model, [prompt], SPECIAL, max_new_tokens=2, strategy="top")


def test_constrained_item_search_is_bounded_by_the_longest_item(model):
    """However large a text budget is passed, the search takes at most longest item + 1
    decoding steps (one model call each after the prompt pass)."""
    rng = np.random.default_rng(11)
    items = random_items(rng, 40)
    trie = EntityTrie(items)
    longest = max(len(ids) for ids in items.values())
    recorder = Recorder(model)
    ranked = recommend_items(
        recorder, [make_prompt(rng, 8), make_prompt(rng, 6)], trie, 5, num_beams=8,
        max_new_tokens=500, tokenizer=SPECIAL,
    )  # fmt: skip
    assert len(recorder.calls) - 1 <= longest + 1
    assert all(len(r) == 5 for r in ranked)


class CoarseLogits(torch.nn.Module):
    """Rounds logits to multiples of ``grain``: exact score ties between tokens (and, with
    a huge grain, all logits 0: every item of a length ties), so tie-breaking must agree."""

    def __init__(self, model: torch.nn.Module, grain: float) -> None:
        super().__init__()
        self.model, self.config, self.grain = model, model.config, grain

    def forward(self, **inputs):
        output = self.model(**inputs)
        output.logits = (output.logits / self.grain).round() * self.grain
        return output


@pytest.mark.parametrize("seed", range(6))
def test_static_decoder_equals_reference(model, seed):
    """The tensorized search returns the reference's items, order and scores: random
    catalogs with shared prefixes and items that prefix others, exclusions (some
    pruning whole subtrees), k above the reachable items, both rankings, narrow and
    wide beams, and tied scores."""
    rng = np.random.default_rng(100 + seed)
    items = random_items(rng, int(rng.integers(5, 40)), low=10, high=int(rng.integers(13, 40)))
    assert any(a != b and b[: len(a)] == a for a in items.values() for b in items.values())
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, int(n)) for n in rng.integers(3, 14, size=5)]
    keys = sorted(items)
    exclude = [set(rng.choice(keys, size=int(rng.integers(0, len(keys) // 2)), replace=False))
               for _ in prompts]  # fmt: skip
    exclude[0] = {key for key in keys if items[key][0] == items[keys[0]][0]}  # a whole subtree
    cases = [
        dict(k=3),
        dict(k=5, num_beams=8, exclude=exclude),
        dict(k=4, length_normalize=True, exclude=exclude),
        dict(k=len(items) + 3, exclude=exclude),  # more than reachable: all eligible items
        dict(k=2, num_beams=len(items), length_normalize=True),
        dict(k=3, max_new_tokens=2),  # too few steps for the longer items
    ]
    for wrapped in (model, CoarseLogits(model, 0.5), CoarseLogits(model, 1e9)):
        for case in cases:
            reference = recommend_items(
                wrapped, prompts, trie, tokenizer=SPECIAL, decoder="reference", **case
            )
            static = recommend_items(wrapped, prompts, trie, tokenizer=SPECIAL, **case)
            assert [[key for key, _ in r] for r in static] == [
                [key for key, _ in r] for r in reference
            ], case
            # Beams attend over the shared prompt keys in another layout: float32 rounding
            # (which rounding the logits to a grain can turn into one far logit's step).
            np.testing.assert_allclose(
                [score for r in static for _, score in r],
                [score for r in reference for _, score in r],
                atol=1e-5 if wrapped is model else 1e-2,
            )
    everything = recommend_items(model, prompts, trie, len(items) + 3, exclude=exclude,
                                 tokenizer=SPECIAL)  # fmt: skip
    for excluded, ranked in zip(exclude, everything, strict=True):
        assert sorted(key for key, _ in ranked) == sorted(set(items) - excluded)


def test_static_decoder_inputs_share_the_prompt(model):
    """After the prompt pass, each call feeds one token per beam of every prompt: inter =
    the mask position, intra = the rule's (step + 1 for a live beam), and each beam sees
    its prompt's non-padded Part A, [sop] and exactly one earlier generated key per
    step (its ancestor's), the last being its own; nothing of another beam's path."""
    rng = np.random.default_rng(20)
    items = random_items(rng, 25, low=10, high=16)
    prompts = [make_prompt(rng, n) for n in (9, 4, 12)]
    beams, width = 6, max(len(p.input_ids) for p in prompts)
    recorder = Recorder(model)
    recommend_items(recorder, prompts, EntityTrie(items), 4, num_beams=beams, tokenizer=SPECIAL)
    assert len(recorder.calls) > 2
    for step, call in enumerate(recorder.calls[1:], start=1):
        assert call["input_ids"].shape == (len(prompts), beams)
        assert call["position_ids"][:, 0].tolist() == [[p.mask_inter] * beams for p in prompts]
        mask = call["attention_mask"][:, 0]  # [prompts, beams, width + 1 + step * beams]
        for index, prompt in enumerate(prompts):
            part_a = [True] * len(prompt.input_ids) + [False] * (width - len(prompt.input_ids))
            assert mask[index, :, : width + 1].tolist() == [part_a + [True]] * beams
            generated = mask[index, :, width + 1 :].view(beams, step, beams)
            assert (generated.sum(2) == 1).all()  # one ancestor key per step
            assert generated[:, -1].nonzero()[:, 1].tolist() == list(range(beams))  # itself
        live = call["position_ids"][:, 1] != 1  # dead beams: the dead node's intra 1
        assert set(call["position_ids"][:, 1][live].tolist()) <= {step + 1}


def test_decoder_switch_is_checked(model):
    rng = np.random.default_rng(21)
    trie = EntityTrie(random_items(rng, 5))
    with pytest.raises(ValueError, match="decoder 'fast' not in"):
        recommend_items(model, [make_prompt(rng, 4)], trie, 2, tokenizer=SPECIAL, decoder="fast")


@pytest.mark.parametrize("rows_per_pass", [1, 3, 64])
def test_packed_candidate_scores_equal_reference(model, rows_per_pass):
    """Candidates packed per prompt over its shared cache score as one row each: many
    prompts of different lengths, candidates of 1-6 tokens (some shared prefixes,
    some repeated), passes that split a prompt's candidates."""
    rng = np.random.default_rng(30 + rows_per_pass)
    prompts = [make_prompt(rng, int(n)) for n in rng.integers(3, 14, size=6)]
    candidates = [
        [tuple(int(t) for t in rng.integers(10, 40, size=int(rng.integers(1, 7))))
         for _ in range(int(rng.integers(1, 9)))]
        for _ in prompts
    ]  # fmt: skip
    candidates[0].append(candidates[0][0])  # the same candidate twice scores twice the same
    candidates[1].append(candidates[1][0][:1])  # a prefix of another candidate
    for length_normalize in (False, True):
        reference = score_candidates(model, prompts, candidates, length_normalize,
                                     tokenizer=SPECIAL, decoder="reference")  # fmt: skip
        packed = score_candidates(model, prompts, candidates, length_normalize,
                                  tokenizer=SPECIAL, rows_per_pass=rows_per_pass)  # fmt: skip
        assert [len(s) for s in packed] == [len(c) for c in candidates]
        np.testing.assert_allclose(
            np.concatenate(packed), np.concatenate(reference), rtol=1e-5, atol=1e-5
        )
    assert packed[0][-1] == pytest.approx(packed[0][0], abs=1e-5)
    expected = reference_item_log_prob(model, prompts[2], candidates[2][-1])
    got = score_candidates(model, prompts, candidates, tokenizer=SPECIAL)[2][-1]
    assert got == pytest.approx(expected, abs=1e-5)


def test_candidate_lists_run_as_prefix_trees_one_list_per_pass(model):
    """A prompt's candidates run as their prefix tree: [sop] once, one token per distinct
    prefix (10 candidate tokens with [sop]s, 5 tree nodes), each at its depth's
    intra-position, seeing only its ancestors; a pass never mixes part of one list
    with another list. The scores are the reference decoder's."""
    rng = np.random.default_rng(12)
    prompts = [make_prompt(rng, 7), make_prompt(rng, 5)]
    candidates = [[(11, 12, 13), (11, 12), (11, 50)], [(60,), (61,)]]
    recorder = Recorder(model)
    got = score_candidates(recorder, prompts, candidates, tokenizer=SPECIAL, rows_per_pass=2)
    expected = score_candidates(model, prompts, candidates, tokenizer=SPECIAL, decoder="reference")
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(expected), atol=1e-5)
    passes = recorder.calls[1:]  # after the prompt pass
    # rows_per_pass=2: the 3-candidate list in parts of 2 and 1, then the second list whole.
    assert [call["input_ids"].tolist() for call in passes] == [
        [[SOP, 11, 12, 13]],  # (11, 12, 13) and its prefix (11, 12): one path
        [[SOP, 11, 50]],
        [[SOP, 60, 61]],
    ]
    assert passes[0]["position_ids"][0, 1].tolist() == [1, 2, 3, 4]  # intra by depth
    assert passes[2]["position_ids"][0, 1].tolist() == [1, 2, 2]  # siblings share depth 1
    sees = passes[2]["attention_mask"][0, 0, :, -3:].tolist()  # the tree part of the mask
    assert sees == [[True, False, False], [True, True, False], [True, False, True]]
    whole = Recorder(model)
    score_candidates(whole, prompts, candidates, tokenizer=SPECIAL)  # rows_per_pass=64
    assert [call["input_ids"].tolist() for call in whole.calls[1:]] == [
        [[SOP, 11, 12, 13, 50], [SOP, 60, 61, 0, 0]]  # one pass, a row per list
    ]


def reference_renormalized_log_prob(
    model, prompt: PromptInputs, ids: tuple[int, ...], answers: list[tuple[int, ...]]
) -> float:
    """Teacher-forced log p(ids + [eop]) with each step's probability renormalised over
    the tokens that some answer in ``answers`` (a set containing ``ids``) allows after
    the prefix: written per step from the definition, independently of the decoder."""
    log_probs = reference_log_probs(
        model, prompt, [SOP, *ids], span_intra_positions([0] * len(ids))
    )
    total = 0.0
    for position, token in enumerate((*ids, EOP)):
        prefix = ids[:position]
        allowed = {
            (answer[position] if position < len(answer) else EOP)
            for answer in answers
            if answer[:position] == prefix and len(answer) >= position
        }
        row = log_probs[position]
        total += (row[token] - torch.logsumexp(row[sorted(allowed)], 0)).item()
    return total


@pytest.mark.parametrize("decoder", ["static", "reference"])
def test_renormalized_candidate_scores_are_a_distribution_over_the_list(model, decoder):
    rng = np.random.default_rng(11)
    prompts = [make_prompt(rng, 9), make_prompt(rng, 6)]
    # Shared prefixes, one candidate a prefix of another, different lengths.
    candidates = [[(11, 12, 13), (11, 12), (40,), (11, 50, 51)], [(60, 61, 62, 63), (70,)]]
    got = score_candidates(
        model, prompts, candidates, tokenizer=SPECIAL, rows_per_pass=3, decoder=decoder,
        renormalize=True,
    )  # fmt: skip
    for prompt, answers, scores in zip(prompts, candidates, got, strict=True):
        expected = [reference_renormalized_log_prob(model, prompt, c, answers) for c in answers]
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
        assert math.isclose(sum(math.exp(s) for s in scores), 1.0, rel_tol=1e-5)
    # A lone candidate is certain; the full-softmax score of the same candidate is not.
    lone = score_candidates(model, prompts[:1], [[(11, 12)]], tokenizer=SPECIAL, renormalize=True)
    assert lone[0][0] == pytest.approx(0.0, abs=1e-6)
    assert score_candidates(model, prompts[:1], [[(11, 12)]], tokenizer=SPECIAL)[0][0] < -1.0


@pytest.mark.parametrize("decoder", ["static", "reference"])
def test_renormalized_beams_rank_eligible_items_like_candidate_scores(model, decoder):
    """With a beam per item, the renormalised search returns the exact top-k of the
    eligible items under the per-step renormalisation over the trie minus exclusions,
    i.e. candidate scores renormalised over the list of all eligible items."""
    rng = np.random.default_rng(12)
    items = random_items(rng, 18, low=10, high=16)  # dense shared prefixes
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, 8), make_prompt(rng, 5)]
    keys = sorted(items)
    exclude = [set(keys[:5]), set()]
    results = recommend_items(
        model, prompts, trie, 6, num_beams=len(items), exclude=exclude, tokenizer=SPECIAL,
        decoder=decoder, renormalize=True,
    )  # fmt: skip
    for prompt, excluded, ranked in zip(prompts, exclude, results, strict=True):
        eligible = [key for key in keys if key not in excluded]
        answers = [items[key] for key in eligible]
        every = {
            key: reference_renormalized_log_prob(model, prompt, items[key], answers)
            for key in eligible
        }
        assert math.isclose(sum(math.exp(v) for v in every.values()), 1.0, rel_tol=1e-5)
        best = sorted(every, key=every.get, reverse=True)[:6]
        assert [key for key, _ in ranked] == best
        np.testing.assert_allclose([s for _, s in ranked], [every[k] for k in best], atol=1e-5)


# ------------------------------------------------------------- guided search (D3)


def random_prior(rng: np.random.Generator, keys: list[str], rows: int) -> torch.Tensor:
    """[rows, keys] log-softmax of random logits (a stand-in for SASRec's)."""
    return torch.log_softmax(torch.from_numpy(rng.normal(0.0, 2.0, (rows, len(keys)))), -1)


def brute_force_fusion(model, prompt, items, prior_row, keys, weight, excluded=()):
    """(1 - w) * teacher-forced log p(item) + w * log prior(item) for every eligible
    item with prior mass, best first: the ranking the guided search must return."""
    fused = {}
    for column, key in enumerate(keys):
        if key in excluded or prior_row[column] == -math.inf:
            continue
        lm = reference_item_log_prob(model, prompt, items[key])
        fused[key] = (1 - weight) * lm + weight * float(prior_row[column])
    return sorted(fused.items(), key=lambda pair: -pair[1])


@pytest.mark.parametrize("weight", [0.3, 0.8])
def test_guided_search_with_a_beam_per_item_is_the_brute_force_fusion(model, weight):
    """Beams >= items prune nothing: the guided search returns exactly the ranking by
    (1 - w) LM log-probability + w log prior over all items, with those scores."""
    rng = np.random.default_rng(40)
    items = random_items(rng, 18)
    keys = sorted(items)
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, n) for n in (8, 5, 11)]
    log_prior = random_prior(rng, keys, len(prompts))
    prior = ItemPrior(keys, log_prior, weight)
    results = recommend_items(model, prompts, trie, 6, num_beams=len(items), tokenizer=SPECIAL,
                              prior=prior)  # fmt: skip
    for index, (prompt, ranked) in enumerate(zip(prompts, results, strict=True)):
        expected = brute_force_fusion(model, prompt, items, log_prior[index], keys, weight)[:6]
        assert [key for key, _ in ranked] == [key for key, _ in expected]
        np.testing.assert_allclose([s for _, s in ranked], [s for _, s in expected], atol=1e-5)


def test_guided_search_weight_zero_is_the_unguided_search(model):
    rng = np.random.default_rng(41)
    items = random_items(rng, 30)
    keys = sorted(items)
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, n) for n in (6, 9)]
    exclude = [set(keys[:5]), set()]
    prior = ItemPrior(keys, random_prior(rng, keys, 2), 0.0)
    for num_beams in (4, 10):
        plain = recommend_items(model, prompts, trie, 4, num_beams=num_beams, exclude=exclude,
                                tokenizer=SPECIAL)  # fmt: skip
        guided = recommend_items(model, prompts, trie, 4, num_beams=num_beams, exclude=exclude,
                                 tokenizer=SPECIAL, prior=prior)  # fmt: skip
        assert guided == plain


def test_guided_search_weight_one_is_the_prior_ranking(model):
    """w = 1 ignores the LM: the prior's own top-k (SASRec's ranking), scores its log-probs."""
    rng = np.random.default_rng(42)
    items = random_items(rng, 16)
    keys = sorted(items)
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, n) for n in (7, 4)]
    log_prior = random_prior(rng, keys, 2)
    exclude = [set(keys[::3]), set()]
    results = recommend_items(model, prompts, trie, 5, num_beams=len(items), exclude=exclude,
                              tokenizer=SPECIAL, prior=ItemPrior(keys, log_prior, 1.0))  # fmt: skip
    for row, (excluded, ranked) in enumerate(zip(exclude, results, strict=True)):
        masked = log_prior[row].clone()
        masked[[keys.index(key) for key in excluded]] = -math.inf
        top = masked.topk(5)
        assert [key for key, _ in ranked] == [keys[i] for i in top.indices.tolist()]
        np.testing.assert_allclose([s for _, s in ranked], top.values.tolist(), atol=1e-6)


def test_guidance_reaches_an_item_the_plain_beam_misses(model):
    """One beam: unguided, the LM's greedy path; guided by a prior sure of the LM's
    least likely other item, the beam follows that item's prefix and returns it."""
    rng = np.random.default_rng(43)
    items = random_items(rng, 25)
    keys = sorted(items)
    trie = EntityTrie(items)
    prompt = make_prompt(rng, 9)
    lm = {key: reference_item_log_prob(model, prompt, items[key]) for key in keys}
    plain = recommend_items(model, [prompt], trie, 1, tokenizer=SPECIAL)[0]
    worst = min((key for key in keys if key != plain[0][0]), key=lm.get)
    log_prior = torch.full((1, len(keys)), -40.0, dtype=torch.float64)
    log_prior[0, keys.index(worst)] = 0.0
    guided = recommend_items(model, [prompt], trie, 1, tokenizer=SPECIAL,
                             prior=ItemPrior(keys, log_prior, 0.5))[0]  # fmt: skip
    assert guided[0][0] == worst
    assert guided[0][1] == pytest.approx(0.5 * lm[worst], abs=1e-5)


def test_guided_search_never_returns_excluded_or_massless_items(model):
    """Excluded items and items of prior probability 0 never come back (prefixes
    holding only such items are pruned), scores are finite, no NaN; a prompt with
    nothing eligible gets an empty list. Items deep in the prior's tail (log p -900,
    0 in float64 if not taken relative to the best item) still count."""
    rng = np.random.default_rng(44)
    items = random_items(rng, 14, low=10, high=14)  # dense shared prefixes
    keys = sorted(items)
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, n) for n in (6, 8, 5)]
    first = items[keys[0]][0]
    subtree = {key for key in keys if items[key][0] == first}
    log_prior = random_prior(rng, keys, 3) - 900.0
    massless = {keys[-1], keys[-2]} - subtree
    log_prior[0, [keys.index(key) for key in massless]] = -math.inf
    exclude = [subtree, set(), set(keys)]
    for weight in (0.5, 1.0):
        results = recommend_items(model, prompts, trie, len(items), num_beams=len(items),
                                  exclude=exclude, tokenizer=SPECIAL,
                                  prior=ItemPrior(keys, log_prior, weight))  # fmt: skip
        assert {key for key, _ in results[0]} == set(keys) - subtree - massless
        assert {key for key, _ in results[1]} == set(keys)
        assert results[2] == []
        assert all(math.isfinite(score) for ranked in results for _, score in ranked)
        expected = brute_force_fusion(model, prompts[0], items, log_prior[0], keys, weight, subtree)
        assert [key for key, _ in results[0]] == [key for key, _ in expected]
    # Excluded items also pull no prior mass: the guide ranks what is left.
    narrow = recommend_items(model, prompts[:1], trie, 2, exclude=exclude[:1], tokenizer=SPECIAL,
                             prior=ItemPrior(keys, log_prior[:1], 0.7))[0]  # fmt: skip
    assert len(narrow) == 2 and not {key for key, _ in narrow} & (subtree | massless)


def test_guided_search_bad_inputs(model):
    rng = np.random.default_rng(45)
    items = random_items(rng, 6)
    keys = sorted(items)
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, 4)]
    prior = ItemPrior(keys, random_prior(rng, keys, 1), 0.5)
    with pytest.raises(ValueError, match="static decoder"):
        recommend_items(model, prompts, trie, 2, tokenizer=SPECIAL, prior=prior,
                        decoder="reference")  # fmt: skip
    with pytest.raises(ValueError, match="length-normalised"):
        recommend_items(model, prompts, trie, 2, tokenizer=SPECIAL, prior=prior,
                        length_normalize=True)  # fmt: skip
    with pytest.raises(ValueError, match="2 rows for 1 prompts"):
        recommend_items(model, prompts, trie, 2, tokenizer=SPECIAL,
                        prior=ItemPrior(keys, random_prior(rng, keys, 2), 0.5))  # fmt: skip
    with pytest.raises(ValueError, match="no column for 1 of the 6 catalog items"):
        recommend_items(model, prompts, trie, 2, tokenizer=SPECIAL,
                        prior=ItemPrior(keys[1:], random_prior(rng, keys[1:], 1), 0.5))  # fmt: skip
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]"):
        ItemPrior(keys, random_prior(rng, keys, 1), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        ItemPrior(keys, torch.full((1, len(keys)), math.nan), 0.5)


def test_guided_search_over_renormalised_scores_is_the_brute_force_fusion(model):
    """Guidance and renormalisation together: (1 - w) * the trie-renormalised LM
    log-probability + w * log prior, exactly, with a beam per item."""
    rng = np.random.default_rng(44)
    items = random_items(rng, 16, low=10, high=16)
    keys = sorted(items)
    trie = EntityTrie(items)
    prompts = [make_prompt(rng, n) for n in (7, 9)]
    log_prior = random_prior(rng, keys, len(prompts))
    exclude = [set(keys[:4]), set()]
    weight = 0.6
    results = recommend_items(
        model, prompts, trie, 5, num_beams=len(items), exclude=exclude, tokenizer=SPECIAL,
        prior=ItemPrior(keys, log_prior, weight), renormalize=True,
    )  # fmt: skip
    for row, (prompt, excluded, ranked) in enumerate(zip(prompts, exclude, results, strict=True)):
        eligible = [key for key in keys if key not in excluded]
        answers = [items[key] for key in eligible]
        fused = {
            key: (1 - weight) * reference_renormalized_log_prob(model, prompt, items[key], answers)
            + weight * float(log_prior[row, keys.index(key)])
            for key in eligible
        }
        best = sorted(fused, key=fused.get, reverse=True)[:5]
        assert [key for key, _ in ranked] == best
        np.testing.assert_allclose([s for _, s in ranked], [fused[k] for k in best], atol=1e-5)
