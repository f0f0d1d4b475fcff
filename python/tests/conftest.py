"""Fixtures every suite under python/tests shares: the embedrt binary, the real MiniLM,
and one real Ray cluster on loopback for the whole session (started by the first test
that asks for it, stopped at the end). Suites that deploy Serve apps delete them when
they end (their package-scoped fixtures call `cluster.shutdown_serve()`), so the CPUs
are free for the next suite whatever the order."""

import os
import pathlib

import pytest
import ray_cluster

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def embedrt_bin():
    path = pathlib.Path(os.environ.get("EMBEDRT_BIN", ROOT / "target/release/embedrt"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --release`")
    return path


@pytest.fixture(scope="session")
def minilm_dir():
    path = pathlib.Path(
        os.environ.get("EMBEDRT_MINILM", ROOT / ".cache/all-MiniLM-L6-v2")
    )
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/setup-test-env.sh")
    return path.resolve()


@pytest.fixture(scope="session")
def stsb_dir():
    path = pathlib.Path(
        os.environ.get("EMBEDRT_STSB", ROOT.parent / "shared/data/stsb")
    )
    if not path.exists():
        pytest.fail(
            f"{path} is missing: the STS Benchmark CSVs live in ../shared/data/stsb"
        )
    return path


@pytest.fixture(scope="session")
def cluster():
    c = ray_cluster.Cluster()
    try:
        yield c
    finally:
        c.stop()
