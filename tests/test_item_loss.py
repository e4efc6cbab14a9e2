"""train.renormalize: the trie-restricted item-answer loss is the renormalised score.

The independent expectations: (1) per answer token, a log-softmax over exactly the
allowed ids, written here from logits; (2) the restricted likelihoods of all answers a
prompt allows sum to 1; (3) they equal what evaluation scores with renormalisation
(``generation.score_candidates(renormalize=True)``), so training optimises what is
ranked.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_decoder import tiny_config
from test_generation import SPECIAL

from recsysllm.collator import BlankInfillingCollator
from recsysllm.config import config_from_dict
from recsysllm.generation import score_candidates
from recsysllm.item_loss import ItemAnswerVocabulary
from recsysllm.modeling import GLMForConditionalGeneration
from recsysllm.modeling.decoder import build_decoder
from recsysllm.modeling.modeling_glm import restrict_logits
from recsysllm.schema import Example, TokenizedExample
from recsysllm.trie import EntityTrie, pad_token_sets

EOP = SPECIAL.eop_token_id
# Shared prefixes, one item a prefix of another, different lengths.
ITEMS = {
    "a": (11, 12, 13),
    "b": (11, 12),
    "c": (40,),
    "d": (11, 50, 51),
    "e": (60, 61),
    "f": (60, 62, 63, 64),
}


@pytest.fixture
def model(tiny_glm_config):
    torch.manual_seed(0)
    model = GLMForConditionalGeneration(tiny_glm_config).eval()
    with torch.no_grad():  # decisive logits: the sums below are far from uniform
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3)
    return model


def item_example(target: str, candidates: tuple[str, ...] = (), task: str = "direct"):
    """``20 21 [candidates] 23 <answer> 24`` with every item an entity occurrence."""
    ids, units = [20, 21], [-1, -1]
    unit = 0
    for key in candidates:
        ids += ITEMS[key]
        units += [unit] * len(ITEMS[key])
        unit += 1
    ids.append(23)
    units.append(-1)
    start = len(ids)
    ids += ITEMS[target]
    units += [unit] * len(ITEMS[target])
    ids.append(24)
    units.append(-1)
    source = Example(
        segments=(),
        task=task,
        template_id="t",
        user="u1",
        target=target,
        answer_type="item",
        candidates=candidates,
    )
    return TokenizedExample(
        input_ids=ids,
        unit_ids=units,
        sentence_ids=[0] * len(ids),
        answer_span=(start, start + len(ITEMS[target])),
        answer_mask="mask",
        example=source,
    )


def text_example() -> TokenizedExample:
    """A rating-like example: its answer is plain text, never restricted."""
    ids = [20, 21, 22, 30, 31, 25]
    source = Example(segments=(), task="rating", user="u2", target="4", answer_type="rating")
    return TokenizedExample(
        input_ids=ids,
        unit_ids=[-1] * len(ids),
        sentence_ids=[0] * len(ids),
        answer_span=(3, 5),
        answer_mask="mask",
        example=source,
    )


def collator(variants, packing=False) -> BlankInfillingCollator:
    vocab = ItemAnswerVocabulary(EntityTrie(ITEMS), EOP, variants) if variants else None
    return BlankInfillingCollator(SPECIAL, max_length=64, packing=packing, item_answers=vocab)


def summed_loss(model, batch) -> float:
    with torch.no_grad():
        return model(**batch, num_items_in_batch=1, return_logits=False).loss.item()


# ------------------------------------------------------------------ allowed sets


def test_allowed_sets_follow_the_catalog_trie_or_the_candidate_list():
    vocab = ItemAnswerVocabulary(EntityTrie(ITEMS), EOP, ["all_items", "candidates"])
    next_item = item_example("b", task="sequential").example
    # () -> first tokens of all items; (11,) -> 12 or 50; (11, 12) -> the end of "b" or 13
    # (ids sorted).
    assert vocab.allowed_for(next_item, ITEMS["b"]) == [(11, 40, 60), (12, 50), (EOP, 13)]
    listed = item_example("b", candidates=("c", "b", "e")).example
    assert vocab.allowed_for(listed, ITEMS["b"]) == [(11, 40, 60), (12,), (EOP,)]
    assert vocab.allowed_for(text_example().example, [30, 31]) is None
    only_lists = ItemAnswerVocabulary(EntityTrie(ITEMS), EOP, ["candidates"])
    assert only_lists.allowed_for(next_item, ITEMS["b"]) is None


def test_an_answer_that_is_not_the_targets_trie_entry_is_refused():
    vocab = ItemAnswerVocabulary(EntityTrie(ITEMS), EOP, ["all_items"])
    with pytest.raises(ValueError, match=r"example\(task='sequential'.*not the trie's tokens"):
        vocab.allowed_for(item_example("b", task="sequential").example, [11, 13])
    with pytest.raises(ValueError, match="unknown restriction"):
        ItemAnswerVocabulary(EntityTrie(ITEMS), EOP, ["all"])


def test_restrict_logits_is_a_log_softmax_over_the_allowed_ids_only():
    logits = torch.randn(3, 10)
    allowed = pad_token_sets([(2, 5), None, (0, 7, 9)])
    assert allowed.tolist() == [[2, 5, -1], [-1, -1, -1], [0, 7, 9]]
    got = restrict_logits(logits, allowed).log_softmax(-1)
    for row, ids in ((0, [2, 5]), (2, [0, 7, 9])):
        expected = logits[row, ids] - logits[row, ids].logsumexp(0)
        torch.testing.assert_close(got[row, ids], expected)
        assert torch.isinf(got[row]).sum() == 10 - len(ids)
    torch.testing.assert_close(got[1], logits[1].log_softmax(-1))
    with pytest.raises(ValueError, match="2 rows for 3 labelled tokens"):
        restrict_logits(logits, allowed[:2])


# ------------------------------------------------- the loss is the evaluated score


@pytest.mark.parametrize("listed", [True, False], ids=["candidates", "all_items"])
def test_restricted_losses_are_the_renormalised_scores_and_sum_to_one(model, listed):
    candidates = ("d", "b", "c", "a", "f") if listed else ()
    keys = candidates or tuple(sorted(ITEMS))
    task = "direct" if listed else "sequential"
    restricted = collator(["candidates" if listed else "all_items"])
    likelihoods = {}
    for key in keys:
        batch = restricted([item_example(key, candidates, task)])
        likelihoods[key] = -summed_loss(model, batch)
    assert math.isclose(sum(math.exp(v) for v in likelihoods.values()), 1.0, rel_tol=1e-5)

    prompt = restricted.build_prompt(item_example(keys[0], candidates, task))
    scored = score_candidates(
        model, [prompt], [[ITEMS[k] for k in keys]], tokenizer=SPECIAL, renormalize=True
    )[0]
    for key, score in zip(keys, scored, strict=True):
        assert likelihoods[key] == pytest.approx(score, abs=1e-5)
    # The full-softmax loss of the same answers is the unrenormalised score (sum < 1).
    full = [-summed_loss(model, collator([])([item_example(k, candidates, task)])) for k in keys]
    assert sum(math.exp(v) for v in full) < 0.5


def test_packed_rows_keep_each_labelled_tokens_own_restriction(model):
    """Packing puts examples out of input order; each label_allowed row must still be
    its own token's set (the packed loss equals the sum of the single-example losses)."""
    examples = [
        item_example("a", ("c", "a", "e")),
        text_example(),
        item_example("f", task="sequential"),
        item_example("c", ("c", "b")),
    ]
    restricted = collator(["all_items", "candidates"], packing=True)
    batch = restricted(examples)
    rows = {row for row, _, _ in restricted.last_placement}
    assert len(rows) == 1 or len(rows) < len(examples)
    labels = batch["labels"][batch["labels"] != -100]
    allowed = batch["label_allowed"]
    assert allowed.shape[0] == len(labels)
    for label, ids in zip(labels.tolist(), allowed.tolist(), strict=True):
        assert all(i == -1 for i in ids) or label in ids
    unrestricted = int((allowed < 0).all(1).sum())
    assert unrestricted == 3  # the rating answer's two tokens and its [eop]
    separate = sum(summed_loss(model, restricted([e])) for e in examples)
    assert summed_loss(model, batch) == pytest.approx(separate, rel=1e-4)


