"""Trie-restricted training loss for item answers (``train.renormalize``).

With ``eval.renormalize`` an item's score is the product over its tokens (and the
closing [eop]) of the token's probability *renormalised over the tokens the item trie
allows after the prefix*: a distribution over the eligible items. Training with the
full-softmax cross-entropy spends much of the gradient on telling title tokens from all
other tokens, which the trie already guarantees at inference. ``train.renormalize``
trains what is scored: each labelled token of an item answer gets a softmax restricted
to the tokens allowed after its prefix, so the loss is the cross-entropy of the same
distribution over items:

- ``all_items``: answers of next-item prompts (no candidate list) over the whole
  catalog's trie (nothing is excluded in training: the user's earlier items are a
  property of the evaluation protocol, and the all-item trie keeps the step cheap);
- ``candidates``: answers of 1-of-N prompts over the prompt's own candidate list, i.e.
  a softmax over the listed items (a listwise loss on the candidates).

Every other labelled token (text answers, ratings, yes/no, pretraining spans) keeps the
full-softmax cross-entropy. The restriction travels in the batch as ``label_allowed``
[labelled tokens, K] (token ids, -1 padded; a row of -1 only = no restriction), in the
order of ``labels != -100`` flattened row-major; the models apply it in
``modeling_glm.labelled_cross_entropy``.
"""

from __future__ import annotations

from collections.abc import Sequence

from recsysllm.config import RENORMALIZE_VARIANTS
from recsysllm.schema import Example
from recsysllm.trie import EntityTrie, allowed_next_tokens

Allowed = tuple[int, ...]


class ItemAnswerVocabulary:
    """Per labelled answer token, the token ids its restricted softmax runs over.

    Args:
        trie: the catalog's item trie (``EntityTrie.from_catalog``), after any name cap.
        eop_id: id of [eop], the label that closes every answer.
        variants: which answers are restricted (``RENORMALIZE_VARIANTS``).

    Example:
        >>> trie = EntityTrie({"a": (5, 6), "b": (5, 7), "c": (9,)})
        >>> vocab = ItemAnswerVocabulary(trie, eop_id=2, variants=["all_items"])
        >>> vocab.allowed_for(Example(segments=(), task="sequential", answer_type="item",
        ...                           target="b"), [5, 7])
        [(5, 9), (6, 7), (2,)]
    """

    def __init__(self, trie: EntityTrie, eop_id: int, variants: Sequence[str]) -> None:
        unknown = [v for v in variants if v not in RENORMALIZE_VARIANTS]
        if unknown:
            raise ValueError(f"unknown restriction {unknown}; known: {RENORMALIZE_VARIANTS}")
        self.trie = trie
        self.eop_id = eop_id
        self.all_items = "all_items" in variants
        self.candidates = "candidates" in variants
        self._catalog_cache: dict[tuple[int, ...], Allowed] = {}

    def _catalog_allowed(self, prefix: tuple[int, ...]) -> Allowed:
        cached = self._catalog_cache.get(prefix)
        if cached is None:
            tokens = [int(t) for t in self.trie.allowed_next(prefix)]
            if self.trie.keys_at(prefix):
                tokens.append(self.eop_id)
            cached = tuple(sorted(tokens))
            self._catalog_cache[prefix] = cached
        return cached

    def allowed_for(
        self, example: Example | None, answer_ids: Sequence[int]
    ) -> list[Allowed] | None:
        """The allowed token ids of each label of ``answer_ids + [eop]``, or None when the
        example's answer is not restricted (not an item answer, or its variant is off).

        Raises:
            ValueError: the answer's tokens are not the target item's trie entry, or a
                candidate is not in the catalog (the message names the example).
        """
        if example is None or example.answer_type != "item" or example.target is None:
            return None
        listed = bool(example.candidates)
        if (listed and not self.candidates) or (not listed and not self.all_items):
            return None
        answer = tuple(int(t) for t in answer_ids)
        try:
            target = self.trie.ids_of(example.target)
            candidates = [self.trie.ids_of(key) for key in example.candidates]
        except KeyError as error:
            raise ValueError(f"{example.describe()}: {error.args[0]}") from None
        if answer != target:
            raise ValueError(
                f"{example.describe()}: answer tokens {list(answer)} are not the trie's "
                f"tokens {list(target)} of item {example.target!r}"
            )
        if listed:
            if target not in candidates:
                raise ValueError(
                    f"{example.describe()}: target {example.target!r} is not in its candidate list"
                )
            return allowed_next_tokens(candidates, self.eop_id)[candidates.index(target)]
        return [self._catalog_allowed(answer[:p]) for p in range(len(answer) + 1)]
