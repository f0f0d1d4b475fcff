"""What the pipeline suites share: simulated days, a pipeline config with a Ray Serve
deploy target, running `embedrt pipeline`, the live app's user_config, and client load
through the Serve proxy."""

import csv
import itertools
import json
import pathlib
import subprocess
import sys
import threading
import time

from client import request

ROOT = pathlib.Path(__file__).resolve().parents[3]
PYTHON = pathlib.Path(sys.executable)


def write_day(path, stsb_dir, start, count):
    with open(stsb_dir / "stsb-en-train.csv", newline="") as f:
        rows = list(csv.reader(f))[start : start + count]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def make_config(
    path,
    *,
    env,
    cluster,
    stsb_dir,
    inject_fault=False,
    train_extra="",
    registry=None,
    scripts=ROOT / "python/embedrt/train",
):
    """`registry`: the [registry] section's body (default: `path` = env["registry"]);
    `scripts`: the training scripts' directory (a fake trainer's in failure tests)."""
    registry = registry or f'path = "{env["registry"]}"'
    path.write_text(
        f"""
[model]
name = "tiny"
base = "{env["base"]}"
[registry]
{registry}
[train]
python = "{PYTHON}"
scripts = "{scripts}"
max_steps = 20
time_budget_s = 240
{train_extra}
[gates]
frozen_benchmark = "{stsb_dir / "stsb-en-dev.csv"}"
frozen_rows = 200
frozen_epsilon = 5.0
held_out_epsilon = 10.0
throughput_margin = 0.8
[optimize]
device = "cpu"
[[deploy]]
kind = "ray-serve"
address = "{cluster.dashboard}"
app = "embedrt"
route_prefix = "/"
url = "http://127.0.0.1:{cluster.serve_port}"
timeout_s = 180
[canary]
inject_fault = {"true" if inject_fault else "false"}
"""
    )
    return path


def pipeline(embedrt_bin, *args, timeout=900):
    return subprocess.run(
        [str(embedrt_bin), "pipeline", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def outcome(proc):
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def status(embedrt_bin, config):
    p = pipeline(embedrt_bin, "status", "--config", config)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def label(registry, version):
    """The x-model-version the ray-serve target gives a version: `<version>-<fingerprint>`."""
    info = json.loads((registry / "versions" / version / "version.json").read_text())
    return f"{version}-{info['fingerprint']}"


def live_user_config(cluster):
    details = cluster.rest("GET", "/api/serve/applications/")
    return details["applications"]["embedrt"]["deployments"]["Embedder"][
        "deployment_config"
    ]["user_config"]


class Load:
    """Clients embedding through the Serve proxy without pause; each keeps its own
    sequence of (status, version), so "the version changed once" is per client."""

    def __init__(self, port, clients=2):
        self.port = port
        self.stop = threading.Event()
        self.seqs = [[] for _ in range(clients)]
        self.threads = [
            threading.Thread(target=self.loop, args=(s,), daemon=True)
            for s in self.seqs
        ]

    def loop(self, seq):
        deadline = time.monotonic() + 900
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                r = request(self.port, "POST", "/embed", {"inputs": ["under load"]})
                seq.append((r.status, r.version))
            except OSError as e:
                seq.append((repr(e), None))
            time.sleep(0.02)

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def failures(self):
        return [r for seq in self.seqs for r in seq if r[0] != 200]

    def versions(self):
        return {r[1] for seq in self.seqs for r in seq}

    def changes(self):
        """Per client, the versions it moved to."""
        return [
            [b for a, b in itertools.pairwise([r[1] for r in seq]) if a != b]
            for seq in self.seqs
        ]
