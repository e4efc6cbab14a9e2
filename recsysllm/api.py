"""Downstream use of a trained checkpoint: recommend, score candidates, rate, explain.

    from recsysllm.api import Recommender

    rec = Recommender.from_checkpoint("runs/tiny/final")
    rec.recommend(["Toy Story (1995)", "Fargo (1996)"], k=10)
    rec.score_candidates(["Toy Story (1995)"], ["Heat (1995)", "Babe (1995)"])
    rec.predict_rating({"age": "25-34"}, "Heat (1995)")
    rec.explain({"age": "25-34"}, "Heat (1995)", hint="action")
    rec.item_name("95"), rec.item_id("Heat (1995)")   # the source's raw item ids <-> names

    recsysllm recommend --checkpoint runs/tiny/final --user-history "Toy Story (1995)" "Fargo (1996)" -k 10

Every call renders the checkpoint's own prompt templates with
``data.tasks.render_example`` (the rendering path of training), so the model sees
the text it was trained on. By default the first *seen* template of the right
family and answer type is used; ``template_id`` picks another one.

Items are named as the checkpoint's catalog names them: the title, cut to
``data.item_name_max_tokens`` tokens (default 16) for long titles, and told apart when
titles coincide. ``item_name`` / ``item_id`` translate the source's raw item ids.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from recsysllm import checkpoints, pipeline
from recsysllm.config import Config
from recsysllm.data.catalog import EntityCatalog
from recsysllm.data.tasks import render_example
from recsysllm.inference import Inference
from recsysllm.prompt_layout import PromptInputs
from recsysllm.prompts import PromptSet, PromptTemplate
from recsysllm.schema import Example

API_USER = "api"


class Recommender:
    """A trained model with its tokenizer, catalog and prompt set, ready for queries.

    Args:
        model: the model (LoRA merged), in eval mode.
        tokenizer: the checkpoint's tokenizer.
        catalog: the checkpoint's entity catalog.
        prompts: the checkpoint's prompt set.
        config: the checkpoint's training config (max_length, data source).
        feature_templates: user-feature column -> template such as
            ``"is {value} years old"``, as in training (``from_checkpoint``: the ones saved
            in the checkpoint); None: unknown, queries with user features are refused.
        num_beams: beams of the constrained item search (at least k).
        where: the checkpoint directory, named in errors.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        catalog: EntityCatalog,
        prompts: PromptSet,
        config: Config,
        *,
        feature_templates: Mapping[str, str] | None = None,
        num_beams: int | None = None,
        where: str = "<in memory>",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.prompts = prompts
        self.config = config
        self.where = where
        self.feature_templates = dict(feature_templates) if feature_templates is not None else None
        self.num_beams = num_beams or config.eval.num_beams
        self.max_length = config.data.max_length
        self._name_of_id = {item_id: name for name, item_id in catalog.item_ids.items()}
        # Prompts, tries and per-family decoding: the evaluator's own inference module,
        # with training's max_length and answer budget.
        self.inference = Inference(
            model,
            tokenizer,
            catalog,
            max_length=self.max_length,
            answer_budget=pipeline.answer_budget(config.data, catalog, tokenizer),
            renormalize=config.eval.renormalize,
        )

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_dir: str | Path,
        base_model: str | None = None,
        device: str | torch.device | None = None,
        *,
        feature_templates: Mapping[str, str] | None = None,
        num_beams: int | None = None,
    ) -> Recommender:
        """Load a checkpoint: base model + LoRA adapter (merged), or full weights.

        The checkpoint's recorded base-model fingerprint, tokenizer fingerprint and
        catalog hash are compared (``checkpoint_meta.check_compatible``) with what is
        loaded; any difference is refused with a ``CheckpointMismatchError`` naming it.

        Args:
            checkpoint_dir: a ``checkpoint-N/`` or ``final/`` directory.
            base_model: base checkpoint directory, when it moved since training.
            device: torch device (default CPU).
            feature_templates: user-feature templates instead of the checkpoint's
                ``user_features.json`` (needed for checkpoints written without one).
            num_beams: beams of the item search (default: the config's eval.num_beams).
        """
        model, tokenizer, catalog, prompts, _, config = pipeline.load_checkpoint_for_inference(
            checkpoint_dir, base_model=base_model, device=device
        )
        return cls(
            model,
            tokenizer,
            catalog,
            prompts,
            config,
            feature_templates=(
                feature_templates
                if feature_templates is not None
                else checkpoints.read_feature_templates(checkpoint_dir)
            ),
            num_beams=num_beams,
            where=str(checkpoint_dir),
        )

    # ------------------------------------------------------------------ queries

    def recommend(
        self,
        user_history: Sequence[str],
        user_features: Mapping[str, str] | None = None,
        k: int = 10,
        exclude_history: bool = False,
        template_id: str | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k catalog items for a user, by trie-constrained beam search.

        Args:
            user_history: item titles (catalog keys), oldest first.
            user_features: feature column -> value, e.g. ``{"age": "25-34"}``.
            k: number of distinct items.
            exclude_history: never return an item of the history.
            template_id: a sequential item template without {candidates}.

        Returns:
            ``(title, log-probability)`` best first.
        """
        self._require_items(user_history)
        template = self._template("sequential", "item", template_id, candidates=False)
        prompt = self._prompt(template, user_history, user_features)
        exclude = [set(user_history)] if exclude_history else None
        return self.inference.rank_items([prompt], k, self.num_beams, exclude=exclude)[0]

    def score_candidates(
        self,
        user_history: Sequence[str],
        candidates: Sequence[str],
        user_features: Mapping[str, str] | None = None,
        template_id: str | None = None,
    ) -> list[tuple[str, float]]:
        """Exact log-likelihood of each candidate as the user's choice, best first.

        Args:
            user_history: item titles, oldest first.
            candidates: item titles to rank (shown in the prompt in this order).
            user_features: feature column -> value.
            template_id: an item template with {candidates} (default: the first seen
                direct one).
        """
        if not candidates:
            raise ValueError("score_candidates needs at least one candidate")
        self._require_items([*user_history, *candidates])
        template = self._template("direct", "item", template_id, candidates=True)
        prompt = self._prompt(template, user_history, user_features, candidates=candidates)
        scores = self.inference.score_items([prompt], [list(candidates)])[0]
        return sorted(zip(candidates, scores, strict=True), key=lambda pair: -pair[1])

    def predict_rating(
        self,
        user_features: Mapping[str, str] | None,
        item: str,
        user_history: Sequence[str] = (),
        template_id: str | None = None,
    ) -> float | None:
        """The rating the user would give ``item``; None when the output has no 1-5 number."""
        self._require_items([*user_history, item])
        template = self._template("rating", "rating", template_id)
        prompt = self._prompt(template, user_history, user_features, item=item)
        _, value = self.inference.ratings([prompt])[0]
        # A number outside the 1-5 scale is no rating (parse_rating keeps it as it is).
        return value if value is not None and 1.0 <= value <= 5.0 else None

    def explain(
        self,
        user_features: Mapping[str, str] | None,
        item: str,
        user_history: Sequence[str] = (),
        hint: str | None = None,
        template_id: str | None = None,
        max_new_tokens: int = 64,
    ) -> str:
        """A generated explanation (review sentence) of the user's opinion of ``item``.

        Args:
            hint: a word the explanation should mention; picks a template with {hint}.
        """
        self._require_items([*user_history, item])
        template = self._template("explanation", "text", template_id, hint=hint is not None)
        prompt = self._prompt(template, user_history, user_features, item=item, hint=hint)
        return self.inference.texts([prompt], max_new_tokens)[0].strip()

    # ------------------------------------------------------------------ item ids

    def item_name(self, item_id: str) -> str:
        """The catalog name (what queries take and return) of the source's raw item id."""
        if item_id not in self._name_of_id:
            raise KeyError(
                f"item id {item_id!r} is not in the catalog of {self.where} "
                f"({len(self._name_of_id)} items)"
            )
        return self._name_of_id[item_id]

    def item_id(self, name: str) -> str:
        """The source's raw item id of a catalog name."""
        self._require_items([name])
        return self.catalog.item_ids[name]

    # ------------------------------------------------------------------ helpers

    def _require_items(self, titles: Sequence[str]) -> None:
        """Raise a KeyError naming an unknown title and the nearest catalog titles."""
        for title in titles:
            if title not in self.catalog.items:
                nearest = difflib.get_close_matches(title, self.catalog.item_keys, n=5, cutoff=0.0)
                hint = f"; nearest catalog titles: {nearest}" if nearest else ""
                if title in self._name_of_id:
                    hint = (
                        f"; it is the item id of {self._name_of_id[title]!r} "
                        "(item_name() gives the name, --user-history-ids takes ids)"
                    )
                raise KeyError(
                    f"item {title!r} is not in the catalog of {self.where} "
                    f"({len(self.catalog.items)} items){hint}"
                )

    def _template(
        self,
        family: str,
        answer_type: str,
        template_id: str | None,
        *,
        candidates: bool | None = None,
        hint: bool | None = None,
    ) -> PromptTemplate:
        """The requested template, or the first seen one that fits the query."""

        def fits(template: PromptTemplate) -> bool:
            names = template.placeholders
            return (
                template.family == family
                and template.answer_type == answer_type
                and (candidates is None or ("candidates" in names) == candidates)
                and (hint is None or ("hint" in names) == hint)
            )

        if template_id is not None:
            template = self.prompts.get(template_id)
            if not fits(template):
                raise ValueError(
                    f"{template.describe()}: a {template.family} {template.answer_type} template "
                    f"cannot serve this query (needs {family} {answer_type}"
                    f"{', with {candidates}' if candidates else ''}{', with {hint}' if hint else ''})"
                )
            return template
        for template in self.prompts.templates(family, seen=True):
            if fits(template):
                return template
        raise ValueError(
            f"{self.where}: the prompt set has no seen {family} {answer_type} template for this query"
        )

    def _prompt(
        self,
        template: PromptTemplate,
        user_history: Sequence[str],
        user_features: Mapping[str, str] | None,
        **fields: Any,
    ) -> PromptInputs:
        return self.inference.prompt(self._example(template, user_history, user_features, **fields))

    def _example(
        self,
        template: PromptTemplate,
        user_history: Sequence[str],
        user_features: Mapping[str, str] | None,
        **fields: Any,
    ) -> Example:
        features = dict(user_features or {})
        templates = self.feature_templates
        if features and templates is None:
            raise ValueError(
                f"{self.where}: user features given but the checkpoint has no "
                f"{checkpoints.FEATURES_FILENAME} (written by an older recsysllm): its feature "
                "templates are unknown; pass feature_templates= to from_checkpoint"
            )
        unknown = sorted(set(features) - set(templates or {}))
        if unknown:
            raise ValueError(
                f"user feature {unknown[0]!r} is not a feature of this model "
                f"(known: {sorted(templates or {})})"
            )
        return render_example(
            template,
            self.catalog,
            user=API_USER,
            user_features=features,
            feature_templates=templates or {},
            history=list(user_history),
            **fields,
        )


def _parse_features(pairs: Sequence[str]) -> dict[str, str]:
    features = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep or not column:
            raise ValueError(f"--user-feature expects COLUMN=VALUE, got {pair!r}")
        features[column] = value
    return features


def recommend_main(argv: Sequence[str] | None = None) -> int:
    """``recsysllm recommend``: print the top-k items for a user history, one per line:
    rank, name, log-probability and the source's item id, tab-separated."""
    parser = argparse.ArgumentParser(
        prog="recsysllm recommend", description="Top-k items for a user history."
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument("--base-model", default=None, help="base model directory, if it moved")
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda if available, else cpu)"
    )
    history = parser.add_mutually_exclusive_group(required=True)
    history.add_argument(
        "--user-history", nargs="+", help="item names (catalog titles), oldest first"
    )
    history.add_argument(
        "--user-history-ids", nargs="+", help="the source's raw item ids, oldest first"
    )
    parser.add_argument(
        "--user-feature", action="append", default=[], help="COLUMN=VALUE (repeatable)"
    )
    parser.add_argument("-k", type=int, default=10, help="number of items")
    parser.add_argument("--exclude-history", action="store_true", help="never return history items")
    parser.add_argument("--template", default=None, help="sequential template id")
    args = parser.parse_args(argv)
    recommender = Recommender.from_checkpoint(
        args.checkpoint,
        base_model=args.base_model,
        device=pipeline.resolve_device(args.device),
    )
    try:
        history = args.user_history or [recommender.item_name(i) for i in args.user_history_ids]
        ranked = recommender.recommend(
            history,
            _parse_features(args.user_feature),
            k=args.k,
            exclude_history=args.exclude_history,
            template_id=args.template,
        )
    except (KeyError, ValueError) as error:
        print(f"recsysllm recommend: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    for rank, (title, score) in enumerate(ranked, start=1):
        print(f"{rank:>3}. {title}\t{score:.4f}\t{recommender.item_id(title)}")
    return 0
