"""Bad-input corpus: damaged copies of small generated files, each refused in one line.

Every case names the file, the line (text) or row, and the field. The files are built
here from ``bad_input_corpus`` (Amazon 2018 layout, a generic CSV), never downloaded.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import stat
from pathlib import Path

import pytest
from bad_input_corpus import amazon_2018_records, write_json_lines

from recsysllm.data.sources import load_amazon_reviews, load_generic_table

# ----------------------------------------------------------------------------- Amazon


def _reviews():
    reviews, _ = amazon_2018_records(n_users=6, n_items=10, per_user=2)
    return reviews


def _set(field, value, line=2):
    def damage(records):
        records[line - 1][field] = value
        return records

    return damage


AMAZON_CASES = {
    "nan rating": (_set("overall", math.nan), r"line 2: field 'overall': missing"),
    "infinite rating": (_set("overall", math.inf), r"line 2: field 'overall': non-finite rating"),
    "rating above the scale": (
        _set("overall", 7.0),
        r"line 2: field 'overall': rating 7 is outside the scale 1..5",
    ),
    "negative rating": (
        _set("overall", -1, line=3),
        r"line 3: field 'overall': rating -1 is outside",
    ),
    "timestamp in milliseconds": (
        _set("unixReviewTime", 1_400_000_000_000),
        r"line 2: field 'unixReviewTime': timestamp 1400000000000 is outside 1970-01-01..2100-01-01",
    ),
    "overflowing timestamp": (
        _set("unixReviewTime", 10**30),
        r"line 2: field 'unixReviewTime': timestamp 1000000000000000000000000000000 is outside",
    ),
    "list id": (
        _set("reviewerID", ["A1", "A2"]),
        r"line 2: field 'reviewerID': expected a scalar id",
    ),
    "dict id": (_set("asin", {"id": "B1"}, line=4), r"line 4: field 'asin': expected a scalar id"),
    "list review text": (
        _set("reviewText", ["great", "kettle"]),
        r"line 2: field 'reviewText': expected text or a number, got list",
    ),
    "dict summary": (
        _set("summary", {"text": "ok"}, line=3),
        r"line 3: field 'summary': expected text or a number, got dict",
    ),
}


@pytest.mark.parametrize("case", sorted(AMAZON_CASES))
def test_damaged_amazon_review_values_name_file_line_and_field(tmp_path, case):
    damage, message = AMAZON_CASES[case]
    path = write_json_lines(tmp_path / "Kitchen_5.json", damage(_reviews()))
    with pytest.raises(ValueError, match=rf"Kitchen_5\.json: {message}") as error:
        load_amazon_reviews(path)
    assert "\n" not in str(error.value)


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = write_json_lines(tmp_path / "Kitchen_5.json", _reviews())
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"kettle", b"k\xe9ttle", 1)  # latin-1 e-acute
    path.write_bytes(b"".join(lines))
    with pytest.raises(
        ValueError, match=r"Kitchen_5\.json: line 3: field '<bytes>': not utf-8 text: byte 0xe9"
    ):
        load_amazon_reviews(path)


def test_truncated_gzip_names_file_and_line(tmp_path):
    path = write_json_lines(tmp_path / "Kitchen_5.json.gz", _reviews(), gz=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(
        ValueError,
        match=r"Kitchen_5\.json\.gz: line \d+: field '<file>': the gzip stream is truncated",
    ):
        load_amazon_reviews(path)


@pytest.mark.parametrize("content", [b"", b"\n\n", gzip.compress(b"")])
def test_empty_review_file_is_an_error(tmp_path, content):
    path = tmp_path / "Kitchen_5.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"Kitchen_5\.json: field '<rows>': no records"):
        load_amazon_reviews(path)


# ----------------------------------------------------------------------------- generic CSV

HEADER = "customer,product,stars,ts\n"
GOOD_ROWS = ["u1,i1,5,1500000000\n", "u1,i2,4,1500000100\n", "u2,i1,3,2021-03-04T10:00:00\n"]


def _generic(tmp_path, text: str | bytes, **extra):
    path = tmp_path / "orders.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    mapping = {
        "interactions": {
            "path": "orders.csv",
            "user": "customer",
            "item": "product",
            "rating": "stars",
            "timestamp": "ts",
            **extra,
        }
    }
    return load_generic_table(mapping, base_dir=tmp_path)


def test_good_csv_loads(tmp_path):
    tables = _generic(tmp_path, HEADER + "".join(GOOD_ROWS), rating_scale=[1, 5])
    assert tables.interactions.num_rows == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("u3,i2,5,1500000200,oops\n", r"line 5: field '<row>': 5 fields but the header has 4"),
        ("u3,i2,5\n", r"line 5: field '<row>': 3 fields but the header has 4"),
        ("u3,Kettle, large,5,1500000200\n", r"line 5: field '<row>': 5 fields .*unquoted ','"),
        ("u3,i2,inf,1500000200\n", r"line 5: field 'stars': non-finite rating"),
        ("u3,i2,4,2999-01-01T00:00:00\n", r"line 5: field 'ts': timestamp .* is outside"),
    ],
)
def test_damaged_csv_rows_name_file_line_and_field(tmp_path, row, message):
    with pytest.raises(ValueError, match=rf"orders\.csv: {message}"):
        _generic(tmp_path, HEADER + "".join(GOOD_ROWS) + row)


def test_rating_outside_the_declared_scale(tmp_path):
    with pytest.raises(
        ValueError, match=r"orders\.csv: line 3: field 'stars': rating 9 is outside the scale 1..5"
    ):
        _generic(tmp_path, HEADER + GOOD_ROWS[0] + "u1,i2,9,1500000100\n", rating_scale=[1, 5])
    with pytest.raises(
        ValueError, match=r"field interactions.rating_scale: expected \[low, high\]"
    ):
        _generic(tmp_path, HEADER + GOOD_ROWS[0], rating_scale=[5, 1])


def test_header_only_and_empty_csv_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"orders\.csv: field '<rows>': no data rows"):
        _generic(tmp_path, HEADER)
    with pytest.raises(ValueError, match=r"orders\.csv: field '<header>': the file is empty"):
        _generic(tmp_path, "")


def test_non_utf8_csv_names_line(tmp_path):
    with pytest.raises(ValueError, match=r"orders\.csv: line 3: field '<bytes>': not utf-8"):
        _generic(
            tmp_path,
            (HEADER + GOOD_ROWS[0]).encode() + "u1,caf\xe9,4,1500000100\n".encode("latin-1"),
        )


def test_non_scalar_id_in_jsonl(tmp_path):
    path = tmp_path / "orders.jsonl"
    path.write_text(
        json.dumps({"customer": "u1", "product": "i1"}) + "\n"
        + json.dumps({"customer": {"id": 7}, "product": "i2"}) + "\n"
    )  # fmt: skip
    mapping = {"interactions": {"path": "orders.jsonl", "user": "customer", "item": "product"}}
    with pytest.raises(
        ValueError, match=r"orders\.jsonl: line 2: field 'customer': expected a scalar id"
    ):
        load_generic_table(mapping, base_dir=tmp_path)


def test_truncated_parquet_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "orders.parquet"
    pq.write_table(pa.table({"customer": ["u1", "u2"], "product": ["i1", "i2"]}), path)
    path.write_bytes(path.read_bytes()[:-20])
    mapping = {"interactions": {"path": "orders.parquet", "user": "customer", "item": "product"}}
    with pytest.raises(
        ValueError, match=r"orders\.parquet: field '<file>': not a readable Parquet"
    ):
        load_generic_table(mapping, base_dir=tmp_path)


# ----------------------------------------------------------------------------- configs

MINIMAL_RECIPE = """\
model: {from_scratch: {hidden_size: 32}}
tokenizer: {sentencepiece_vocab_size: 300}
lora: {enabled: false}
"""


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.learning_rate=inf", r"train\.learning_rate: must be a finite number, got inf"),
        ("train.max_grad_norm=.nan", r"train\.max_grad_norm: must be a finite number, got nan"),
        ("data.short_window_days=.inf", r"data\.short_window_days: must be a finite number"),
        ("data.mixture={rating: .inf}", r"data\.mixture\.rating: must be a finite number"),
        (
            "model.from_scratch={initializer_range: .nan}",
            r"model\.from_scratch\.initializer_range: must be a finite",
        ),
        ("train.adam_epsilon=0", r"train\.adam_epsilon: must be > 0"),
        ("train.weight_decay=-0.1", r"train\.weight_decay: must be >= 0"),
        ("train.max_grad_norm=-1", r"train\.max_grad_norm: must be >= 0"),
        ("train.adam_beta2=1.5", r"train\.adam_beta2: must be in \[0, 1\)"),
        ("train.eval_steps=0", r"train\.eval_steps: must be >= 1"),
        (
            "train.load_best_model_at_end=true",
            r"train\.load_best_model_at_end: needs train\.eval_steps",
        ),
        ("data.short_window_days=-7", r"data\.short_window_days: must be > 0"),
        ("data.long_ratio=-0.1", r"data\.long_ratio: must be >= 0"),
        ("data.num_negatives=0", r"data\.num_negatives: must be >= 1"),
        ("eval.limit=0", r"eval\.limit: must be >= 1"),
        ("model.from_scratch={num_layers: 0}", r"model\.from_scratch\.num_layers: must be > 0"),
    ],
)
def test_non_finite_and_non_positive_config_values_are_refused(tmp_path, override, message):
    from recsysllm.config import load_config

    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL_RECIPE)
    with pytest.raises(ValueError, match=message):
        load_config(path, [override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.load_best_model_at_end=true", "train.eval_steps=300", "train.save_steps=500"],
            r"train\.save_steps: must be a multiple of train\.eval_steps \(300\) with "
            r"load_best_model_at_end.*got 500",
        ),
        (
            ["train.early_stopping_patience=2", "train.eval_steps=100"],
            r"train\.early_stopping_patience: needs train\.load_best_model_at_end: true",
        ),
        (
            [
                "train.early_stopping_patience=0",
                "train.load_best_model_at_end=true",
                "train.eval_steps=100",
            ],
            r"train\.early_stopping_patience: must be >= 1",
        ),
        (["train.eval_ranking_users=0"], r"train\.eval_ranking_users: must be >= 1"),
        (
            ["train.metric_for_best_model=auc"],
            r"train\.metric_for_best_model: expected loss, hr@K or ndcg@K, got 'auc'",
        ),
        (
            [
                "train.metric_for_best_model=ndcg@20",
                "train.load_best_model_at_end=true",
                "train.eval_steps=100",
            ],
            r"train\.metric_for_best_model: ndcg@20: 20 is not one of eval\.top_k \[1, 5, 10\]",
        ),
        (
            [
                "train.eval_ranking_users=null",
                "train.load_best_model_at_end=true",
                "train.eval_steps=100",
            ],
            r"train\.metric_for_best_model: ndcg@10 needs train\.eval_ranking_users \(or use loss\)",
        ),
        (
            [
                "data.mixture={rating: 1.0, review: 1.0}",
                "train.load_best_model_at_end=true",
                "train.eval_steps=100",
            ],
            r"train\.metric_for_best_model: ndcg@10 ranks the valid examples of the trained "
            r"sequential or direct families, and data\.mixture trains neither: use loss",
        ),
    ],
)
def test_best_checkpoint_settings_that_cannot_work_together_are_refused(
    tmp_path, overrides, message
):
    from recsysllm.config import load_config

    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL_RECIPE)
    with pytest.raises(ValueError, match=message):
        load_config(path, overrides)


def test_duplicate_yaml_keys_are_refused_naming_file_and_line(tmp_path):
    from recsysllm.config import load_config

    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL_RECIPE + "train:\n  learning_rate: 1.0e-3\n  learning_rate: 5.0e-3\n")
    with pytest.raises(
        ValueError, match=r"recipe\.yaml: line 6: field 'learning_rate': duplicate key"
    ):
        load_config(path)


def test_prompt_file_with_a_duplicate_key_is_refused(tmp_path):
    from recsysllm.prompts import PromptError, load_prompt_file

    path = tmp_path / "rating.yaml"
    path.write_text("family: rating\nfamily: rating\ntemplates: []\n")
    with pytest.raises(PromptError, match=r"rating\.yaml: line 2: field 'family': duplicate key"):
        load_prompt_file(path)


def test_unknown_from_scratch_key_is_refused_with_the_nearest_one(tmp_path):
    from recsysllm.config import load_config

    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL_RECIPE.replace("hidden_size", "hiden_size"))
    with pytest.raises(
        KeyError,
        match=r"recipe\.yaml: unknown config key 'model\.from_scratch\.hiden_size'; did you mean 'hidden_size'",
    ):
        load_config(path)


def test_command_line_errors_are_one_line_and_debug_shows_the_traceback(
    tmp_path, capsys, monkeypatch
):
    from recsysllm.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL_RECIPE.replace("hidden_size", "hiden_size"))
    monkeypatch.delenv("RECSYSLLM_DEBUG", raising=False)
    assert main(["train", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("recsysllm train: error: ") and "hiden_size" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    with pytest.raises(KeyError, match="hiden_size"):
        main(["train", "--config", str(path), "--debug"])
    monkeypatch.setenv("RECSYSLLM_DEBUG", "1")
    with pytest.raises(KeyError, match="hiden_size"):
        main(["train", "--config", str(path)])


def test_scripts_print_one_line_instead_of_a_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL_RECIPE + "train:\n  epochs: 1\n  epochs: 2\n")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("RECSYSLLM_DEBUG", None)
    result = subprocess.run(
        [sys.executable, str(repo / "scripts" / "train.py"), "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "recsysllm train: error: " in result.stderr and "line 6: field 'epochs'" in result.stderr


# ----------------------------------------------------------------------------- written files


def test_every_project_writer_leaves_normal_permissions(tmp_path, tiny_tokenizer):
    """Config, meta, prompts, catalog and tokenizer files: 0644 (mkstemp alone gives 0600)."""

    old_umask = os.umask(0o022)
    try:
        _write_everything(tmp_path, tiny_tokenizer)
    finally:
        os.umask(old_umask)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 6
    assert {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in files} == {
        str(p.relative_to(tmp_path)): 0o644 for p in files
    }
    assert not [p for p in tmp_path.rglob(".*")], "temp files left behind"


def _write_everything(tmp_path, tiny_tokenizer):
    from recsysllm.checkpoint_meta import CheckpointMeta, write_meta
    from recsysllm.config import Config, ModelArgs, TokenizerArgs
    from recsysllm.data.catalog import write_json_atomic
    from recsysllm.prompts import load_prompts

    config = Config(model=ModelArgs(base_model="x"), tokenizer=TokenizerArgs(path="y"))
    config.save_yaml(tmp_path / "config.yaml")
    write_meta(
        tmp_path,
        CheckpointMeta(base_model=None, base_model_fingerprint="a", tokenizer_fingerprint="b"),
    )
    load_prompts().save(tmp_path / "prompts")
    write_json_atomic(tmp_path / "catalog.json", {"a": 1})
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")


# ----------------------------------------------------------------------------- checkpoints


def _random_glm(seed):
    import torch
    from conftest import make_tiny_glm_config

    from recsysllm.modeling import GLMForConditionalGeneration

    torch.manual_seed(seed)
    return GLMForConditionalGeneration(make_tiny_glm_config()).eval()


def test_fingerprint_covers_every_layer():
    """A base that differs only in its last block's FFN gets another fingerprint."""
    import torch

    from recsysllm.checkpoint_meta import model_fingerprint

    model = _random_glm(0)
    before = model_fingerprint(model)
    with torch.no_grad():
        model.glm.transformer.layers[-1].mlp.dense_h_to_4h.weight.mul_(1.5)
    assert model_fingerprint(model) != before
    with torch.no_grad():
        model.glm.transformer.layers[-1].mlp.dense_h_to_4h.weight.div_(1.5)
    assert model_fingerprint(model) == before


