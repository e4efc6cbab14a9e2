"""The GLMTokenizer interface over any transformers fast tokenizer (byte-level BPE).

:class:`HFTokenizer` is what the collator, trie, generation and evaluation see for a
decoder backbone (Llama, Qwen, GLM-4, SmolLM2): the same special-role ids
(``cls/eos/pad/mask/smask/gmask/sop/eop``), ``encode``/``decode``, ``encode_entity``,
``tokenize_segments``/``tokenize_example`` (the segment rules of
:mod:`recsysllm.tokenization`, shared, not copied), ``save_pretrained``/
``from_pretrained``, ``fingerprint``, ``banned_generation_ids`` and ``vocab_size``.

Special roles (:func:`assign_roles`):

- ``eos``: the tokenizer's eos token; ``pad``: its pad token, else eos.
- a role whose GLM surface string is in the vocabulary (GLM-4 has ``[MASK]``,
  ``[gMASK]``, ``[sMASK]``, ``<sop>``, ``<eop>``) takes that token;
- the others take reserved/unused special tokens in id order: special added tokens that
  are not bos/eos/pad/unk and do not occur in the chat template (SmolLM2: ids 3..16,
  ``<repo_name>`` ... ``<empty_output>``; Llama 3: ``<|reserved_special_token_N|>``);
- when none is left, a new special token ``[recsysllm_<role>]`` is added after the
  vocabulary (:attr:`HFTokenizer.added_roles` > 0: the model's embeddings must be
  resized, :func:`resize_model_embeddings`).

The mapping is saved with the tokenizer (``recsysllm_tokenizer.json``) and is part of the
fingerprint. Text is encoded with ``encode_special_tokens``: a review containing
"<|im_end|>" or "[MASK]" stays plain text; special ids enter by id only (collator,
generation), as with GLMTokenizer.

Example:
    >>> tok = HFTokenizer.from_pretrained("data/models/smollm2-135m")  # doctest: +SKIP
    >>> tok.special_tokens["mask"], tok.encode_entity("Toy Story (1995)")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer

from recsysllm.files import atomic_write
from recsysllm.tokenization import SegmentTokenizer, read_json

KIND = "hf"
TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
ROLES_FILE = "recsysllm_tokenizer.json"
ROLES_VERSION = 1

# Roles every RecSysLLM sequence needs besides eos/pad, and GLM's surface strings for them
# (the first match in the vocabulary wins).
ROLE_NAMES = ("cls", "mask", "smask", "gmask", "sop", "eop")
ROLE_SURFACES = {
    "cls": ("[CLS]",),
    "mask": ("[MASK]",),
    "smask": ("[sMASK]",),
    "gmask": ("[gMASK]",),
    "sop": ("<sop>", "<|startofpiece|>"),
    "eop": ("<eop>", "<|endofpiece|>"),
}
_SPECIAL_TEXT = {name: surfaces[0] for name, surfaces in ROLE_SURFACES.items()}
_SPECIAL_TEXT.update({"eos": "<eos>", "pad": "<pad>"})


def assign_roles(
    backend: Tokenizer, hf_config: Mapping[str, Any], overrides: Mapping[str, str] | None = None
) -> tuple[dict[str, int], list[str]]:
    """Chooses the id of every special role (see the module doc).

    Args:
        backend: the ``tokenizers.Tokenizer``.
        hf_config: the directory's tokenizer_config.json (bos/eos/pad/unk tokens, chat
            template); may be empty.
        overrides: role -> token string, taken first (e.g. from a config).

    Returns:
        ``(role -> id, new token strings to add)``; ids of new tokens follow the vocabulary.
    """
    vocab = backend.get_vocab(with_added_tokens=True)
    added = backend.get_added_tokens_decoder()

    def token_of(key: str) -> str | None:
        value = hf_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else None

    roles: dict[str, int] = {}
    for name, token in (overrides or {}).items():
        if token not in vocab:
            raise ValueError(f"special role {name!r}: token {token!r} is not in the vocabulary")
        roles[name] = vocab[token]
    eos = token_of("eos_token")
    if "eos" not in roles:
        if eos is None or eos not in vocab:
            raise ValueError(
                f"{HF_CONFIG_FILE}: field 'eos_token' missing or not in the vocabulary"
            )
        roles["eos"] = vocab[eos]
    pad = token_of("pad_token")
    roles.setdefault("pad", vocab[pad] if pad in vocab else roles["eos"])
    for name in ROLE_NAMES:
        if name in roles:
            continue
        for surface in ROLE_SURFACES[name]:
            if surface in vocab:
                roles[name] = vocab[surface]
                break
    template = hf_config.get("chat_template") or ""
    template = template if isinstance(template, str) else json.dumps(template)
    in_use = {token_of(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    taken = set(roles.values())
    reserved = [
        token_id
        for token_id, token in sorted(added.items())
        if token.special
        and token.content not in in_use
        and token.content not in template
        and token_id not in taken
    ]
    new_tokens = []
    next_id = backend.get_vocab_size(with_added_tokens=True)
    for name in ROLE_NAMES:
        if name in roles:
            continue
        if reserved:
            roles[name] = reserved.pop(0)
        else:
            new_tokens.append(f"[recsysllm_{name}]")
            roles[name] = next_id
            next_id += 1
    return roles, new_tokens


class HFTokenizer(SegmentTokenizer):
    """GLMTokenizer's interface over a ``tokenizers.Tokenizer`` (see the module doc).

    Attributes:
        kind: "hf".
        vocab_size: 1 + the largest id the tokenizer can emit (the model needs at least
            this many embedding rows).
        special_tokens: role name -> id.
        banned_generation_ids: every other special added token (chat markers, reserved
            tokens): free generation never emits them.
        added_roles: how many roles got new tokens (their rows need a resized embedding).
    """

    kind = KIND

    def __init__(
        self,
        tokenizer_json: bytes,
        special_tokens: Mapping[str, int],
        banned_generation_ids: Iterable[int] | None = None,
        added_roles: int = 0,
    ) -> None:
        """Builds the backend from ``tokenizer.json`` content and a complete role map."""
        missing = [n for n in ("eos", "pad", *ROLE_NAMES) if n not in special_tokens]
        if missing:
            raise ValueError(f"special roles {missing} have no id")
        self._json = bytes(tokenizer_json)
        self._hf = Tokenizer.from_str(self._json.decode("utf-8"))
        # Special strings in text stay text (see GLMTokenizer.encode).
        self._hf.encode_special_tokens = True
        self.special_tokens = {name: int(i) for name, i in special_tokens.items()}
        self.added_roles = int(added_roles)
        self._backend_size = self._hf.get_vocab_size(with_added_tokens=True)
        if banned_generation_ids is None:
            roles = set(self.special_tokens.values())
            banned_generation_ids = [
                i
                for i, t in self._hf.get_added_tokens_decoder().items()
                if t.special and i not in roles
            ]
        self.banned_generation_ids = frozenset(int(i) for i in banned_generation_ids)
        self.vocab_size = max(self._backend_size, max(self.special_tokens.values()) + 1)
        self._special_ids = frozenset(self.special_tokens.values())
        self._entity_cache: dict[str, tuple[int, ...]] = {}
        self._fingerprint: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            HFTokenizer,
            (self._json, self.special_tokens, sorted(self.banned_generation_ids), self.added_roles),
        )

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]!r})"

    # ------------------------------------------------------------------ special ids

    cls_token_id = property(lambda self: self.special_tokens["cls"])
    eos_token_id = property(lambda self: self.special_tokens["eos"])
    pad_token_id = property(lambda self: self.special_tokens["pad"])
    mask_token_id = property(lambda self: self.special_tokens["mask"])
    smask_token_id = property(lambda self: self.special_tokens["smask"])
    gmask_token_id = property(lambda self: self.special_tokens["gmask"])
    sop_token_id = property(lambda self: self.special_tokens["sop"])
    eop_token_id = property(lambda self: self.special_tokens["eop"])

    @property
    def added_role_ids(self) -> list[int]:
        """Ids of the role tokens this tokenizer added after the vocabulary (new embedding rows)."""
        first = self._backend_size - self.added_roles
        return sorted(i for i in self.special_tokens.values() if i >= first)

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._special_ids

    @property
    def fingerprint(self) -> str:
        """sha256 hex of the role map, banned ids and tokenizer.json content."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            header = {
                "kind": KIND,
                "special_tokens": self.special_tokens,
                "banned_generation_ids": sorted(self.banned_generation_ids),
            }
            digest.update(json.dumps(header, sort_keys=True).encode())
            digest.update(f"\n{TOKENIZER_FILE}:{len(self._json)}\n".encode())
            digest.update(self._json)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no special tokens added, none recognised in the text."""
        if not text:
            return []
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; role tokens are dropped or written as GLM's surface strings.

        Raises:
            ValueError: an id outside the tokenizer (e.g. a padding row of the embedding).
        """
        pieces: list[str] = []
        run: list[int] = []
        by_id = {i: name for name, i in self.special_tokens.items() if name != "pad"}
        by_id.setdefault(self.pad_token_id, "pad")  # pad shown as such only when not eos
        for token_id in ids:
            token_id = int(token_id)
            if token_id in by_id:
                pieces.append(self._hf.decode(run, skip_special_tokens=False) if run else "")
                run = []
                if not skip_special_tokens:
                    pieces.append(_SPECIAL_TEXT[by_id[token_id]])
            elif 0 <= token_id < self._backend_size:
                run.append(token_id)
            else:
                raise ValueError(
                    f"token id {token_id} is not in this tokenizer's vocabulary "
                    f"(ids 0..{self._backend_size - 1})"
                )
        if run:
            pieces.append(self._hf.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Writes tokenizer.json, then recsysllm_tokenizer.json (roles + fingerprint), atomically."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / TOKENIZER_FILE, self._json)
        record = {
            "recsysllm_hf_tokenizer_version": ROLES_VERSION,
            "special_tokens": self.special_tokens,
            "banned_generation_ids": sorted(self.banned_generation_ids),
            "added_roles": self.added_roles,
            "fingerprint": self.fingerprint,
        }
        atomic_write(directory / ROLES_FILE, json.dumps(record, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, role_overrides: Mapping[str, str] | None = None
    ) -> HFTokenizer:
        """Loads a directory with tokenizer.json.

        With ``recsysllm_tokenizer.json`` (written by :meth:`save_pretrained`) the roles
        are as recorded and the fingerprint is checked; otherwise (a model directory) the
        roles are assigned by :func:`assign_roles` from tokenizer_config.json.
        """
        directory = Path(path)
        tokenizer_path = directory / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise FileNotFoundError(f"{tokenizer_path}: no such file (not a fast tokenizer)")
        content = tokenizer_path.read_bytes()
        roles_path = directory / ROLES_FILE
        if roles_path.is_file():
            record = read_json(roles_path)
            for key in ("special_tokens", "banned_generation_ids", "fingerprint"):
                if not isinstance(record, dict) or key not in record:
                    raise ValueError(f"{roles_path}: missing field {key!r}")
            if record.get("recsysllm_hf_tokenizer_version") != ROLES_VERSION:
                raise ValueError(
                    f"{roles_path}: field 'recsysllm_hf_tokenizer_version' is "
                    f"{record.get('recsysllm_hf_tokenizer_version')!r}, expected {ROLES_VERSION}"
                )
            try:
                tokenizer = cls(
                    content,
                    record["special_tokens"],
                    record["banned_generation_ids"],
                    record.get("added_roles", 0),
                )
            except ValueError as error:
                raise ValueError(f"{roles_path}: {error}") from None
            if tokenizer.fingerprint != record["fingerprint"]:
                raise ValueError(
                    f"{roles_path}: field 'fingerprint' does not match {tokenizer_path} "
                    "(changed or half-written since save_pretrained)"
                )
            return tokenizer
        config_path = directory / HF_CONFIG_FILE
        hf_config = read_json(config_path) if config_path.is_file() else {}
        return cls.from_backend(
            Tokenizer.from_str(content.decode("utf-8")), hf_config, role_overrides
        )

    @classmethod
    def from_backend(
        cls,
        backend: Tokenizer,
        hf_config: Mapping[str, Any],
        role_overrides: Mapping[str, str] | None = None,
    ) -> HFTokenizer:
        """Assigns roles on a ``tokenizers.Tokenizer`` (adding tokens only where needed)."""
        roles, new_tokens = assign_roles(backend, hf_config, role_overrides)
        if new_tokens:
            backend.add_special_tokens(
                [AddedToken(t, special=True, normalized=False) for t in new_tokens]
            )
            for token in new_tokens:
                name = re.fullmatch(r"\[recsysllm_(\w+)\]", token).group(1)
                if backend.token_to_id(token) != roles[name]:
                    raise RuntimeError(f"added token {token!r} did not get id {roles[name]}")
        return cls(backend.to_str().encode("utf-8"), roles, added_roles=len(new_tokens))


def is_hf_tokenizer_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a fast tokenizer (tokenizer.json) rather than a GLM layout."""
    directory = Path(path)
    return (directory / ROLES_FILE).is_file() or (
        (directory / TOKENIZER_FILE).is_file()
        and not (directory / "vocab.json").is_file()
        and not any(directory.glob("*.model"))
    )


def resize_model_embeddings(model: Any, tokenizer: HFTokenizer, pad_multiple: int = 64) -> None:
    """Grows the model's (tied) embeddings to cover the tokenizer's ids, if they do not.

    New rows (input embedding and an untied head) are set to the mean of the pretrained
    rows, without random noise: the same base and tokenizer always give the same model,
    so an adapter saved with trained role rows reloads onto identical padding rows.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if rows >= tokenizer.vocab_size:
        return
    model.resize_token_embeddings(
        tokenizer.vocab_size, pad_to_multiple_of=pad_multiple, mean_resizing=False
    )
    with torch.no_grad():
        for layer in {
            id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
        }.values():
            if layer is not None:
                layer.weight[rows:] = layer.weight[:rows].mean(dim=0)
