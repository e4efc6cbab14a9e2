"""``recsysllm evaluate`` / ``scripts/evaluate.py``: evaluate a checkpoint, write reports.

    python scripts/evaluate.py --checkpoint runs/tiny/final --out runs/tiny/eval/results.json

Reads top to bottom: load the checkpoint and its resolved training config -> take
the evaluation settings from it (``--config`` may supply the ``eval`` section and
overrides, but a value that changes the examples differs from training only with
``--allow-config-override``) -> rebuild the data (the same split as training; a
catalog whose hash differs from the checkpoint's is refused) -> build the examples,
keep the chosen families/templates and a seeded sample of users -> evaluate the
model, SASRec, fusion (SASRec guiding the model's item search), fusion-rescore (and,
when asked, model+pmi and model+lennorm; weights chosen on the valid split) and the
baselines under one protocol -> write results.json, outcomes.jsonl, results.md and
results.png next to ``--out``. SASRec weights are cached under
``<checkpoint>/sasrec`` (``--sasrec-cache``), keyed by the splits, the SASRec config
and the seed, so re-evaluating does not retrain.

Without ``--checkpoint``, ``--base-model DIR --config CONFIG`` evaluates the pretrained
base model as it is, with no training (zero-shot): its own tokenizer, no LoRA, the
data, prompts and catalog built from CONFIG; results.json then has ``"checkpoint":
null`` and ``"untrained": true``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsysllm import pipeline
from recsysllm.checkpoint_meta import check_compatible
from recsysllm.config import (
    FUSION_GRID,
    RENORMALIZE_VARIANTS,
    Config,
    config_from_dict,
    load_config,
)
from recsysllm.config import apply_overrides as apply_override_strings
from recsysllm.evaluation.baselines import evaluate_baselines, training_statistics
from recsysllm.evaluation.evaluator import EvalProtocol, ModelRanker, evaluate, history_items
from recsysllm.evaluation.report import write_reports
from recsysllm.evaluation.rows import RowSettings, extra_rows
from recsysllm.evaluation.sasrec import SASRecConfig
from recsysllm.evaluation.text_baselines import reference_rows
from recsysllm.inference import Inference
from recsysllm.prompts import load_prompts
from recsysllm.schema import TASK_FAMILIES, Example

# data fields that change which examples exist or how their prompts read: evaluation
# must use the checkpoint's values (training's) unless --allow-config-override.
EXAMPLE_FIELDS = (
    "max_length",
    "source",
    "category",
    "k_core",
    "short_ratio",
    "medium_ratio",
    "long_ratio",
    "short_window_days",
    "medium_window_days",
    "short_fraction",
    "medium_fraction",
    "history_budget",
    "num_negatives",
    "answer_text_tokens",
    "item_name_max_tokens",
    "item_name_disambiguation",
    "prompts_dir",
    "seed",
    "split_seed",
)


class ConfigMismatchError(ValueError):
    """A --config (or override) that changes the examples the checkpoint was trained on."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsysllm evaluate",
        description="Evaluate a checkpoint per task family x template (seen / unseen), with baselines.",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint directory (adapter or full weights); without it, --base-model and "
        "--config evaluate the untrained base model (zero-shot)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="a YAML for the eval section (default: the checkpoint's own resolved config); "
        "its data fields must agree with the checkpoint's. Without --checkpoint: the recipe "
        "whose data, prompts and settings the untrained base model is evaluated on",
    )
    parser.add_argument(
        "--allow-config-override",
        action="store_true",
        help="accept a --config/override whose example-changing data fields "
        f"({', '.join(EXAMPLE_FIELDS)}) differ from the checkpoint's",
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="base model directory (default: recorded in the checkpoint); without "
        "--checkpoint: the pretrained model to evaluate untrained",
    )
    parser.add_argument(
        "--split", choices=("valid", "test"), default=None, help="default: eval.split of the config"
    )
    parser.add_argument(
        "--prompts", choices=("seen", "unseen", "all"), default=None, help="default: eval.prompts"
    )
    parser.add_argument(
        "--families", nargs="+", choices=TASK_FAMILIES, default=None, help="default: eval.families"
    )
    parser.add_argument(
        "--templates",
        nargs="+",
        default=None,
        metavar="ID",
        help="evaluate only these template ids (of the checkpoint's prompt set)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="a seeded random sample of N users (the same users for every family, template "
        "and system; seed data.split_seed, else data.seed); default: eval.limit",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument("--num-beams", type=int, default=None, help="default: eval.num_beams")
    parser.add_argument(
        "--exclude-history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="all-item rankings of every row exclude the user's training history "
        "(default: eval.exclude_history, true); --no-exclude-history excludes nothing",
    )
    parser.add_argument(
        "--sasrec",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a SASRec row in every ranking table, trained on the same splits (seed "
        "data.split_seed, else data.seed) and cached (default: eval.sasrec, true); "
        "--no-sasrec drops it and the fusion row",
    )
    parser.add_argument(
        "--fusion",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="an LM + SASRec fusion row: (1 - w) LM log-probability + w SASRec log-softmax, "
        "SASRec guiding the model's item search (D3-style), w chosen on the valid split "
        "(default: eval.fusion, true)",
    )
    parser.add_argument(
        "--fusion-rescore",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with the fusion row, also a fusion-rescore row: the model's own beam top-N "
        "rescored by the same score (cheap; all-item examples only; default: "
        "eval.fusion_rescore, true)",
    )
    parser.add_argument(
        "--fusion-grid",
        type=float,
        nargs="+",
        default=None,
        metavar="W",
        help="weights the guided fusion search tries on the valid split, one search of the "
        f"valid examples each (default: eval.fusion_grid, {' '.join(f'{w:g}' for w in FUSION_GRID)})",
    )
    parser.add_argument(
        "--pmi",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a model+pmi row: log p(item | prompt) - alpha * log p(item | user-free prompt), "
        "alpha chosen on the valid split (default: eval.pmi, false)",
    )
    parser.add_argument(
        "--length-norm-row",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a model+lennorm ablation row (log-probability per token; default: "
        "eval.length_norm_row, false)",
    )
    parser.add_argument(
        "--renormalize",
        nargs="+",
        choices=(*RENORMALIZE_VARIANTS, "none"),
        default=None,
        metavar="VARIANT",
        help="item rankings scored with each token's probability renormalised over the "
        "tokens allowed after the prefix: all_items, candidates, or none (default: "
        "eval.renormalize)",
    )
    parser.add_argument(
        "--sasrec-max-epochs",
        type=int,
        default=None,
        help="SASRec epochs at most (default: eval.sasrec_max_epochs, else 200); a capped "
        "SASRec is reported as a lower bound",
    )
    parser.add_argument(
        "--sasrec-max-seconds",
        type=float,
        default=None,
        help="SASRec training time cap in seconds (default: eval.sasrec_max_seconds, none)",
    )
    parser.add_argument(
        "--sasrec-cache",
        default=None,
        metavar="DIR",
        help="cache of SASRec weights (default: eval.sasrec_cache_dir, else <checkpoint>/sasrec, "
        "or beside --out when the checkpoint is not writable)",
    )
    parser.add_argument(
        "--valid-limit",
        type=int,
        default=None,
        help="choose fusion weights / PMI alphas on the valid examples of a seeded sample of "
        "N evaluated users (default: eval.valid_limit, all)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="generation budget for text answers (default: data.answer_text_tokens)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--out", required=True, help="path of results.json (.md, .png, outcomes.jsonl next to it)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (as for training)")
    return parser


def resolve_config(
    checkpoint_config: Config,
    config_path: str | None,
    overrides: Sequence[str],
    allow_override: bool,
) -> tuple[Config, list[str]]:
    """The config evaluation uses, and the example-changing fields that were overridden.

    Default: the checkpoint's resolved config with ``overrides`` applied. With
    ``config_path``: that YAML with ``overrides``. Either way, a ``data`` field of
    EXAMPLE_FIELDS that differs from the checkpoint's is refused naming the field and
    both values, unless ``allow_override``.

    Raises:
        ConfigMismatchError: a differing example-changing field without ``allow_override``.
    """
    if config_path is not None:
        requested = load_config(config_path, list(overrides))
        where = config_path
    else:
        raw = apply_override_strings(checkpoint_config.to_dict(), list(overrides))
        requested = config_from_dict(raw, where="checkpoint config (overrides)")
        where = "override"
    differing = [
        name
        for name in EXAMPLE_FIELDS
        if getattr(requested.data, name) != getattr(checkpoint_config.data, name)
    ]
    if differing and not allow_override:
        name = differing[0]
        raise ConfigMismatchError(
            f"{where}: field data.{name} is {getattr(requested.data, name)!r} but the checkpoint "
            f"was trained with {getattr(checkpoint_config.data, name)!r}; it changes the "
            "evaluation examples. Drop it to use the checkpoint's value, or pass "
            f"--allow-config-override (differing: {', '.join('data.' + d for d in differing)})"
        )
    return requested, differing


def select_templates(
    examples: Sequence[Example], templates: Sequence[str] | None, known: Sequence[str]
) -> list[Example]:
    """The examples of the given template ids (all for None); an unknown id is an error."""
    if templates is None:
        return list(examples)
    unknown = sorted(set(templates) - set(known))
    if unknown:
        raise ValueError(
            f"--templates: unknown template id {unknown[0]!r}; the checkpoint's prompt set has "
            f"{sorted(known)}"
        )
    chosen = set(templates)
    return [e for e in examples if e.template_id in chosen]


def sample_users(
    examples: Sequence[Example], limit: int | None, seed: int
) -> tuple[list[Example], dict[str, Any]]:
    """The examples of a seeded random sample of ``limit`` users, and its description.

    Users are drawn without replacement from the sorted ids of all users with an
    example (numpy PCG64 seeded with ``seed``), so every family, template and system
    sees the same users, and the sample does not depend on example order.

    Returns:
        (kept examples, ``{"limit", "seed", "population", "users", "description"}``).
    """
    users = sorted({e.user for e in examples})
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if limit is None or limit >= len(users):
        chosen = users
        description = f"all {len(users)} users with an example"
    else:
        picks = np.random.default_rng(seed).choice(len(users), size=limit, replace=False)
        chosen = sorted(users[i] for i in picks.tolist())
        description = (
            f"a random sample of {limit} of {len(users)} users (numpy default_rng({seed}), "
            "without replacement), the same for every family, template and system"
        )
    kept = set(chosen)
    info = {
        "limit": limit,
        "seed": seed,
        "population": len(users),
        "users": chosen,
        "description": description,
    }
    return [e for e in examples if e.user in kept], info


def row_settings(args, eval_args, num_beams: int, batch_size: int, seed: int) -> RowSettings:
    """The extra rows asked for by the flags, else by the config's eval section."""

    def pick(flag, field_name):
        return getattr(eval_args, field_name) if flag is None else flag

    sasrec_config = SASRecConfig()
    max_epochs = pick(args.sasrec_max_epochs, "sasrec_max_epochs")
    max_seconds = pick(args.sasrec_max_seconds, "sasrec_max_seconds")
    if max_epochs is not None:
        sasrec_config = dataclasses.replace(sasrec_config, max_epochs=max_epochs)
    if max_seconds is not None:
        sasrec_config = dataclasses.replace(sasrec_config, max_seconds=max_seconds)
    return RowSettings(
        sasrec=pick(args.sasrec, "sasrec"),
        fusion=pick(args.fusion, "fusion"),
        fusion_rescore=pick(args.fusion_rescore, "fusion_rescore"),
        fusion_grid=tuple(pick(args.fusion_grid, "fusion_grid")),
        pmi=pick(args.pmi, "pmi"),
        length_norm=pick(args.length_norm_row, "length_norm_row"),
        sasrec_config=sasrec_config,
        sasrec_seed=seed,
        num_candidates=num_beams,
        batch_size=batch_size,
    )


def sasrec_cache_dir(args, eval_args) -> Path:
    """--sasrec-cache, else eval.sasrec_cache_dir, else <checkpoint>/sasrec when the
    checkpoint directory is writable, else (or with no checkpoint) ``sasrec`` beside --out."""
    chosen = args.sasrec_cache or eval_args.sasrec_cache_dir
    if chosen:
        return Path(chosen)
    if args.checkpoint is None:
        return Path(args.out).parent / "sasrec"
    checkpoint = Path(args.checkpoint)
    if os.access(checkpoint, os.W_OK):
        return checkpoint / "sasrec"
    return Path(args.out).parent / "sasrec"


def valid_selection(
    data,
    examples: Sequence[Example],
    families: Sequence[str],
    prompt_set_name: str,
    templates: Sequence[str] | None,
    known: Sequence[str],
    protocol: EvalProtocol,
    valid_limit: int | None,
    seed: int,
) -> tuple[list[Example], EvalProtocol]:
    """VALID-split ranking examples of the evaluated users and templates (a seeded sample
    of ``valid_limit`` users with it), and their protocol: where weights are chosen.

    When none of the evaluated users has a valid target (every user sits whole in one
    split), a seeded sample of as many valid users stands in.
    """
    ranking = [f for f in families if f in ("sequential", "direct")]
    if not ranking:
        return [], protocol
    valid = data.tasks.examples("valid", ranking, prompts=prompt_set_name, seed=seed)
    valid = select_templates(valid, templates, known)
    users = {e.user for e in examples}
    overlap = [e for e in valid if e.user in users]
    if overlap:
        valid = overlap
    else:
        # Users with fewer than three events sit whole in one split (clothing reviews):
        # the evaluated users have no valid target, so as many other users' do.
        valid, _ = sample_users(valid, len(users), seed)
    valid, _ = sample_users(valid, valid_limit, seed)
    valid_protocol = dataclasses.replace(protocol, history=history_items(data.splits, "valid"))
    return valid, valid_protocol


def load_untrained(args) -> tuple[Any, Any, Config]:
    """(model, tokenizer, config) of ``--base-model`` evaluated with no training on the
    recipe ``--config`` (with the overrides)."""
    if args.base_model is None or args.config is None:
        raise ValueError(
            "recsysllm evaluate: give --checkpoint, or --base-model and --config to evaluate "
            "an untrained base model"
        )
    config = load_config(args.config, [*args.overrides, f"model.base_model={args.base_model}"])
    model, tokenizer = pipeline.load_base_model_for_inference(
        config.model, config.tokenizer, device=args.device
    )
    return model, tokenizer, config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The model loaders default to CPU; the CLI promises the GPU when there is one.
    args.device = pipeline.resolve_device(args.device)
    if args.checkpoint is not None:
        model, tokenizer, catalog, prompts, meta, checkpoint_config = (
            pipeline.load_checkpoint_for_inference(
                args.checkpoint, base_model=args.base_model, device=args.device
            )
        )
        config, overridden = resolve_config(
            checkpoint_config, args.config, args.overrides, args.allow_config_override
        )
        base_model = meta.base_model
    else:
        model, tokenizer, config = load_untrained(args)
        meta, overridden, base_model = None, [], args.base_model
        prompts = load_prompts(config.data.prompts_dir)
    eval_args, data_args = config.eval, config.data
    pipeline.check_position_table(model.config, data_args.max_length)
    split = args.split or eval_args.split
    prompt_set_name = args.prompts or eval_args.prompts
    families = args.families or list(eval_args.families)
    batch_size = args.batch_size or eval_args.batch_size
    num_beams = args.num_beams or eval_args.num_beams
    exclude_history = (
        eval_args.exclude_history if args.exclude_history is None else args.exclude_history
    )
    max_new_tokens = args.max_new_tokens or data_args.answer_text_tokens
    limit = args.limit if args.limit is not None else eval_args.limit
    renormalize = sorted(
        set(eval_args.renormalize if args.renormalize is None else args.renormalize) - {"none"}
    )

    data = pipeline.prepare_data(data_args, seed=data_args.evaluation_seed, prompts=prompts)
    data = pipeline.cap_item_names(data, data_args, tokenizer)
    if meta is None:
        catalog = data.catalog
    else:
        # The examples must name the items the adapter was trained on.
        check_compatible(meta, catalog_hash=data.catalog.hash, where=args.checkpoint)
    examples = data.tasks.examples(
        split, families, prompts=prompt_set_name, seed=data_args.evaluation_seed
    )
    known = [t.id for family in prompts.families for t in prompts.templates(family)]
    examples = select_templates(examples, args.templates, known)
    examples, user_sample = sample_users(examples, limit, data_args.evaluation_seed)
    if not examples:
        print(
            f"recsysllm evaluate: no {split} examples for families {families}"
            + (f" and templates {args.templates}" if args.templates else ""),
            file=sys.stderr,
        )
        return 1

    protocol = EvalProtocol(
        ks=tuple(eval_args.top_k),
        exclude_history=exclude_history,
        history=history_items(data.splits, split),
        seed=data_args.evaluation_seed,
        catalog_size=len(catalog.item_keys),
    )
    budget = pipeline.answer_budget(data_args, catalog, tokenizer)
    settings_rows = row_settings(args, eval_args, num_beams, batch_size, data_args.evaluation_seed)
    settings_rows = dataclasses.replace(
        settings_rows, sasrec_cache_dir=sasrec_cache_dir(args, eval_args)
    )
    lm = ModelRanker(
        Inference(
            model,
            tokenizer,
            catalog,
            max_length=data_args.max_length,
            answer_budget=budget,
            renormalize=renormalize,
        ),
        num_beams,
        list_length=settings_rows.num_candidates if settings_rows.needs_valid else 0,
    )
    results = evaluate(
        model,
        tokenizer,
        catalog,
        examples,
        protocol=protocol,
        max_length=data_args.max_length,
        answer_budget=budget,
        batch_size=batch_size,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        prompts=prompts,
        ranker=lm,
    )
    valid_examples: list[Example] = []
    valid_protocol = protocol
    valid_limit = args.valid_limit if args.valid_limit is not None else eval_args.valid_limit
    if settings_rows.needs_valid and split == "valid":
        # Weights chosen on the evaluated examples themselves (recorded as such); the
        # same objects, so the model's answers are reused.
        valid_examples, _ = sample_users(examples, valid_limit, data_args.evaluation_seed)
    elif settings_rows.needs_valid:
        valid_examples, valid_protocol = valid_selection(
            data, examples, families, prompt_set_name, args.templates, known, protocol,
            valid_limit, data_args.evaluation_seed,
        )  # fmt: skip
    rows, row_facts = extra_rows(
        lm=lm,
        splits=data.splits,
        split=split,
        examples=examples,
        protocol=protocol,
        valid_examples=valid_examples,
        valid_protocol=valid_protocol,
        settings=settings_rows,
        prompt_set=prompts,
        report=lambda message: print(f"recsysllm evaluate: {message}", file=sys.stderr, flush=True),
    )
    item_counts, user_ratings = training_statistics(data.splits, split)
    has_ratings = any(ratings for ratings in user_ratings.values())
    baselines = evaluate_baselines(
        examples,
        items=catalog.item_keys,
        item_counts=item_counts,
        protocol=protocol,
        user_ratings=user_ratings if has_ratings else None,
    )
    baselines = {**rows, **baselines, **reference_rows(examples, data.splits, split, protocol)}
    settings = {name: getattr(data_args, name) for name in EXAMPLE_FIELDS}
    settings |= {
        "answer_budget": {"item": budget.item, "short": budget.short, "text": budget.text},
        "num_beams": num_beams,
        "batch_size": batch_size,
        "device": args.device,
        "max_new_tokens": max_new_tokens,
        "exclude_history": exclude_history,
        "renormalize": renormalize,
        "config_source": args.config or "checkpoint",
        "overridden_example_fields": overridden,
    }
    metadata = {
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "base_model": base_model,
        "untrained": args.checkpoint is None,
        "split": split,
        "prompts": prompt_set_name,
        "families": families,
        "templates": args.templates,
        "settings": settings,
        "user_sample": user_sample,
        "num_examples": len(examples),
        "catalog_hash": catalog.hash,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "seed": data_args.evaluation_seed,
        # 1-of-(N+1) direct lists; N < data.num_negatives on a small catalog.
        "direct_negatives": data.splits.num_negatives,
        "data_notes": dict(data.splits.tables.notes),
        "rows": {
            "enabled": {
                "SASRec": settings_rows.sasrec,
                "fusion": settings_rows.sasrec and settings_rows.fusion,
                "fusion-rescore": settings_rows.sasrec
                and settings_rows.fusion
                and settings_rows.fusion_rescore,
                "model+pmi": settings_rows.pmi,
                "model+lennorm": settings_rows.length_norm,
            },
            **row_facts,
        },
        "config": config.to_dict(),
    }
    paths = write_reports(results, baselines, metadata, args.out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {paths['json']}, {paths['outcomes']}, {paths['markdown']}, {paths['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