@pytest.fixture
def lora_checkpoint(tmp_path, tiny_tokenizer):
    """A LoRA checkpoint laid out as training writes it, on a saved random base GLM."""
    from peft import LoraConfig, get_peft_model

    from recsysllm.checkpoint_meta import CheckpointMeta, model_fingerprint, write_meta
    from recsysllm.config import Config, LoraArgs, ModelArgs, TokenizerArgs
    from recsysllm.data.catalog import EntityCatalog
    from recsysllm.prompts import load_prompts

    base_dir, checkpoint = tmp_path / "base", tmp_path / "checkpoint"
    base = _random_glm(0)
    base.save_pretrained(base_dir)
    fingerprint = model_fingerprint(base)
    peft_model = get_peft_model(
        base, LoraConfig(r=2, lora_alpha=4, target_modules=["query_key_value", "dense"])
    )
    peft_model.save_pretrained(checkpoint)
    catalog = EntityCatalog("toy", {"Toy Story (1995)": "1", "Heat (1995)": "2"}, {})
    config = Config(
        model=ModelArgs(base_model=str(base_dir)),
        tokenizer=TokenizerArgs(path=str(checkpoint / "tokenizer")),
        lora=LoraArgs(enabled=True, r=2),
    )
    config.save_yaml(checkpoint / "config.yaml")
    tiny_tokenizer.save_pretrained(checkpoint / "tokenizer")
    load_prompts().save(checkpoint / "prompts")
    catalog.save(checkpoint / "catalog.json")
    meta = CheckpointMeta(
        base_model=str(base_dir),
        base_model_fingerprint=fingerprint,
        tokenizer_fingerprint=tiny_tokenizer.fingerprint,
        catalog_hash=catalog.hash,
        lora=True,
    )
    write_meta(checkpoint, meta)
    return checkpoint


