"""THUDM checkpoint loading and conversion, on tiny checkpoint directories written here."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from recsysllm.modeling import (
    GLMConfig,
    GLMForConditionalGeneration,
    check_vocab_compatible,
    convert_checkpoint,
    load_glm_checkpoint,
)
from recsysllm.modeling.checkpoint import CheckpointError, convert_main

HIDDEN, VOCAB = 32, 128

# As THUDM's glm-10b config.json, shrunk; the extra fields are the real ones.
THUDM_CONFIG = {
    "_name_or_path": "THUDM/glm-tiny",
    "architectures": ["GLMModel"],
    "attention_dropout_prob": 0.1,
    "attention_scale": 1.0,
    "auto_map": {
        "AutoConfig": "configuration_glm.GLMConfig",
        "AutoModel": "modeling_glm.GLMModel",
        "AutoModelForSeq2SeqLM": "modeling_glm.GLMForConditionalGeneration",
    },
    "block_position_encoding": True,
    "checkpoint_activations": False,
    "checkpoint_num_layers": 1,
    "embedding_dropout_prob": 0.1,
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "max_sequence_length": 64,
    "model_type": "glm",
    "num_attention_heads": 4,
    "num_layers": 2,
    "output_dropout_prob": 0.1,
    "output_predict": True,
    "parallel_output": True,
    "pool_token": "cls",
    "relative_encoding": False,
    "spell_func": "lstm",
    "spell_length": None,
    "torch_dtype": "float16",
    "transformers_version": "4.23.1",
    "vocab_size": VOCAB,
}
# glm-2b's classifier head: present in the file, not part of the LM.
CLASSIFIER_KEYS = {
    "dense.weight": (HIDDEN, HIDDEN),
    "dense.bias": (HIDDEN,),
    "out_proj.weight": (2, HIDDEN),
    "out_proj.bias": (2,),
}


@pytest.fixture(scope="module")
def source_model() -> GLMForConditionalGeneration:
    torch.manual_seed(0)
    config = GLMConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=64,
        gelu_approximate="tanh",  # what a THUDM config.json without the field means
    )
    model = GLMForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so a dropped key would show
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def thudm_state_dict(
    model: GLMForConditionalGeneration, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """THUDM key names (no lm_head), optionally with the runtime `glm.` prefix."""
    state = {
        prefix + key.removeprefix("glm."): tensor.clone()
        for key, tensor in model.state_dict().items()
        if key.startswith("glm.")
    }
    state.update({key: torch.randn(shape) for key, shape in CLASSIFIER_KEYS.items()})
    return state


def write_thudm_dir(path: Path, state: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or THUDM_CONFIG))
    torch.save(state, path / "pytorch_model.bin")
    return path


def logits(model: GLMForConditionalGeneration) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (2, 9), generator=generator)
    positions = torch.stack([torch.arange(9).expand(2, 9), torch.arange(9).expand(2, 9) % 3], dim=1)
    mask = torch.ones(9, 9, dtype=torch.bool).tril().expand(2, 1, 9, 9)
    with torch.no_grad():
        return model(input_ids, positions, mask).logits


@pytest.mark.parametrize("prefix", ["", "glm."])
def test_loads_thudm_directory_and_logs_extra_keys_once(tmp_path, source_model, prefix, caplog):
    directory = write_thudm_dir(tmp_path / "glm-tiny", thudm_state_dict(source_model, prefix))
    with caplog.at_level(logging.WARNING, logger="recsysllm.modeling.checkpoint"):
        model = load_glm_checkpoint(directory)
    assert torch.equal(logits(model), logits(source_model))
    assert not model.training
    assert model.lm_head.weight is model.glm.word_embeddings.weight
    assert all(p.device.type == "cpu" for p in model.parameters())
    # Dropouts come from the THUDM config, not from our defaults' accident.
    assert model.config.attention_dropout_prob == 0.1
    notes = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(notes) == 1
    assert all(key in notes[0] for key in CLASSIFIER_KEYS)


@pytest.mark.parametrize("field", [None, "tanh", "none"])
def test_thudm_checkpoints_default_to_tanh_gelu(tmp_path, source_model, field):
    """THUDM's gelu_impl is the tanh approximation; exact erf stays selectable."""
    config = dict(THUDM_CONFIG)
    if field is not None:
        config["gelu_approximate"] = field
    directory = write_thudm_dir(tmp_path / "glm", thudm_state_dict(source_model), config)
    model = load_glm_checkpoint(directory)
    expected_mode = field or "tanh"
    assert model.config.gelu_approximate == expected_mode
    # The MLP against hand-written GELU math: intermediate unit i = gelu(x[i]) -> output i.
    x = torch.linspace(-4, 4, HIDDEN)
    if expected_mode == "tanh":
        expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    else:
        expected = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    mlp = model.glm.transformer.layers[0].mlp
    with torch.no_grad():
        mlp.dense_h_to_4h.weight.zero_()
        mlp.dense_h_to_4h.bias.zero_()
        mlp.dense_h_to_4h.bias[:HIDDEN] = x
        mlp.dense_4h_to_h.weight.copy_(torch.eye(HIDDEN, 4 * HIDDEN))
        mlp.dense_4h_to_h.bias.zero_()
        out = mlp(torch.zeros(1, HIDDEN))[0]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_convert_then_load_with_automodel(tmp_path, source_model):
    src = write_thudm_dir(tmp_path / "glm-tiny", thudm_state_dict(source_model))
    (src / "vocab.json").write_text("{}")
    (src / "merges.txt").write_text("#version: 0.2\n")
    (src / "spiece.model").write_bytes(b"\x00spm")
    out = tmp_path / "converted"

    assert convert_checkpoint(src, out) == out

    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "spiece.model",
        "vocab.json",
    ]
    assert (out / "spiece.model").read_bytes() == b"\x00spm"
    assert json.loads((out / "config.json").read_text())["model_type"] == "recsysllm_glm"
    stored = load_file(out / "model.safetensors")
    expected_keys = {k for k in source_model.state_dict() if k != "lm_head.weight"}
    assert set(stored) == expected_keys  # glm. prefix, no lm_head, no classifier head
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left

    auto = AutoModel.from_pretrained(out).eval()
    assert isinstance(auto, GLMForConditionalGeneration)
    assert torch.equal(logits(auto), logits(source_model))
    assert torch.equal(logits(load_glm_checkpoint(out)), logits(source_model))


