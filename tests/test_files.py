"""The one atomic writer (recsysllm.files) and the strict YAML reader, and every writer using them."""

from __future__ import annotations

import os
import stat

import pytest

from recsysllm.files import DuplicateKeyError, atomic_directory, atomic_write, load_yaml


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_content_kinds_and_mode(tmp_path, umask_022):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "héllo")
    assert target.read_bytes() == "héllo".encode()
    assert _mode(target) == 0o644
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"via path"))
    assert target.read_bytes() == b"via path"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]  # no temp left


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_directory_replaces_only_on_success(tmp_path, umask_022):
    target = tmp_path / "tok"
    with atomic_directory(target) as tmp:
        (tmp / "f").write_text("1")
    assert (target / "f").read_text() == "1"
    assert _mode(target) == 0o755
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "f").write_text("2")
        raise RuntimeError("killed")
    assert (target / "f").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "g").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_load_yaml_refuses_duplicate_keys_naming_file_and_line():
    text = "train:\n  learning_rate: 1.0e-3\n  epochs: 2\n  learning_rate: 5.0e-3\n"
    with pytest.raises(
        DuplicateKeyError, match=r"cfg\.yaml: line 4: field 'learning_rate'.*line 2"
    ):
        load_yaml(text, "cfg.yaml")
    assert load_yaml("a: {b: 1}\nc: [1, 2]\n", "x") == {"a": {"b": 1}, "c": [1, 2]}
    with pytest.raises(ValueError, match=r"x: line 2: malformed YAML"):
        load_yaml("a: 1\n b: [\n", "x")


def test_load_yaml_keeps_merge_keys_working():
    text = "base: &b {lr: 1, epochs: 2}\nrun:\n  <<: *b\n  lr: 3\n"
    assert load_yaml(text, "x")["run"] == {"lr": 3, "epochs": 2}
