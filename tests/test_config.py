"""Config loading: every recipe YAML parses and builds, overrides, unknown keys, validation."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from recsysllm.config import (
    Config,
    DataArgs,
    TrainArgs,
    config_from_dict,
    load_config,
    valid_keys,
)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
DS_CONFIGS = sorted((REPO / "configs" / "ds").glob("*.json"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


MINIMAL = """\
model: {from_scratch: {hidden_size: 32}}
tokenizer: {sentencepiece_vocab_size: 300}
lora: {enabled: false}
"""


def test_there_are_recipes():
    names = {p.name for p in CONFIGS}
    assert {
        "glm10b_lora.yaml",
        "glm2b_lora.yaml",
        "glm_large_lora.yaml",
        "tiny_ml100k.yaml",
    } <= names
    assert {"zero2.json", "zero3.json", "zero3_offload.json"} <= {p.name for p in DS_CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_loads_and_starts_with_its_launch_command(path: Path):
    first_line = path.read_text().splitlines()[0]
    assert (
        first_line.startswith("# ")
        and "scripts/train.py --config configs/" + path.name in first_line
    )
    config = load_config(path)
    assert isinstance(config, Config)
    # Round trip: the resolved dict rebuilds an equal config.
    assert config_from_dict(config.to_dict()) == config
    if config.train.deepspeed is not None:
        assert (REPO / config.train.deepspeed).is_file()
    if config.lora.enabled:
        # null: the family's own defaults (recsysllm.modeling.<family>.lora_targets)
        assert config.lora.target_modules is None
        assert config.model.base_model is not None


def test_builders_accept_every_recipe():
    """The config sections turn into the components' own config objects without loading weights."""
    from recsysllm.collator import MaskingConfig
    from recsysllm.data.sampling import SamplingConfig
    from recsysllm.modeling import GLMConfig
    from recsysllm.pipeline import sampling_config
    from recsysllm.training import masking_config

    for path in CONFIGS:
        config = load_config(path)
        assert isinstance(sampling_config(config.data), SamplingConfig)
        assert isinstance(masking_config(config.data), MaskingConfig)
        if config.model.from_scratch is not None:
            GLMConfig(
                vocab_size=config.tokenizer.sentencepiece_vocab_size or 320,
                **config.model.from_scratch,
            )


def test_paper_recipe_values():
    config = load_config(REPO / "configs" / "glm10b_lora.yaml")
    assert config.lora.r == 8
    assert config.train.learning_rate == pytest.approx(1e-5)
    assert config.train.epochs == 8
    assert config.train.per_device_batch_size == 32
    assert config.data.max_length == 1024
    assert config.train.precision == "bf16"
    assert config.train.gradient_checkpointing
    assert config.train.deepspeed == "configs/ds/zero2.json"
    assert (
        json.loads((REPO / config.train.deepspeed).read_text())["zero_optimization"]["stage"] == 2
    )


def test_glm_large_recipe_needs_no_gmask():
    config = load_config(REPO / "configs" / "glm_large_lora.yaml")
    assert config.data.gmask_prob == 0 and config.data.smask_prob == 0
    # Free-text families are hidden by [gMASK]: they must be off for glm-large.
    assert config.data.mixture["explanation"] == 0 and config.data.mixture["review"] == 0


def movielens_like_tables(num_users: int = 60, num_items: int = 150, events: int = 25):
    """MovieLens-shaped tables (seeded): titles of 3-6 common words and a year, about as long
    in GPT-2 tokens as MovieLens-100K's (about 7), every user with ``events`` events."""
    import numpy as np

    from tests.conftest import rows_to_tables

    rng = np.random.default_rng(0)
    words = ["the", "man", "who", "love", "night", "story", "house", "city", "last",
             "return", "star", "day", "dead", "war", "little", "big", "time", "world",
             "girl", "king", "blue", "white", "black", "secret", "game"]  # fmt: skip
    titles = [
        " ".join(rng.choice(words, size=int(rng.integers(3, 7)))).title()
        + f" ({int(rng.integers(1930, 1999))})"
        for _ in range(num_items)
    ]
    rows = [
        (f"u{user}", f"i{item}", day * 86_400)
        for user in range(num_users)
        for day, item in enumerate(rng.choice(num_items, size=events, replace=False))
    ]
    return rows_to_tables(
        rows, {f"i{i}": title for i, title in enumerate(titles)}, name="movielens-like"
    )


