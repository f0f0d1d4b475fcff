"""The Serve app deployed once for this suite on the session's Ray cluster, from the
repository's config file (python/embedrt/serve/config.yaml) with test ports and paths;
deleted when the suite ends (package scope), so its replicas' CPUs go back to the
cluster before the next suite (Ray Data, the pipeline) asks for them."""

import copy

import pytest
import ray_cluster
from serve_helpers import app_status, deploy, serve_config


@pytest.fixture(scope="package")
def serve_app(cluster, minilm_dir):
    config = serve_config(cluster, minilm_dir)
    deploy(cluster, config)
    try:
        ray_cluster.wait_for(
            lambda: app_status(cluster) == "RUNNING", 300, "app RUNNING"
        )
        yield {"port": cluster.serve_port, "config": copy.deepcopy(config)}
    finally:
        cluster.shutdown_serve()
