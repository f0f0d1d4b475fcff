"""The Serve app deployed once for the session on a real loopback Ray cluster,
from the repository's config file (python/embedrt/serve/config.yaml) with test ports and paths."""

import copy
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import ray_cluster
from serve_helpers import app_status, deploy, serve_config

ROOT = pathlib.Path(__file__).resolve().parents[3]


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
def cluster():
    c = ray_cluster.acquire()
    yield c
    ray_cluster.release()


@pytest.fixture(scope="session")
def serve_app(cluster, minilm_dir):
    config = serve_config(cluster, minilm_dir)
    deploy(cluster, config)
    ray_cluster.wait_for(lambda: app_status(cluster) == "RUNNING", 300, "app RUNNING")
    return {"port": cluster.serve_port, "config": copy.deepcopy(config)}