def test_glm_large_recipe_lists_fit_its_512_positions():
    """glm-large has 512 positions and candidate lists are never cut: its recipe's 1-of-N
    lists must fit, under every template it trains and evaluates, with room to spare for
    its WordPiece tokenizer (not shipped; GPT-2 BPE stands in: it splits English titles
    alike), so training is not refused at its first minute. 1 + 99 lists need about 990."""
    from recsysllm import pipeline
    from recsysllm.tokenization import load_tokenizer
    from recsysllm.training import check_candidate_prompts_fit, check_evaluation_prompts_fit

    config = load_config(REPO / "configs" / "glm_large_lora.yaml")
    assert config.data.max_length == 512
    # A quarter of the positions to spare: the check at 384.
    margin = load_config(REPO / "configs" / "glm_large_lora.yaml", ["data.max_length=384"])
    data = pipeline.prepare_from_tables(movielens_like_tables(), margin.data, margin.data.seed)
    tokenizer = load_tokenizer(REPO / "tests" / "assets" / "gpt2")
    check_candidate_prompts_fit(margin, data, tokenizer)
    check_evaluation_prompts_fit(margin, data, tokenizer)


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_configs_defer_to_trainer(path: Path):
    ds = json.loads(path.read_text())
    for key in (
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert ds[key] == "auto", key
    assert ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] == "auto"


def test_overrides_dotted_and_shorthands(tmp_path: Path):
    path = _write(tmp_path, MINIMAL)
    config = load_config(
        path,
        [
            "train.learning_rate=1e-4",  # YAML 1.1 reads this as a string: still a float
            "output_dir=/x/y",
            "max_steps=7",
            "data.packing=false",
            "eval.top_k=[1, 3]",
            "data.mixture={rating: 2, pretrain: 0.5}",
            "train.save_total_limit=null",
        ],
    )
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert isinstance(config.train.learning_rate, float)
    assert config.train.output_dir == "/x/y"
    assert config.train.max_steps == 7
    assert config.data.packing is False
    assert config.eval.top_k == [1, 3]
    assert config.data.mixture == {"rating": 2.0, "pretrain": 0.5}
    assert config.train.save_total_limit is None


def test_an_override_sets_one_entry_of_a_mapping_field(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "data: {mixture: {rating: 2, direct: 1}}\n")
    config = load_config(
        path, ["model.from_scratch.max_sequence_length=2048", "data.mixture.direct=0.5"]
    )
    # The entry is set, the file's other entries stay.
    assert config.model.from_scratch == {"hidden_size": 32, "max_sequence_length": 2048}
    assert config.data.mixture == {"rating": 2.0, "direct": 0.5}
    assert (
        config.data.mixture
        == load_config(path, ["data.mixture={rating: 2, direct: .5}"]).data.mixture
    )
    # Not in the file: the entry joins the default's entries.
    (tmp_path / "bare").mkdir()
    bare = _write(tmp_path / "bare", MINIMAL)
    default = load_config(bare, ["data.mixture.direct=0.5"]).data.mixture
    assert default == {**DataArgs().mixture, "direct": 0.5}
    # A mapping the file leaves out starts from the field's default ({} here), and the
    # resulting config is validated as a whole, naming the file.
    (tmp_path / "pretrained").mkdir()
    pretrained = _write(tmp_path / "pretrained", "model: {base_model: /ckpt}\n")
    with pytest.raises(ValueError, match=r"pretrained/recipe\.yaml: .*exactly one of"):
        load_config(pretrained, ["model.from_scratch.hidden_size=64"])
    with pytest.raises(KeyError, match=r"'model\.from_scratch\.hidden_sise'.*hidden_size"):
        load_config(path, ["model.from_scratch.hidden_sise=64"])
    with pytest.raises(KeyError, match=r"unknown config key 'train\.learning_rate\.x'"):
        load_config(path, ["train.learning_rate.x=1"])  # not a mapping
    with pytest.raises(ValueError, match=r"data\.mixture.*'nope'"):
        load_config(path, ["data.mixture.nope=1"])
    with pytest.raises(KeyError, match=r"'model\.from_scratch\.a\.b'"):
        load_config(path, ["model.from_scratch.a.b=1"])  # one level only


