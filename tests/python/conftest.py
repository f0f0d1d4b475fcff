"""Shared pytest fixtures: where the embedrt binary, the models and the data are."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _must_exist(path: pathlib.Path, hint: str) -> pathlib.Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {hint}")
    return path


@pytest.fixture(scope="session")
def embedrt_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("EMBEDRT_BIN", ROOT / "target/release/embedrt"))
    return _must_exist(path, "run `cargo build --release` (scripts/test.sh does)")


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("EMBEDRT_MINILM", ROOT / ".cache/all-MiniLM-L6-v2"))
    return _must_exist(path, "run scripts/setup-test-env.sh")


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return ROOT / "tests/fixtures"


@pytest.fixture(scope="session")
def stsb_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("EMBEDRT_STSB", ROOT.parent / "shared/data/stsb"))
    return _must_exist(path, "the STS Benchmark CSVs live in ../shared/data/stsb")


@pytest.fixture(scope="session")
def golden_path() -> pathlib.Path:
    path = pathlib.Path(
        os.environ.get("EMBEDRT_GOLDEN", ROOT.parent / "shared/data/golden/minilm-stsb-dev-256.json")
    )
    return _must_exist(path, "the golden embeddings live in ../shared/data/golden")


TINY_FIXTURES = [
    "tiny-mpnet-mean-norm",
    "tiny-mpnet-cls",
    "tiny-bert-mean-norm",
    "tiny-bert-max",
    "tiny-bert-mean-sqrt-len",
]
