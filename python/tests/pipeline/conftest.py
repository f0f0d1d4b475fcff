"""The pipeline suite's Ray Serve app: the embedrt app from the repository's config file,
serving the tiny fixture model with one replica, on the session's Ray cluster; deleted
when the suite ends. One replica: a client's answers then change version exactly once."""

import pathlib

import pytest
import ray_cluster
from serve_helpers import app_status, deploy, serve_config

ROOT = pathlib.Path(__file__).resolve().parents[3]
TINY = ROOT / "tests/fixtures/tiny-bert-mean-norm"


@pytest.fixture(scope="package")
def ray_app(cluster):
    config = serve_config(cluster, TINY, version="initial", replicas=1)
    deploy(cluster, config)
    try:
        ray_cluster.wait_for(
            lambda: app_status(cluster) == "RUNNING", 300, "app RUNNING"
        )
        yield {"port": cluster.serve_port, "config": config, "base": TINY}
    finally:
        cluster.shutdown_serve()