def test_flipped_bytes_in_an_adapter_are_refused_at_load(lora_checkpoint):
    from recsysllm.pipeline import load_checkpoint_for_inference

    load_checkpoint_for_inference(lora_checkpoint)  # intact: loads
    weights = lora_checkpoint / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[-3] ^= 0x01  # the lowest bit of one value in the payload, after the 8 + header bytes
    assert len(data) - 3 > 8 + header
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: sha256 .* differs"):
        load_checkpoint_for_inference(lora_checkpoint)


def test_truncated_base_weights_name_the_file(tmp_path):
    from recsysllm.modeling import load_glm_checkpoint

    _random_glm(0).save_pretrained(tmp_path / "base")
    weights = tmp_path / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"base/model\.safetensors: cannot be read as safetensors"):
        load_glm_checkpoint(tmp_path / "base")


def test_half_written_output_tokenizer_is_refused_not_read_as_another_kind(
    tmp_path, tiny_tokenizer
):
    """A sentencepiece.model without its config once loaded as the 50k-id Chinese tokenizer."""
    from recsysllm.config import TokenizerArgs
    from recsysllm.pipeline import build_tokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "tokenizer" / "tokenizer_config.json").unlink()  # killed before the config
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: missing or not written"):
        build_tokenizer(TokenizerArgs(sentencepiece_vocab_size=300), None, tmp_path)