def test_unknown_key_in_file_names_key_file_and_nearest(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "train: {learnig_rate: 0.1}\n")
    with pytest.raises(KeyError) as info:
        load_config(path)
    message = str(info.value)
    assert (
        "train.learnig_rate" in message
        and str(path) in message
        and "train.learning_rate" in message
    )


def test_unknown_section_and_override(tmp_path: Path):
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(KeyError, match="train.per_device_batch_size"):
        load_config(path, ["train.per_device_batchsize=4"])
    with pytest.raises(KeyError, match="'trian'.*train"):
        load_config(_write(tmp_path, MINIMAL + "trian: {}\n"))
    with pytest.raises(ValueError, match="key=value"):
        load_config(path, ["max_steps"])


def test_type_and_validation_errors_name_field(tmp_path: Path):
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(ValueError, match="train.epochs"):
        load_config(path, ["train.epochs=two"])
    with pytest.raises(ValueError, match="train.precision"):
        load_config(path, ["train.precision=fp8"])
    with pytest.raises(ValueError, match="data.mixture"):
        load_config(path, ["data.mixture={ratings: 1}"])
    with pytest.raises(ValueError, match="model.base_model"):
        load_config(path, ["model.base_model=/ckpt"])  # both base_model and from_scratch
    with pytest.raises(ValueError, match="lora.enabled"):
        load_config(path, ["lora.enabled=true"])  # LoRA on random weights
    with pytest.raises(ValueError, match="data.train_templates"):
        load_config(path, ["data.train_templates=[]"])


def test_train_num_negatives_takes_a_count_or_a_list(tmp_path: Path):
    path = _write(tmp_path, MINIMAL)
    assert load_config(path, ["data.train_num_negatives=19"]).data.train_num_negatives == 19
    mixed = load_config(path, ["data.train_num_negatives=[19, 19, 99]"])
    assert mixed.data.train_num_negatives == [19, 19, 99]
    assert load_config(path).data.train_num_negatives is None
    for bad in ("0", "[]", "[19, 0]", "many", "[19, x]"):
        with pytest.raises(ValueError, match="data.train_num_negatives"):
            load_config(path, [f"data.train_num_negatives={bad}"])


def test_train_templates_reach_the_mixture(tmp_path: Path):
    from recsysllm.pipeline import task_mixture

    path = _write(tmp_path, MINIMAL)
    assert task_mixture(load_config(path).data).templates is None
    config = load_config(path, ["data.train_templates=[sequential-1, direct-3]"])
    assert task_mixture(config.data).templates == ("sequential-1", "direct-3")


def test_every_field_has_help_and_default():
    sections = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(sections[section.name]):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help"
            assert (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
    assert "train.learning_rate" in valid_keys()


def test_save_yaml_round_trip(tmp_path: Path):
    config = load_config(_write(tmp_path, MINIMAL), ["max_steps=3"])
    out = tmp_path / "out" / "config.yaml"
    config.save_yaml(out)
    assert yaml.safe_load(out.read_text())["train"]["max_steps"] == 3
    assert load_config(out) == config
    assert not [p for p in out.parent.iterdir() if p.name != "config.yaml"]  # no temp file left


def test_train_args_defaults_are_valid():
    TrainArgs()
