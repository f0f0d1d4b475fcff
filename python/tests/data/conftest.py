"""The data suite's fixtures: the same session Ray cluster as the serve suite (ray_cluster.acquire)."""

import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "serve"))
import ray_cluster

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def embedrt_bin():
    path = pathlib.Path(os.environ.get("EMBEDRT_BIN", ROOT / "target/release/embedrt"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --release`")
    return path


@pytest.fixture(scope="session")
def minilm_dir():
    path = pathlib.Path(os.environ.get("EMBEDRT_MINILM", ROOT / ".cache/all-MiniLM-L6-v2"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/setup-test-env.sh")
    return path.resolve()


@pytest.fixture(scope="session")
def cluster():
    c = ray_cluster.acquire()
    yield c
    ray_cluster.release()
