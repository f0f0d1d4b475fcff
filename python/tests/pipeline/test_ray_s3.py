"""The pipeline with its registry on S3 (moto's server on loopback, a real S3 API) and
Ray on the other side: the training job and the Serve replicas see no path of the
pipeline's disk, only s3:// URIs. The job downloads the champion and the rows and
uploads the trained model; the replicas fetch the new version from the registry."""

import json

import boto3
import moto.server as moto_server
import pytest
import ray_cluster
from serve_helpers import app_status, deploy, serve_config

from pipeline.helpers import (
    Load,
    live_user_config,
    make_config,
    outcome,
    pipeline,
    write_day,
)

BUCKET = "embedrt-ray"


@pytest.fixture(scope="module")
def s3():
    port = ray_cluster.free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
    }
    client = boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield {"aws": aws, "client": client}
    finally:
        server.stop()


def keys(client, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix
    )
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_a_day_on_an_s3_registry_trains_on_ray_and_reaches_the_replicas_by_uri(
    s3, ray_app, cluster, embedrt_bin, stsb_dir, tmp_path, monkeypatch
):
    # The replicas reach S3 through their runtime_env, as IRSA would give them on EKS.
    config = serve_config(cluster, ray_app["base"], version="initial", replicas=1)
    config["applications"][0]["runtime_env"] = {"env_vars": s3["aws"]}
    deploy(cluster, config)
    ray_cluster.wait_for(
        lambda: (
            app_status(cluster) == "RUNNING"
            and live_user_config(cluster)["version"] == "initial"
        ),
        300,
        "the app RUNNING with S3 access",
    )
    env = {"tmp": tmp_path, "base": ray_app["base"]}
    env_vars = ", ".join(f'{k} = "{v}"' for k, v in s3["aws"].items())
    pipeline_config = make_config(
        tmp_path / "s3-ray.toml",
        env=env,
        cluster=cluster,
        stsb_dir=stsb_dir,
        registry=f'uri = "s3://{BUCKET}/reg"\ncache = "{tmp_path / "cache"}"',
        train_extra=(
            f'runner = "ray"\nray_address = "{cluster.dashboard}"\n'
            f"ray_runtime_env = {{ env_vars = {{ {env_vars} }} }}"
        ),
    )
    # The pipeline itself (object_store) reads the same AWS_* variables.
    for k, v in s3["aws"].items():
        monkeypatch.setenv(k, v)
    day = write_day(tmp_path / "day.csv", stsb_dir, 2600, 200)
    with Load(ray_app["port"]) as load:
        proc = pipeline(embedrt_bin, "run", "--config", pipeline_config, "--data", day)
    assert proc.returncode == 0, proc.stderr
    out = outcome(proc)
    assert (out["decision"], out["version"]) == ("deployed", "v0002"), out
    assert not load.failures(), load.failures()[:5]

    run_key = f"reg/runs/{out['run']}"
    stored = keys(s3["client"], run_key)
    # The job read its rows from the store and wrote the model there.
    assert f"{run_key}/train.jsonl" in stored, sorted(stored)
    assert f"{run_key}/challenger/model/model.safetensors" in stored, sorted(stored)
    assert f"{run_key}/challenger/train.json" in stored, sorted(stored)
    report = json.loads(
        s3["client"]
        .get_object(Bucket=BUCKET, Key=f"{run_key}/report.json")["Body"]
        .read()
    )
    summary = report["stages"]["train"]["summary"]
    assert summary["model_dir"] == f"s3://{BUCKET}/{run_key}/challenger/model/", summary
    assert summary["steps"] > 0, summary

    # The replicas were told the version's URI, not a path of this disk, and serve it.
    uc = live_user_config(cluster)
    assert uc["model"] == f"s3://{BUCKET}/reg/versions/v0002/model/", uc
    info = json.loads(
        s3["client"]
        .get_object(Bucket=BUCKET, Key="reg/versions/v0002/version.json")["Body"]
        .read()
    )
    new = f"v0002-{info['fingerprint']}"
    assert uc["version"] == new
    assert load.versions() == {"initial", new}
    target = report["stages"]["deploy"]["targets"][0]
    assert target["canary"]["min_cosine"] >= 0.9999, target
