"""The entity-aware blank-infilling collator (recsysllm/collator.py, DESIGN.md section 4)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsysllm import collator as collator_module
from recsysllm.collator import (
    IGNORE_INDEX,
    AnswerBudget,
    BlankInfilling,
    BlankInfillingCollator,
    MaskingConfig,
    Span,
    build_blank_infilling,
)
from recsysllm.positions import span_intra_positions
from recsysllm.schema import Example, Segment, TokenizedExample

# Special ids below 10, text ids from 10 up: a mask token is recognisable by its id.
PAD, CLS, EOS, MASK, SMASK, GMASK, SOP, EOP = 0, 1, 2, 3, 4, 5, 6, 7
SPECIAL = SimpleNamespace(
    cls_token_id=CLS,
    eos_token_id=EOS,
    pad_token_id=PAD,
    mask_token_id=MASK,
    smask_token_id=SMASK,
    gmask_token_id=GMASK,
    sop_token_id=SOP,
    eop_token_id=EOP,
)
MASK_IDS = {MASK, SMASK, GMASK}
MASK_ONLY = MaskingConfig(mask_prob=1.0, smask_prob=0.0, gmask_prob=0.0)
SENTENCE_ONLY = MaskingConfig(mask_prob=0.0, smask_prob=1.0, gmask_prob=0.0)
DOCUMENT_ONLY = MaskingConfig(mask_prob=0.0, smask_prob=0.0, gmask_prob=1.0)
# random_layout's entities have at most 6 tokens and its plain runs at most 4.
BUDGET = AnswerBudget(item=6, short=4, text=8)


# ------------------------------------------------------------------ builders


def make_example(
    layout: list[tuple[bool, int]],
    answer_unit: int | None = None,
    answer_mask: str = "mask",
    sentence_breaks: set[int] = frozenset(),
    task: str = "sequential",
    template_id: str = "2-1",
    user: str = "u7",
) -> TokenizedExample:
    """A TokenizedExample from (is_entity, length) runs; token ids 10, 11, 12, ... (distinct).

    answer_unit: index of the run that is the answer (a task example), or None (a
    pretraining document). sentence_breaks: run indices that start a new sentence.
    """
    ids, units, sentences = [], [], []
    next_entity, sentence = 0, 0
    span = None
    for run, (is_entity, length) in enumerate(layout):
        if run in sentence_breaks:
            sentence += 1
        if run == answer_unit:
            span = (len(ids), len(ids) + length)
        ids += range(10 + len(ids), 10 + len(ids) + length)
        units += [next_entity if is_entity else -1] * length
        sentences += [sentence] * length
        next_entity += is_entity
    if answer_unit is None:
        example = Example(segments=(Segment("document"),), task="pretrain", user=user)
        return TokenizedExample(ids, units, sentences, example=example)
    example = Example(
        segments=(Segment("answer", answer=True),),
        task=task,
        template_id=template_id,
        user=user,
        answer_mask=answer_mask,
    )
    return TokenizedExample(
        ids, units, sentences, answer_span=span, answer_mask=answer_mask, example=example
    )


def random_layout(
    rng: np.random.Generator, tokens: int, entity_share: float = 0.4
) -> list[tuple[bool, int]]:
    """Runs until about ``tokens`` tokens: entities of 1-6 tokens, plain runs of 1-4."""
    layout, total = [], 0
    while total < tokens:
        is_entity = bool(rng.random() < entity_share)
        length = int(rng.integers(1, 7 if is_entity else 5))
        layout.append((is_entity, length))
        total += length
    return layout


def decode(item: BlankInfilling) -> tuple[list[int], list[tuple[int, int]]]:
    """Rebuilds the original sequence and the spans (original coordinates) from A + B.

    Also checks each Part B block's own structure: input [sop] + span, target span +
    [eop], inter = its mask's Part A index.
    """
    a_ids = item.part_a_ids
    bounds = np.cumsum([0] + [n + 1 for n in item.span_lengths]).tolist()
    blocks = []
    for i, mask_position in enumerate(item.mask_positions):
        lo, hi = bounds[i], bounds[i + 1]
        inputs, targets = item.part_b_ids[lo:hi], item.part_b_targets[lo:hi]
        assert inputs[0] == SOP and targets[-1] == EOP
        assert inputs[1:] == targets[:-1]
        assert item.part_b_inter[lo:hi] == [mask_position] * (hi - lo)
        assert a_ids[mask_position] in MASK_IDS
        blocks.append(targets[:-1])
    assert bounds[-1] == len(item.part_b_ids)
    original, spans = [], []
    block_of = {p: i for i, p in enumerate(item.mask_positions)}
    for j, token in enumerate(a_ids):
        if j in block_of:
            spans.append((len(original), len(original) + len(blocks[block_of[j]])))
            original += blocks[block_of[j]]
        else:
            assert token not in MASK_IDS
            original.append(token)
    return original, spans


def entity_runs(units: list[int]) -> list[tuple[int, int]]:
    runs = []
    for i, unit in enumerate(units):
        if unit < 0:
            continue
        if i > 0 and units[i - 1] == unit:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def expected_attention(
    lengths_a: list[int], lengths: list[int], offsets: list[int], width: int
) -> torch.Tensor:
    """The mask of one row by the definition, token pair by token pair (no shortcuts)."""
    owner = [-1] * width  # example index per column, -1 for padding
    in_b = [False] * width
    for e, (a, n, o) in enumerate(zip(lengths_a, lengths, offsets, strict=True)):
        for t in range(n):
            owner[o + t] = e
            in_b[o + t] = t >= a
    mask = torch.zeros(width, width, dtype=torch.bool)
    for q in range(width):
        for k in range(width):
            if owner[q] < 0 or owner[q] != owner[k]:
                continue
            # A keys are seen by every token of the example; B keys causally by B only.
            mask[q, k] = (not in_b[k]) or (in_b[q] and k <= q)
    return mask


# ------------------------------------------------------ the paper's example

PAPER_IDS = [11, 12, 13, 14, 15, 16, 17]  # x1..x7
PAPER_UNITS = [0, 0, 0, -1, -1, 1, 1]  # x1 x2 x3 = e1, x4 x5 plain, x6 x7 = e2


def test_paper_example_layout_exactly():
    item = build_blank_infilling(
        PAPER_IDS, PAPER_UNITS, [Span(0, 3, MASK), Span(4, 5, MASK)], SOP, EOP
    )
    assert item.part_a_ids == [MASK, 14, MASK, 16, 17]
    assert item.part_a_inter == [0, 1, 2, 3, 4]
    assert item.part_a_intra == [0, 0, 0, 1, 2]
    assert item.part_b_ids == [SOP, 11, 12, 13] + [SOP, 15]
    assert item.part_b_inter == [0, 0, 0, 0] + [2, 2]
    assert item.part_b_intra == [1, 2, 3, 4] + [1, 2]
    assert item.part_b_targets == [11, 12, 13, EOP] + [15, EOP]


def test_paper_example_through_the_collator(monkeypatch):
    # Force the sampler to choose e1 and x5 (text coordinates); the collator adds
    # [CLS]/[eos], so every inter-position of the table moves right by one.
    monkeypatch.setattr(
        collator_module, "_sample_unit_spans", lambda rng, units, masking: [(0, 3), (4, 5)]
    )
    collate = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=32, masking=MASK_ONLY, packing=False
    )
    document = TokenizedExample(PAPER_IDS, PAPER_UNITS, [0] * 7)
    batch = collate([document])
    a = [CLS, MASK, 14, MASK, 16, 17, EOS]
    b = [SOP, 11, 12, 13, SOP, 15]
    assert batch["input_ids"].tolist() == [a + b]
    assert batch["position_ids"][0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6] + [1, 1, 1, 1, 3, 3]
    assert batch["position_ids"][0, 1].tolist() == [0, 0, 0, 0, 1, 2, 0] + [1, 2, 3, 4, 1, 2]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 7 + [11, 12, 13, EOP, 15, EOP]
    assert torch.equal(batch["attention_mask"][0, 0], expected_attention([7], [13], [0], 13))


def test_layout_rejects_bad_spans():
    with pytest.raises(ValueError, match="cuts through an entity"):
        build_blank_infilling(PAPER_IDS, PAPER_UNITS, [Span(1, 3, MASK)], SOP, EOP)
    with pytest.raises(ValueError, match="non-overlapping"):
        build_blank_infilling(
            PAPER_IDS, PAPER_UNITS, [Span(3, 5, MASK), Span(4, 5, MASK)], SOP, EOP
        )
    with pytest.raises(ValueError, match="non-overlapping"):
        build_blank_infilling(
            PAPER_IDS, PAPER_UNITS, [Span(4, 5, MASK), Span(0, 3, MASK)], SOP, EOP
        )


# ---------------------------------------------------------------- properties

run_layouts = st.lists(st.tuples(st.booleans(), st.integers(1, 6)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(run_layouts, st.integers(0, 2**31 - 1), st.sets(st.integers(0, 39)))
def test_pretraining_documents_keep_every_token_and_every_entity(layout, seed, breaks):
    document = make_example(layout, sentence_breaks=breaks)
    collate = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=512, seed=seed)
    item = collate.encode(document)
    original, spans = decode(item)
    # Every token appears exactly once, in order, in Part A or a Part B target.
    assert original == [CLS, *document.input_ids, EOS]
    units = [-1, *document.unit_ids, -1]
    assert spans, "a document gets at least one span"
    # Chronological: Part B blocks follow their masks' order in Part A (decode walks A).
    assert item.mask_positions == sorted(item.mask_positions)
    for start, end in spans:
        assert start >= 1 and end <= len(original) - 1  # [CLS] and [eos] never masked
    for start, end in entity_runs(units):
        inside = [s for s, e in spans if s < end and start < e]
        assert not inside or (
            len(inside) == 1 and any(s <= start and end <= e for s, e in spans)
        ), f"entity {start}:{end} split by spans {spans}"
    # Wiring of the positions: A's entities numbered 1..len, B from the span's units.
    bounds = np.cumsum([0] + [n + 1 for n in item.span_lengths]).tolist()
    for i, (start, end) in enumerate(spans):
        assert item.part_b_intra[bounds[i] : bounds[i + 1]] == span_intra_positions(
            units[start:end]
        )
    assert item.part_a_inter == list(range(item.part_a_length))


@settings(max_examples=100, deadline=None)
@given(run_layouts, st.data())
def test_task_examples_mask_exactly_the_answer(layout, data):
    answer = data.draw(st.integers(0, len(layout) - 1))
    example = make_example(layout, answer_unit=answer)
    item = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=512).encode(example)
    original, spans = decode(item)
    assert original == [CLS, *example.input_ids, EOS]
    start, end = example.answer_span
    assert spans == [(start + 1, end + 1)]
    assert item.part_a_ids[item.mask_positions[0]] == MASK
    prompt = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=512).build_prompt(
        example
    )
    assert prompt.input_ids == item.part_a_ids


def _coverages(masking: MaskingConfig, documents: list[TokenizedExample]) -> list[float]:
    collate = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=1024, masking=masking, seed=5
    )
    return [sum(collate.encode(d).span_lengths) / len(d.input_ids) for d in documents]


def test_mask_mode_covers_the_configured_share_of_tokens():
    rng = np.random.default_rng(0)
    documents = [make_example(random_layout(rng, int(rng.integers(60, 300)))) for _ in range(400)]
    for ratio in (0.15, 0.3):
        config = MaskingConfig(mask_prob=1.0, smask_prob=0.0, gmask_prob=0.0, mask_ratio=ratio)
        assert abs(np.mean(_coverages(config, documents)) - ratio) < 0.02


def test_sentence_mode_covers_whole_sentences_at_the_configured_share():
    rng = np.random.default_rng(1)
    documents = []
    for _ in range(300):
        layout = random_layout(rng, 300)
        breaks = {i for i in range(len(layout)) if rng.random() < 0.2}
        documents.append(make_example(layout, sentence_breaks=breaks))
    assert abs(np.mean(_coverages(SENTENCE_ONLY, documents)) - 0.15) < 0.03
    collate = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=1024, masking=SENTENCE_ONLY, seed=5
    )
    for document in documents[:50]:
        _, spans = decode(collate.encode(document))
        sentences = [-1, *document.sentence_ids, -1]
        for start, end in spans:  # whole sentences: the sentence changes at both ends
            assert sentences[start - 1] != sentences[start] and sentences[end - 1] != sentences[end]


def test_document_mode_masks_a_long_suffix():
    rng = np.random.default_rng(2)
    documents = [make_example(random_layout(rng, int(rng.integers(20, 300)))) for _ in range(300)]
    coverages = _coverages(DOCUMENT_ONLY, documents)
    assert all(0.5 <= c <= 1.0 for c in coverages)
    assert 0.7 < np.mean(coverages) < 0.85  # uniform in [0.5, 1], nudged up by unit snapping
    collate = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=1024, masking=DOCUMENT_ONLY
    )
    for document in documents[:30]:
        item = collate.encode(document)
        assert item.part_a_ids[-2:] == [GMASK, EOS]  # the suffix, before [eos]


def test_modes_are_drawn_with_the_configured_probabilities():
    rng = np.random.default_rng(3)
    collate = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=1024, seed=9
    )  # 0.5 / 0.25 / 0.25
    counts = dict.fromkeys(MASK_IDS, 0)
    for _ in range(800):
        layout = random_layout(rng, 150)
        document = make_example(layout, sentence_breaks=set(range(0, len(layout), 5)))
        item = collate.encode(document)
        counts[int(item.part_a_ids[item.mask_positions[0]])] += 1
    assert abs(counts[MASK] / 800 - 0.5) < 0.06
    assert abs(counts[SMASK] / 800 - 0.25) < 0.06
    assert abs(counts[GMASK] / 800 - 0.25) < 0.06


# -------------------------------------------------------- batch and packing


def _mixed_examples(seed: int, count: int) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        layout = random_layout(rng, int(rng.integers(5, 40)))
        answer = int(rng.integers(0, len(layout))) if i % 2 else None
        examples.append(make_example(layout, answer_unit=answer))
    return examples


def test_packing_is_block_diagonal_and_equals_unpacked_rows():
    examples = _mixed_examples(seed=4, count=9)
    packed = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=96, packing=True, seed=1
    )
    single = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=96, packing=False, seed=1
    )
    p, s = packed(examples), single(examples)
    assert p["input_ids"].shape[0] < len(examples) == s["input_ids"].shape[0]
    width = p["input_ids"].shape[1]
    rows: dict[int, list[tuple[int, int, int]]] = {}
    for i, (row, offset, length) in enumerate(packed.last_placement):
        assert offset + length <= 96
        rows.setdefault(row, []).append((i, offset, length))
        n = int((s["labels"][i] != IGNORE_INDEX).sum())
        a = length - n  # Part A length: everything but Part B
        for key in ("input_ids", "labels"):
            assert torch.equal(p[key][row, offset : offset + length], s[key][i, :length])
        assert torch.equal(
            p["position_ids"][row, :, offset : offset + length], s["position_ids"][i, :, :length]
        )
        assert p["position_ids"][row, 0, offset] == 0  # positions restart per example
        window = p["attention_mask"][row, 0, offset : offset + length, offset : offset + length]
        assert torch.equal(window, s["attention_mask"][i, 0, :length, :length])
        assert torch.equal(window, expected_attention([a], [length], [0], length))
    for row, members in rows.items():
        expected = expected_attention(
            [length - int((s["labels"][i] != IGNORE_INDEX).sum()) for i, _, length in members],
            [length for _, _, length in members],
            [offset for _, offset, _ in members],
            width,
        )
        assert torch.equal(p["attention_mask"][row, 0], expected)  # block-diagonal, pads unseen
        used = sum(length for _, _, length in members)
        assert (p["input_ids"][row, used:] == PAD).all()
        assert (p["labels"][row, used:] == IGNORE_INDEX).all()


def test_position_offsets_shift_only_inter_positions_within_the_table():
    """data.position_offsets: each example's inter positions (Part A and Part B alike)
    move by one offset in 0..max_length - |A|, a function of (seed, epoch, example);
    everything else is the unshifted batch."""
    examples = _mixed_examples(seed=5, count=40)
    plain = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=96, packing=False)
    shifted = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=96, packing=False, position_offsets=True
    )
    p, s = plain(examples), shifted(examples)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(p[key], s[key])
    assert torch.equal(p["position_ids"][:, 1], s["position_ids"][:, 1])  # intra unchanged
    offsets: dict[bool, list[float]] = {True: [], False: []}  # task example?
    for i, (_, _, length) in enumerate(plain.last_placement):
        a = length - int((p["labels"][i] != IGNORE_INDEX).sum())
        moved = s["position_ids"][i, 0, :length] - p["position_ids"][i, 0, :length]
        offset = int(moved[0])
        assert (moved == offset).all()
        assert 0 <= offset <= 96 - a
        assert int(s["position_ids"][i, 0, :length].max()) < 96
        offsets[examples[i].answer_span is not None].append(offset / (96 - a))
    # Task examples and documents alike, spread over the whole range, not a constant:
    # every learned position gets trained.
    for kind in offsets.values():
        assert len(kind) >= 15 and min(kind) < 0.2 and max(kind) > 0.8
    again = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=96, packing=False, position_offsets=True
    )
    assert torch.equal(again(examples)["position_ids"], s["position_ids"])
    again.set_epoch(1)
    assert not torch.equal(again(examples)["position_ids"], s["position_ids"])


def test_first_fit_placement_and_non_pad_fraction():
    # Lengths n + 4 for one-span task examples: 12, 8, 6, 10 tokens.
    examples = [make_example([(False, n)], answer_unit=0) for n in (8, 4, 2, 6)]
    budget = AnswerBudget(item=8)  # plain answers of up to 8 tokens, 8 + 4 fits 20
    collate = BlankInfillingCollator(SPECIAL, answer_budget=budget, max_length=20, packing=True)
    batch = collate(examples)
    # First fit decreasing: 12 -> row 0; 10 -> row 1; 8 -> row 0 (20); 6 -> row 1 (16).
    assert collate.last_placement == [(0, 0, 12), (0, 12, 8), (1, 10, 6), (1, 0, 10)]
    assert batch["input_ids"].shape == (2, 20)
    assert collate.non_pad_fraction.last_batch == pytest.approx(36 / 40)
    unpacked = BlankInfillingCollator(
        SPECIAL, answer_budget=budget, max_length=20, packing=False, pad_to_multiple_of=8
    )
    batch = unpacked(examples[:2])
    assert batch["input_ids"].shape == (2, 16)  # longest 12, rounded up to 16
    assert unpacked.non_pad_fraction.last_batch == pytest.approx(20 / 32)
    batch = unpacked(examples[2:])  # 6 and 10 tokens in 2 x 16
    assert unpacked.non_pad_fraction.last_batch == pytest.approx(16 / 32)
    assert unpacked.non_pad_fraction.cumulative == pytest.approx(36 / 64)
    padded = batch["attention_mask"][0, 0]
    assert not padded[6:].any() and not padded[:, 6:].any()


def test_attention_is_bidirectional_in_a_and_causal_in_b():
    example = make_example([(True, 3), (False, 4), (True, 2)], answer_unit=2)
    batch = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=32, packing=False)(
        [example]
    )
    mask = batch["attention_mask"][0, 0]
    a = 3 + 4 + 1 + 2  # [CLS] + 7 text tokens + mask + [eos]
    assert mask[:a, :a].all()  # A sees all of A, in both directions
    assert not mask[:a, a:].any()  # A never sees B
    assert mask[a:, :a].all()  # B sees all of A
    assert torch.equal(mask[a:, a:], torch.ones(3, 3, dtype=torch.bool).tril())  # causal in B


# ---------------------------------------------------------------- the model


@pytest.fixture
def tiny_model(tiny_glm_config):
    from recsysllm.modeling import GLMForConditionalGeneration

    torch.manual_seed(0)
    return GLMForConditionalGeneration(tiny_glm_config).eval()


def _token_losses(model, batch) -> torch.Tensor:
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch["attention_mask"],
        ).logits
    return torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch["labels"], ignore_index=IGNORE_INDEX, reduction="none"
    )  # [rows, L]


def test_packed_loss_equals_unpacked_loss(tiny_model):
    examples = _mixed_examples(seed=6, count=7)
    packed = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=96, packing=True, seed=2
    )
    single = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=96, packing=False, seed=2
    )
    packed_losses, single_losses = (
        _token_losses(tiny_model, packed(examples)),
        _token_losses(tiny_model, single(examples)),
    )
    assert len(set(row for row, _, _ in packed.last_placement)) < len(examples)
    for i, (row, offset, length) in enumerate(packed.last_placement):
        torch.testing.assert_close(
            packed_losses[row, offset : offset + length],
            single_losses[i, :length],
            atol=1e-5,
            rtol=1e-5,
        )


def test_part_b_tokens_do_not_change_part_a_outputs(tiny_model):
    example = make_example([(True, 3), (False, 4), (True, 2), (False, 2)], answer_unit=2)
    batch = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=32, packing=False)(
        [example]
    )
    a = 2 + 11  # [CLS], 9 unmasked tokens, the mask, [eos]
    with torch.no_grad():
        base = tiny_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        changed = dict(batch)
        changed["input_ids"] = batch["input_ids"].clone()
        changed["input_ids"][0, a + 1] = 99  # second Part B token
        after = tiny_model(**{k: v for k, v in changed.items() if k != "labels"}).logits
    torch.testing.assert_close(after[0, : a + 1], base[0, : a + 1])  # A and [sop] unchanged
    assert not torch.allclose(after[0, a + 1 :], base[0, a + 1 :])  # the token itself and later B
    with torch.no_grad():
        changed["input_ids"] = batch["input_ids"].clone()
        changed["input_ids"][0, 1] = 99  # a Part A token changes every output
        after = tiny_model(**{k: v for k, v in changed.items() if k != "labels"}).logits
    assert not torch.allclose(after[0, a:], base[0, a:])


# --------------------------------------------------------------- truncation


def _cut(units: list[int], i: int) -> bool:
    return i in (0, len(units)) or units[i] < 0 or units[i] != units[i - 1]


def test_truncation_drops_whole_units_from_the_left_and_keeps_the_answer():
    # Without a marked history the context loses whole units from the left, room being
    # reserved for an answer of the budget's length (BUDGET.item), not the answer's own.
    rng = np.random.default_rng(7)
    reserved = BUDGET.item
    for _ in range(30):
        layout = random_layout(rng, 120, entity_share=0.7)
        answer = len(layout) - 1 - int(rng.integers(0, 3))
        example = make_example(layout, answer_unit=answer)
        max_length = int(rng.integers(12, 60))
        start, end = example.answer_span
        item = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=max_length).encode(
            example
        )
        original, spans = decode(item)
        assert item.length <= max_length
        assert item.part_a_length + 1 + reserved <= max_length  # room for any answer
        assert original[0] == CLS and original[-1] == EOS
        assert item.part_b_targets == example.input_ids[start:end] + [EOP]
        context = example.input_ids[:start] + example.input_ids[end:]
        context_units = example.unit_ids[:start] + example.unit_ids[end:]
        kept = [t for t in original[1:-1] if t not in example.input_ids[start:end]]
        lo = context.index(kept[0])
        assert kept == context[lo : lo + len(kept)]  # one contiguous window of the context
        hi = lo + len(kept)
        assert _cut(context_units, lo) and _cut(context_units, hi)
        if hi == len(context) and lo > 0:
            previous_cut = max(i for i in range(lo) if _cut(context_units, i))
            assert len(context) - previous_cut + 4 + reserved > max_length


def test_truncation_drops_right_of_the_answer_only_when_left_is_not_enough():
    # 2 plain tokens, the answer entity (3), then a 5-token entity and 4 plain tokens.
    example = make_example([(False, 2), (True, 3), (True, 5), (False, 4)], answer_unit=1)
    budget = AnswerBudget(item=3)
    item = BlankInfillingCollator(SPECIAL, answer_budget=budget, max_length=14).encode(example)
    original, spans = decode(item)
    # Left cut to the answer (drops 2), then 3 + 5 + 4 = 12 > 10 text tokens: drop two
    # plain tokens (each its own unit) on the right.
    assert original == [CLS, *example.input_ids[2:12], EOS]
    item = BlankInfillingCollator(SPECIAL, answer_budget=budget, max_length=11).encode(example)
    original, _ = decode(item)
    assert original == [CLS, *example.input_ids[2:5], EOS]  # the 5-token entity goes whole


def test_too_long_answer_names_the_example():
    example = make_example(
        [(False, 3), (True, 9)], answer_unit=1, task="sequential", template_id="2-13", user="u42"
    )
    with pytest.raises(ValueError) as error:
        BlankInfillingCollator(SPECIAL, answer_budget=AnswerBudget(item=9), max_length=12).encode(
            example
        )
    message = str(error.value)
    assert "sequential" in message and "2-13" in message and "u42" in message
    assert "max_length is 12" in message
    # 9 + 4 fits exactly
    BlankInfillingCollator(SPECIAL, answer_budget=AnswerBudget(item=9), max_length=13).encode(
        example
    )
    with pytest.raises(ValueError, match="more than the 8 reserved"):
        BlankInfillingCollator(SPECIAL, answer_budget=AnswerBudget(item=8), max_length=64).encode(
            example
        )


def test_long_pretraining_document_keeps_a_suffix_on_a_unit_boundary():
    rng = np.random.default_rng(8)
    for seed in range(20):
        document = make_example(random_layout(rng, 300, entity_share=0.6))
        item = BlankInfillingCollator(
            SPECIAL, answer_budget=BUDGET, max_length=64, seed=seed
        ).encode(document)
        original, _ = decode(item)
        assert item.length <= 64
        kept = original[1:-1]
        lo = len(document.input_ids) - len(kept)
        assert kept == document.input_ids[lo:]
        units = document.unit_ids
        assert units[lo] < 0 or units[lo] != units[lo - 1]


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("units", "span", "mask", "match"),
    [
        ([0, 0, -1, 0, -1], None, None, "entity occurrence 0 is not one contiguous run"),
        ([0, 1, 0, 1, -1], None, None, "overlap or interleave"),
        ([-1, -1, -1, -1, -1], (3, 9), "mask", r"answer_span \(3, 9\) outside"),
        ([-1, 0, 0, 0, -1], (2, 4), "mask", "cuts through an entity"),
        ([-1, 0, 0, 0, -1], (1, 4), "gmask", "needs the answer at the end"),
        ([-2, -1, -1, -1, -1], None, None, "below -1"),
    ],
)
def test_bad_input_names_the_example(units, span, mask, match):
    example = Example(
        segments=(Segment("x", answer=True),), task="review", template_id="5-3", user="u9"
    )
    bad = TokenizedExample(
        [10, 11, 12, 13, 14], units, [0] * 5, answer_span=span, answer_mask=mask, example=example
    )
    with pytest.raises(ValueError, match=match) as error:
        BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=64)([bad])
    assert "task='review', template='5-3', user='u9'" in str(error.value)


def test_lengths_that_differ_are_rejected():
    example = make_example([(False, 4)], answer_unit=0)
    example.unit_ids.append(-1)  # mutated after construction
    with pytest.raises(ValueError, match=r"user='u7'.*differ in length"):
        BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=64)([example])


def test_masking_config_validation():
    with pytest.raises(ValueError, match="mask_prob"):
        MaskingConfig(mask_prob=-0.1)
    with pytest.raises(ValueError, match="must be > 0"):
        MaskingConfig(mask_prob=0.0, smask_prob=0.0, gmask_prob=0.0)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskingConfig(mask_ratio=1.5)
    with pytest.raises(ValueError, match="gmask_min_ratio"):
        MaskingConfig(gmask_min_ratio=0.0)
    assert MaskingConfig(mask_prob=2, smask_prob=1, gmask_prob=1).mode_probabilities.tolist() == [
        0.5,
        0.25,
        0.25,
    ]


class _WordpieceSpecials:
    """glm-large's tokenizer: no [sMASK]/[gMASK]; asking for them raises."""

    cls_token_id, eos_token_id, pad_token_id, mask_token_id, sop_token_id, eop_token_id = (
        1,
        2,
        0,
        3,
        6,
        7,
    )

    @property
    def smask_token_id(self) -> int:
        raise ValueError("wordpiece GLM has no [sMASK]")

    @property
    def gmask_token_id(self) -> int:
        raise ValueError("wordpiece GLM has no [gMASK]")


