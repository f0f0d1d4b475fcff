"""Deploying the app from the repository's config file, and reading its status (dashboard REST API)."""

import json
import os
import pathlib
import tempfile
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "python/embedrt/serve/config.yaml"


def serve_config(cluster, model, version="1", replicas=2):
    """The repo's config with this test's port, model path and a fixed replica count."""
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = cluster.serve_port
    app = config["applications"][0]
    app["args"]["model"] = str(model)
    dep = app["deployments"][0]
    # A fixed count: the class's own autoscaling_config outlives a key removed here.
    dep["autoscaling_config"] = {
        "min_replicas": replicas,
        "max_replicas": replicas,
        "initial_replicas": replicas,
    }
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