def test_convert_refuses_non_empty_output_and_leaves_nothing_on_failure(tmp_path, source_model):
    state = thudm_state_dict(source_model)
    src = write_thudm_dir(tmp_path / "src", state)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="occupied"):
        convert_checkpoint(src, occupied)
    assert (occupied / "keep.txt").read_text() == "mine"

    del state["transformer.final_layernorm.bias"]
    broken = write_thudm_dir(tmp_path / "broken", state)
    with pytest.raises(CheckpointError):
        convert_checkpoint(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_key_is_an_error_naming_it(tmp_path, source_model):
    state = thudm_state_dict(source_model)
    del state["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    directory = write_thudm_dir(tmp_path / "glm-tiny", state)
    with pytest.raises(CheckpointError) as error:
        load_glm_checkpoint(directory)
    assert "transformer.layers.1.mlp.dense_4h_to_h.bias" in str(error.value)
    assert str(directory) in str(error.value)


def test_shape_mismatch_names_file_key_and_both_shapes(tmp_path, source_model):
    state = thudm_state_dict(source_model)
    state["transformer.layers.0.attention.query_key_value.weight"] = torch.zeros(3 * HIDDEN, 16)
    directory = write_thudm_dir(tmp_path / "glm-tiny", state)
    with pytest.raises(CheckpointError) as error:
        load_glm_checkpoint(directory)
    message = str(error.value)
    assert str(directory / "pytorch_model.bin") in message
    assert "transformer.layers.0.attention.query_key_value.weight" in message
    assert "[96, 16]" in message and "[96, 32]" in message


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"num_layers": None}, "num_layers", "missing required field"),
        ({"hidden_size": "32"}, "hidden_size", "must be an integer"),
        ({"vocab_size": True}, "vocab_size", "must be an integer"),
        ({"num_attention_heads": 5}, "hidden_size", "not divisible"),
        ({"relative_encoding": True}, "relative_encoding", "not supported"),
        ({"block_position_encoding": False}, "block_position_encoding", "not supported"),
        ({"output_dropout_prob": 1.5}, "output_dropout_prob", "[0, 1)"),
        ({"initializer_range": "0.02"}, "initializer_range", "must be a number"),
    ],
)
def test_bad_config_field_names_file_and_field(tmp_path, source_model, change, field, fragment):
    config = dict(THUDM_CONFIG)
    for key, value in change.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    directory = write_thudm_dir(tmp_path / "glm-tiny", thudm_state_dict(source_model), config)
    with pytest.raises(ValueError) as error:
        load_glm_checkpoint(directory)
    message = str(error.value)
    assert str(directory / "config.json") in message
    assert f"'{field}'" in message and fragment in message