def test_tokenizer_without_smask_and_gmask():
    with pytest.raises(ValueError, match="smask_prob=0"):
        BlankInfillingCollator(_WordpieceSpecials(), answer_budget=BUDGET, max_length=64)
    collate = BlankInfillingCollator(
        _WordpieceSpecials(), answer_budget=BUDGET, max_length=64, masking=MASK_ONLY
    )
    collate([make_example([(False, 20)])])
    with pytest.raises(ValueError, match="no \\[gMASK\\]"):
        collate([make_example([(False, 3), (False, 2)], answer_unit=1, answer_mask="gmask")])


# -------------------------------------------------------------- determinism


def _documents(seed: int, count: int) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    return [
        make_example(random_layout(rng, 80), sentence_breaks={2, 5, 9, 14}) for _ in range(count)
    ]


def test_same_seed_same_batches_different_seed_different_batches():
    documents = _documents(seed=10, count=12)
    first = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=256, seed=3)(documents)
    second = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=256, seed=3)(
        documents
    )
    other = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=256, seed=4)(documents)
    for key in first:
        assert torch.equal(first[key], second[key])
    assert first["input_ids"].shape != other["input_ids"].shape or not torch.equal(
        first["input_ids"], other["input_ids"]
    )


def test_masks_depend_on_the_document_and_epoch_not_the_batch():
    documents = _documents(seed=11, count=6)
    collate = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=256, seed=3)
    alone = [collate.encode(d).part_a_ids for d in documents]
    collate(documents[::-1])  # other batches and call counts change nothing
    assert [collate.encode(d).part_a_ids for d in documents] == alone
    collate.set_epoch(1)
    assert [collate.encode(d).part_a_ids for d in documents] != alone


