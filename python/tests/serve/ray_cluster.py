"""One real Ray cluster on loopback for the whole test session (`ray start --head`),
with the dashboard on (its REST API is how `serve deploy` works); always `ray stop --force`."""

import os
import pathlib
import socket
import subprocess
import sys
import time

VENV_BIN = pathlib.Path(sys.executable).parent
_cluster = None
_users = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self):
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.serve_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = dict(
            os.environ, RAY_ADDRESS=self.address, RAY_USAGE_STATS_ENABLED="0"
        )
        cmd = [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            "--num-cpus=2",
            "--object-store-memory=200000000",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--disable-usage-stats",
        ]
        out = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=180, env=self.env
        )
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {out.stdout}\n{out.stderr}")

    def serve(self, *args, timeout=300):
        return subprocess.run(
            [str(VENV_BIN / "serve"), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def stop(self):
        subprocess.run(
            [str(VENV_BIN / "ray"), "stop", "--force"],
            check=False,
            capture_output=True,
            timeout=120,
        )


def acquire() -> Cluster:
    global _cluster, _users
    if _cluster is None:
        _cluster = Cluster()
    _users += 1
    return _cluster


def release():
    global _cluster, _users
    _users -= 1
    if _users == 0 and _cluster is not None:
        _cluster.stop()
        _cluster = None


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, ValueError, KeyError, AssertionError) as e:  # not up yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached after {timeout}s (last: {last!r})")