def test_foreign_model_type_is_rejected(tmp_path, source_model):
    config = dict(THUDM_CONFIG, model_type="llama")
    directory = write_thudm_dir(tmp_path / "glm-tiny", thudm_state_dict(source_model), config)
    with pytest.raises(CheckpointError, match="'model_type' is 'llama'"):
        load_glm_checkpoint(directory)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_sharded_checkpoint_with_index_loads(tmp_path, source_model, fmt):
    state = thudm_state_dict(source_model, prefix="glm.")
    keys = sorted(state)
    shards = {f"shard-1.{fmt}": keys[: len(keys) // 2], f"shard-2.{fmt}": keys[len(keys) // 2 :]}
    directory = tmp_path / "sharded"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(THUDM_CONFIG))
    for name, shard_keys in shards.items():
        shard = {key: state[key].contiguous() for key in shard_keys}
        if fmt == "bin":
            torch.save(shard, directory / name)
        else:
            save_file(shard, directory / name)
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    weight_map = {key: name for name, shard_keys in shards.items() for key in shard_keys}
    (directory / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    assert torch.equal(logits(load_glm_checkpoint(directory)), logits(source_model))

    (directory / f"shard-2.{fmt}").unlink()
    with pytest.raises(CheckpointError, match=f"shard 'shard-2.{fmt}'"):
        load_glm_checkpoint(directory)


def test_fp16_pickle_keeps_or_converts_dtype(tmp_path, source_model):
    state = {key: tensor.half() for key, tensor in thudm_state_dict(source_model).items()}
    directory = write_thudm_dir(tmp_path / "glm-tiny", state)
    stored = load_glm_checkpoint(directory)
    assert stored.glm.word_embeddings.weight.dtype == torch.float16
    converted = load_glm_checkpoint(directory, torch_dtype=torch.float32)
    weight = converted.glm.transformer.layers[1].mlp.dense_h_to_4h.weight
    assert weight.dtype == torch.float32
    expected = source_model.glm.transformer.layers[1].mlp.dense_h_to_4h.weight.half().float()
    assert torch.equal(weight, expected)


def test_convert_cli(tmp_path, source_model, capsys):
    src = write_thudm_dir(tmp_path / "glm-tiny", thudm_state_dict(source_model))
    assert convert_main([str(src), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert convert_main([str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_check_vocab_compatible():
    check_vocab_compatible(50304, 50265, where="glm-10b")  # padded rows are fine
    check_vocab_compatible(320, 320, where="tiny")
    with pytest.raises(ValueError, match=r"ckpt/glm.*50400.*50304"):
        check_vocab_compatible(50304, 50400, where="ckpt/glm")


def test_from_thudm_json_reads_real_glm10b_fields(tmp_path, caplog):
    config = dict(
        THUDM_CONFIG,
        hidden_size=4096,
        num_layers=48,
        num_attention_heads=64,
        max_sequence_length=1024,
        vocab_size=50304,
        some_future_field=3,
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        glm10b = GLMConfig.from_thudm_json(tmp_path)
    assert (glm10b.num_layers, glm10b.hidden_size, glm10b.num_attention_heads) == (48, 4096, 64)
    assert (glm10b.vocab_size, glm10b.max_sequence_length, glm10b.head_dim) == (50304, 1024, 64)
    assert glm10b.output_dropout_prob == 0.1 and glm10b.layernorm_epsilon == 1e-5
    assert glm10b.model_type == "recsysllm_glm"
    assert any("some_future_field" in r.getMessage() for r in caplog.records)
