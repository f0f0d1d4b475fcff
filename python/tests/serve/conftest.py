"""The Serve app deployed once for the session on a real loopback Ray cluster,
from the repository's config file (python/embedrt/serve/config.yaml) with test ports and paths."""

import copy
import json
import os
import pathlib
import sys
import tempfile
import urllib.request

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import ray_cluster

ROOT = pathlib.Path(__file__).resolve().parents[3]
CONFIG = ROOT / "python/embedrt/serve/config.yaml"


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


def serve_config(cluster, model, version="1", replicas=2):
    """The repo's config with this test's port, model path and a fixed replica count."""
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = cluster.serve_port
    app = config["applications"][0]
    app["args"]["model"] = str(model)
    dep = app["deployments"][0]
    dep.pop("autoscaling_config")
    dep["num_replicas"] = replicas
    dep["ray_actor_options"]["num_cpus"] = 0.5
    dep["user_config"] = {"model": str(model), "device": "cpu", "version": version}
    return config


def deploy(cluster, config):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    out = cluster.serve("deploy", f.name, "--address", cluster.dashboard)
    os.unlink(f.name)
    assert out.returncode == 0, f"serve deploy failed: {out.stdout}\n{out.stderr}"


def app_status(cluster):
    with urllib.request.urlopen(
        f"{cluster.dashboard}/api/serve/applications/", timeout=10
    ) as r:
        return json.load(r)["applications"].get("embedrt", {}).get("status")


@pytest.fixture(scope="session")
def serve_app(cluster, minilm_dir):
    config = serve_config(cluster, minilm_dir)
    deploy(cluster, config)
    ray_cluster.wait_for(lambda: app_status(cluster) == "RUNNING", 300, "app RUNNING")
    return {"port": cluster.serve_port, "config": copy.deepcopy(config)}