def manual_restricted_loss(model, batch) -> float:
    """Mean over labelled tokens of -log softmax over the token's allowed ids, from logits."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k not in LOSS_KEYS}).logits
    labels = batch["labels"]
    selected = logits[labels != -100].float()
    total = 0.0
    rows = zip(labels[labels != -100].tolist(), batch["label_allowed"].tolist(), strict=True)
    for row, (label, ids) in enumerate(rows):
        ids = [i for i in ids if i >= 0] or list(range(selected.shape[1]))
        total -= (selected[row, label] - selected[row, ids].logsumexp(0)).item()
    return total / len(selected)


LOSS_KEYS = ("labels", "label_allowed")


def test_the_logits_path_and_the_labelled_path_agree_with_a_restriction(model):
    batch = collator(["all_items", "candidates"])(
        [item_example("d", task="sequential"), item_example("e", ("e", "f")), text_example()]
    )
    expected = manual_restricted_loss(model, batch)
    with torch.no_grad():
        assert model(**batch, return_logits=False).loss.item() == pytest.approx(expected, rel=1e-5)
        assert model(**batch).loss.item() == pytest.approx(expected, rel=1e-5)


def test_decoder_family_takes_the_same_restriction():
    torch.manual_seed(0)
    model = build_decoder(tiny_config("llama"), block_positions=64).eval()
    batch = collator(["candidates"])([item_example("b", ("a", "b", "c")), text_example()])
    expected = manual_restricted_loss(model, batch)
    with torch.no_grad():
        assert model(**batch, return_logits=False).loss.item() == pytest.approx(expected, rel=1e-5)
        assert model(**batch).loss.item() == pytest.approx(expected, rel=1e-5)
        plain = model(**{k: v for k, v in batch.items() if k != "label_allowed"}).loss.item()
    assert plain > expected  # the full softmax over 320 ids costs more than over a few


def test_config_names_an_unknown_variant():
    with pytest.raises(ValueError, match="train.renormalize"):
        config_from_dict({"train": {"renormalize": ["items"]}})
