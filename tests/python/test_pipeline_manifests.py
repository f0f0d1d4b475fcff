"""deploy/pipeline renders with kustomize and says what the schedule must say."""

import re
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_pipeline_manifests_render():
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy/pipeline")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out)}
    assert set(docs) == {"ServiceAccount", "ConfigMap", "CronJob", "RayJob"}
    cron = docs["CronJob"]["spec"]
    assert cron["schedule"] == "0 3 * * *"
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "embedrt-pipeline"
    assert pod["containers"][0]["command"][:3] == ["embedrt", "pipeline", "run"]
    # The registry is on S3: no volume claim to bind.
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert "pipeline.toml" in docs["ConfigMap"]["data"]
    workers = docs["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (
        workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        == 1
    )


def test_cluster_config_parses(embedrt_bin, tmp_path):
    """The ConfigMap's TOML is a valid pipeline config (its S3 registry redirected to a temp dir)."""
    text = (ROOT / "deploy/pipeline/pipeline.toml").read_text()
    assert 'uri = "s3://' in text
    text = re.sub(r'(?m)^uri = "s3://[^"]*"$', f'uri = "file://{tmp_path}"', text)
    cfg = tmp_path / "p.toml"
    cfg.write_text(text)
    p = subprocess.run(
        [str(embedrt_bin), "pipeline", "status", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr


def test_bad_config_is_one_error_line(embedrt_bin, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[model]\nname = 1\n")
    p = subprocess.run(
        [str(embedrt_bin), "pipeline", "status", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.toml" in lines[0]