# -------------------------------------------------------------- build_prompt


def test_build_prompt_is_the_training_part_a():
    rng = np.random.default_rng(12)
    for max_length in (16, 40, 200):
        layout = random_layout(rng, 60)
        example = make_example(layout, answer_unit=len(layout) - 2)
        collate = BlankInfillingCollator(
            SPECIAL, answer_budget=BUDGET, max_length=max_length, packing=False
        )
        batch = collate([example])
        prompt = collate.build_prompt(example)
        a = len(prompt.input_ids)
        assert prompt.input_ids == batch["input_ids"][0, :a].tolist()
        assert prompt.inter == batch["position_ids"][0, 0, :a].tolist()
        assert prompt.intra == batch["position_ids"][0, 1, :a].tolist()
        assert prompt.input_ids[0] == CLS and prompt.input_ids[-1] == EOS
        assert prompt.input_ids[prompt.mask_position] == MASK
        assert batch["position_ids"][0, 0, a] == prompt.mask_inter  # [sop] takes the mask's inter
        assert batch["input_ids"][0, a] == SOP
    # Another max_length: the same as a collator built with it.
    other = BlankInfillingCollator(SPECIAL, answer_budget=BUDGET, max_length=16)
    assert collate.build_prompt(example, max_length=16) == other.build_prompt(example)
    with pytest.raises(ValueError, match="needs a task example"):
        collate.build_prompt(make_example(layout))