def test_sentencepiece_training_writes_its_directory_atomically(tmp_path, monkeypatch):
    """A crash while saving leaves no output_dir/tokenizer at all (nothing half-written)."""
    from recsysllm.modeling.glm import tokenization

    def crash(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "sentencepiece.model").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenization.GLMTokenizer, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        tokenization.train_sentencepiece_tokenizer(
            ["Toy Story", "Heat"] * 5, tmp_path / "tok", vocab_size=120
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_fingerprint_samples_the_last_value_of_a_tensor_past_float32_precision():
    """glm-10b's embedding has 206M values: indices past 2**24 must stay exact and in range."""
    import torch

    from recsysllm.checkpoint_meta import tensors_fingerprint

    big = torch.zeros(2**24 + 7, dtype=torch.bfloat16)
    before = tensors_fingerprint({}, {"w": big})
    big[-1] = 1.0  # the last value is always sampled
    assert tensors_fingerprint({}, {"w": big}) != before


def test_empty_meta_file_is_an_error_not_a_silent_title_fallback(tmp_path):
    reviews = write_json_lines(tmp_path / "Kitchen_5.json", _reviews())
    meta = tmp_path / "meta_Kitchen.json.gz"
    meta.write_bytes(gzip.compress(b"\n"))
    with pytest.raises(ValueError, match=r"meta_Kitchen\.json\.gz: field '<rows>': no records"):
        load_amazon_reviews(reviews, meta)
