"""GLM configuration, with field names as in THUDM's config.json files.

THUDM's files say ``"model_type": "glm"``, which transformers 5 uses for GLM-4, so
this config registers its own model type and reads THUDM files through
:meth:`GLMConfig.from_thudm_json`, never through ``AutoConfig``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

GELU_APPROXIMATIONS = ("none", "tanh")
# What THUDM checkpoints compute (GLM's own gelu_impl), for configs without the field.
THUDM_GELU_APPROXIMATE = "tanh"

# THUDM config.json fields: required ones and ones with a documented default.
_THUDM_REQUIRED_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "max_sequence_length",
)
_THUDM_OPTIONAL_FLOAT_FIELDS = {
    "embedding_dropout_prob": 0.1,
    "attention_dropout_prob": 0.1,
    "output_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "layernorm_epsilon": 1e-5,
}
# Fields of THUDM files that do not change the computation of our model: training
# switches, task heads we do not build, bookkeeping. `attention_scale` > 1 only rescales
# scores around the row maximum before the softmax (an fp16 overflow guard), which is
# the same function.
_THUDM_HARMLESS_FIELDS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "attention_scale",
        "auto_map",
        "checkpoint_activations",
        "checkpoint_num_layers",
        "max_memory_length",
        "model_type",
        "output_predict",
        "parallel_output",
        "pool_token",
        "spell_func",
        "spell_length",
        "tokenizer_class",
        "torch_dtype",
        "transformers_version",
    }
)
# Fields whose other values select a different architecture than the one we implement.
_THUDM_REQUIRED_VALUES = {"relative_encoding": False, "block_position_encoding": True}


@strict
class GLMConfig(PretrainedConfig):
    """Configuration of a GLM (Du et al. 2021) backbone; defaults are glm-10b's.

    Attributes:
        vocab_size: rows of the word embedding (padded to a multiple of 128 in THUDM
            checkpoints, so it may exceed the tokenizer's size).
        hidden_size: model width; the FFN is always 4 x hidden_size wide.
        num_layers: transformer blocks.
        num_attention_heads: heads per attention layer; must divide hidden_size.
        max_sequence_length: longest sequence; both position tables have one more row.
        embedding_dropout_prob: dropout after summing the three embeddings.
        attention_dropout_prob: dropout on the attention probabilities.
        output_dropout_prob: dropout after each attention and MLP output projection.
        initializer_range: std of the normal init (output projections use
            initializer_range / sqrt(2 * num_layers)).
        layernorm_epsilon: LayerNorm epsilon (not a THUDM field; 1e-5 in all checkpoints).
        gelu_approximate: "none" (exact erf) or "tanh" (GLM's own ``gelu_impl``, the
            Megatron code and GPT-2). ``from_thudm_json`` defaults to "tanh" for a
            THUDM config.json without the field.

    Example:
        >>> config = GLMConfig(vocab_size=320, hidden_size=32, num_layers=2,
        ...                    num_attention_heads=4, max_sequence_length=128)
        >>> config.head_dim
        8
    """

    model_type = "recsysllm_glm"
    keys_to_ignore_at_inference = ["cache"]
    # Generic transformers/PEFT code reads the standard names.
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "max_position_embeddings": "max_sequence_length",
    }

    vocab_size: int = 50304
    hidden_size: int = 4096
    num_layers: int = 48
    num_attention_heads: int = 64
    max_sequence_length: int = 1024
    embedding_dropout_prob: float | int = 0.1
    attention_dropout_prob: float | int = 0.1
    output_dropout_prob: float | int = 0.1
    initializer_range: float = 0.02
    layernorm_epsilon: float = 1e-5
    gelu_approximate: str = "none"
    use_cache: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        # Checked here too, before `@strict` runs it, so callers get a plain ValueError.
        self.validate_architecture()
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Part of `@strict` validation: values that would build a broken model."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GLMConfig.{name} must be positive, got {getattr(self, name)}")
        if self.max_sequence_length <= 0:
            raise ValueError(
                f"GLMConfig.max_sequence_length must be positive, got {self.max_sequence_length}"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"GLMConfig.hidden_size ({self.hidden_size}) is not divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("embedding_dropout_prob", "attention_dropout_prob", "output_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GLMConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.gelu_approximate not in GELU_APPROXIMATIONS:
            raise ValueError(
                f"GLMConfig.gelu_approximate must be one of {GELU_APPROXIMATIONS}, "
                f"got {self.gelu_approximate!r}"
            )
        if not self.tie_word_embeddings:
            raise ValueError(
                "GLMConfig.tie_word_embeddings must be True: GLM's output layer is tied"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_thudm_json(cls, path: str | Path) -> GLMConfig:
        """Reads a THUDM GLM config.json (glm-large, glm-2b, glm-10b, Chinese variants).

        Harmless extra fields are ignored; fields unknown to us are ignored with one
        logged line; values that select an architecture we do not implement
        (``relative_encoding: true``, ``block_position_encoding: false``) raise.

        Args:
            path: the config.json file, or the directory holding it.

        Raises:
            ValueError: naming the file and the field, for a missing required field,
                a wrong type, an unsupported value or hidden_size not divisible by heads.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")

        kwargs: dict[str, Any] = {}
        for name in _THUDM_REQUIRED_INT_FIELDS:
            if name not in raw:
                raise ValueError(f"{path}: missing required field {name!r}")
            kwargs[name] = _positive_int(raw[name], path, name)
        for name, default in _THUDM_OPTIONAL_FLOAT_FIELDS.items():
            kwargs[name] = _float_field(raw.get(name, default), path, name)
        for name in ("embedding_dropout_prob", "attention_dropout_prob", "output_dropout_prob"):
            if not 0.0 <= kwargs[name] < 1.0:
                raise ValueError(f"{path}: field {name!r} must be in [0, 1), got {kwargs[name]}")
        # THUDM's GLM computes gelu_impl = 0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2))),
        # the tanh approximation: a THUDM config.json without the field gets it. Ours (the
        # converter, save_pretrained) always write the field; "none" selects exact erf.
        kwargs["gelu_approximate"] = raw.get("gelu_approximate", THUDM_GELU_APPROXIMATE)
        if kwargs["gelu_approximate"] not in GELU_APPROXIMATIONS:
            raise ValueError(
                f"{path}: field 'gelu_approximate' must be one of {GELU_APPROXIMATIONS}, "
                f"got {raw['gelu_approximate']!r}"
            )

        for name, supported in _THUDM_REQUIRED_VALUES.items():
            if name in raw and raw[name] != supported:
                raise ValueError(
                    f"{path}: field {name!r} = {json.dumps(raw[name])} is not supported "
                    f"(only {json.dumps(supported)}: recsysllm implements GLM with absolute "
                    "2-D positions)"
                )
        if "attention_scale" in raw:
            scale = _float_field(raw["attention_scale"], path, "attention_scale")
            if scale <= 0:
                raise ValueError(f"{path}: field 'attention_scale' must be positive, got {scale}")

        if kwargs["hidden_size"] % kwargs["num_attention_heads"] != 0:
            raise ValueError(
                f"{path}: field 'hidden_size' ({kwargs['hidden_size']}) is not divisible by "
                f"'num_attention_heads' ({kwargs['num_attention_heads']})"
            )

        known = (
            set(_THUDM_REQUIRED_INT_FIELDS)
            | set(_THUDM_OPTIONAL_FLOAT_FIELDS)
            | set(_THUDM_REQUIRED_VALUES)
            | _THUDM_HARMLESS_FIELDS
            | {"gelu_approximate"}
        )
        unknown = sorted(set(raw) - known)
        if unknown:
            logger.warning("%s: ignoring fields unknown to GLMConfig: %s", path, ", ".join(unknown))
        return cls(**kwargs)


def _positive_int(value: Any, path: Path, name: str) -> int:
    # bool is an int subclass: `true` is not a layer count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{path}: field {name!r} must be an integer, got {json.dumps(value)} "
            f"({type(value).__name__})"
        )
    if value <= 0:
        raise ValueError(f"{path}: field {name!r} must be positive, got {value}")
    return value


def _float_field(value: Any, path: Path, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(
            f"{path}: field {name!r} must be a number, got {json.dumps(value)} "
            f"({type(value).__name__})"
        )
    return float(value)
