"""`embedrt pipeline` against a live Ray Serve app on the session's loopback Ray cluster:
a good day deployed under client load through the dashboard's REST API, a failed canary
rolled back, and training as a Ray job (`train.runner = "ray"`). The tiny fixture model
everywhere (CPU time is scarce); the tests share one registry and run in order."""

import json
import time

import pytest
from client import request

from pipeline.helpers import (
    Load,
    label,
    live_user_config,
    make_config,
    outcome,
    pipeline,
    status,
    write_day,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_app, cluster, stsb_dir):
    tmp = tmp_path_factory.mktemp("ray-pipeline")
    e = {"tmp": tmp, "registry": tmp / "registry", "base": ray_app["base"]}
    e["config"] = make_config(
        tmp / "ray.toml", env=e, cluster=cluster, stsb_dir=stsb_dir
    )
    e["faulty"] = make_config(
        tmp / "faulty.toml",
        env=e,
        cluster=cluster,
        stsb_dir=stsb_dir,
        inject_fault=True,
    )
    e["port"] = ray_app["port"]
    return e


def test_good_day_deploys_to_ray_serve_under_load(env, cluster, embedrt_bin, stsb_dir):
    day = write_day(env["tmp"] / "day1.csv", stsb_dir, 1600, 200)
    with Load(env["port"]) as load:
        proc = pipeline(embedrt_bin, "run", "--config", env["config"], "--data", day)
    assert proc.returncode == 0, proc.stderr
    out = outcome(proc)
    assert (out["decision"], out["version"], out["champion"]) == (
        "deployed",
        "v0002",
        "v0002",
    ), out
    new = label(env["registry"], "v0002")
    assert not load.failures(), load.failures()[:5]
    assert load.versions() == {"initial", new}
    for moves in load.changes():
        assert moves == [new], f"a client saw the version change as {moves}"
    # Only model and version changed in the live user_config; the rest stayed.
    assert live_user_config(cluster) == {
        "model": str(env["registry"] / "versions/v0002/model"),
        "device": "cpu",
        "version": new,
    }
    report = json.loads(
        (env["registry"] / "runs" / out["run"] / "report.json").read_text()
    )
    target = report["stages"]["deploy"]["targets"][0]
    assert target["canary"]["min_cosine"] >= 0.9999
    assert target["canary"]["x_model_version"] == new
    assert target["switch"]["replicas"], target


def test_failed_canary_rolls_the_ray_serve_app_back(
    env, cluster, embedrt_bin, stsb_dir
):
    day = write_day(env["tmp"] / "day2.csv", stsb_dir, 1800, 200)
    before = live_user_config(cluster)
    with Load(env["port"]) as load:
        proc = pipeline(embedrt_bin, "run", "--config", env["faulty"], "--data", day)
    out = outcome(proc)
    assert proc.returncode == 1, proc.stderr
    assert (out["decision"], out["stage"], out["champion"]) == (
        "rolled_back",
        "deploy",
        "v0002",
    ), out
    assert "canary" in out["reason"] and "rolled back to v0002" in out["reason"]
    assert not load.failures(), load.failures()[:5]
    old = label(env["registry"], "v0002")
    assert load.versions() <= {old, label(env["registry"], out["version"])}
    # The app serves the old version again, with the user_config it had.
    assert live_user_config(cluster) == before
    live = request(env["port"], "POST", "/embed", {"inputs": ["x"]})
    assert live.status == 200 and live.version == old
    st = status(embedrt_bin, env["config"])
    assert (st["champion"], st["previous"]) == ("v0002", "v0001")


def test_training_as_a_ray_job(env, cluster, embedrt_bin, stsb_dir):
    config = make_config(
        env["tmp"] / "job.toml",
        env=env,
        cluster=cluster,
        stsb_dir=stsb_dir,
        train_extra=f'runner = "ray"\nray_address = "{cluster.dashboard}"',
    )
    day = write_day(env["tmp"] / "day3.csv", stsb_dir, 2000, 200)
    proc = pipeline(embedrt_bin, "run", "--config", config, "--data", day)
    assert proc.returncode == 0, proc.stderr
    out = outcome(proc)
    # A correct rejection (a gate) is as good as a deploy here: the job trained.
    assert (out["decision"], out["stage"]) in {
        ("deployed", "deploy"),
        ("rejected", "evaluate"),
    }, out
    run_dir = env["registry"] / "runs" / out["run"]
    summary = json.loads((run_dir / "report.json").read_text())["stages"]["train"][
        "summary"
    ]
    assert summary["steps"] > 0, summary
    assert (run_dir / "challenger/model/model.safetensors").exists()
    job_id = f"embedrt-train-{out['run']}-0"
    job = cluster.rest("GET", f"/api/jobs/{job_id}")
    assert job["status"] == "SUCCEEDED", job
    # The job's log was saved, ending with the summary the pipeline recorded.
    logged = []
    for line in (run_dir / "train.log").read_text().splitlines():
        try:
            logged.append(json.loads(line))
        except ValueError:  # the trainer's own log lines
            pass
    assert logged and logged[-1] == summary


def fake_trainer(tmp, name, body):
    scripts = tmp / name
    scripts.mkdir()
    (scripts / "run.py").write_text(body)
    return scripts


def test_a_failed_ray_job_fails_the_run_with_its_last_log_lines(
    env, cluster, embedrt_bin, stsb_dir
):
    scripts = fake_trainer(
        env["tmp"],
        "failing",
        "import sys\nprint('loading the model')\n"
        "print('error: CUDA out of memory (fake)', file=sys.stderr)\nsys.exit(3)\n",
    )
    config = make_config(
        env["tmp"] / "failing.toml",
        env=env,
        cluster=cluster,
        stsb_dir=stsb_dir,
        train_extra=f'runner = "ray"\nray_address = "{cluster.dashboard}"',
        scripts=scripts,
    )
    day = write_day(env["tmp"] / "day4.csv", stsb_dir, 2200, 200)
    champion = status(embedrt_bin, env["config"])["champion"]
    proc = pipeline(embedrt_bin, "run", "--config", config, "--data", day)
    assert proc.returncode == 1
    out = outcome(proc)
    assert (out["decision"], out["stage"]) == ("failed", "train"), out
    assert "FAILED" in out["reason"], out["reason"]
    assert "CUDA out of memory (fake)" in out["reason"], out["reason"]
    # Unchanged (a fresh registry gets its base model as v0001 at validate).
    assert status(embedrt_bin, config)["champion"] == (champion or "v0001")


def test_a_ray_job_past_its_limit_is_stopped(env, cluster, embedrt_bin, stsb_dir):
    scripts = fake_trainer(
        env["tmp"],
        "slow",
        "import time\nprint('training forever', flush=True)\ntime.sleep(600)\n",
    )
    config = make_config(
        env["tmp"] / "slow.toml",
        env=env,
        cluster=cluster,
        stsb_dir=stsb_dir,
        train_extra=(
            f'runner = "ray"\nray_address = "{cluster.dashboard}"\nray_job_timeout_s = 30'
        ),
        scripts=scripts,
    )
    day = write_day(env["tmp"] / "day5.csv", stsb_dir, 2400, 200)
    started = time.monotonic()
    proc = pipeline(embedrt_bin, "run", "--config", config, "--data", day)
    assert time.monotonic() - started < 120
    out = outcome(proc)
    assert (out["decision"], out["stage"]) == ("failed", "train"), out
    assert "limit of 30s" in out["reason"] and "training forever" in out["reason"], out
    job = cluster.rest("GET", f"/api/jobs/embedrt-train-{out['run']}-0")
    assert job["status"] == "STOPPED", job