# ------------------------------------------------------- the real tokenizer


def test_with_the_real_tokenizer(tiny_tokenizer):
    example = Example(
        segments=(
            Segment("The user watched"),
            Segment("Toy Story (1995)", entity="Toy Story (1995)"),
            Segment("and then"),
            Segment("Fargo (1996)", entity="Fargo (1996)", answer=True),
            Segment("."),
        ),
        task="sequential",
        template_id="2-1",
        user="u1",
        target="Fargo (1996)",
        answer_mask="mask",
        answer_type="item",
    )
    tokenized = tiny_tokenizer.tokenize_example(example)
    collate = BlankInfillingCollator(tiny_tokenizer, max_length=64, packing=False)
    batch = collate([tokenized])
    a = len(tokenized.input_ids) - (tokenized.answer_span[1] - tokenized.answer_span[0]) + 3
    answer = tokenized.input_ids[tokenized.answer_span[0] : tokenized.answer_span[1]]
    assert batch["input_ids"][0, 0] == tiny_tokenizer.cls_token_id
    assert batch["input_ids"][0, a - 1] == tiny_tokenizer.eos_token_id
    assert batch["labels"][0, a:].tolist() == answer + [tiny_tokenizer.eop_token_id]
    assert tiny_tokenizer.decode(answer).strip() == "Fargo (1996)"


def test_document_whose_spans_all_fall_in_the_truncated_prefix(monkeypatch):
    # Four one-token sentences at the start of a document of max_length - 4 tokens:
    # with 4 spans it needs 6 more tokens, dropping the prefix drops every span, so
    # the collator masks the last unit instead (which fits without truncation).
    monkeypatch.setattr(
        collator_module,
        "_sample_sentence_spans",
        lambda rng, sentences, cuts, ratio: [(0, 1), (1, 2), (2, 3), (3, 4)],
    )
    document = make_example([(False, 1)] * 12 + [(True, 4)])  # 16 tokens
    item = BlankInfillingCollator(
        SPECIAL, answer_budget=BUDGET, max_length=20, masking=SENTENCE_ONLY
    ).encode(document)
    original, spans = decode(item)
    assert original == [CLS, *document.input_ids, EOS]
    assert spans == [(13, 17)] and item.part_a_ids[item.mask_positions[0]] == MASK
    assert item.length == 20
