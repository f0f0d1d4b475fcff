"""The one real Ray cluster on loopback that the serve, data and pipeline suites share
(`ray start --head`, 2 CPUs, a 200 MB object store, the dashboard on: its REST API is how
`serve deploy` and `ray job submit` work); `python/tests/conftest.py` starts it once per
session and always stops it (`ray stop --force`)."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

VENV_BIN = pathlib.Path(sys.executable).parent


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
        # The venv first on PATH: a Ray job's entrypoint (`python run.py`) runs
        # with the environment `ray start` had, and must find torch there.
        path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = dict(
            os.environ,
            RAY_ADDRESS=self.address,
            RAY_USAGE_STATS_ENABLED="0",
            PATH=path,
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

    def rest(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.dashboard}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
        return json.loads(text) if text.strip() else None

    def shutdown_serve(self, timeout=120):
        """Deletes every Serve app (`serve shutdown`) and waits until their replicas
        are gone, so the next suite gets the cluster's CPUs back."""
        self.rest("DELETE", "/api/serve/applications/", timeout=timeout)

        def freed():
            apps = self.rest("GET", "/api/serve/applications/")["applications"]
            return not apps and not self.alive_actors("ServeReplica")

        wait_for(freed, timeout, "Serve apps deleted and their replicas gone")

    def alive_actors(self, class_prefix):
        rows = self.rest(
            "GET",
            "/api/v0/actors?limit=1000&detail=false"
            "&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE",
        )["data"]["result"]["result"]
        return [a for a in rows if (a.get("class_name") or "").startswith(class_prefix)]

    def stop(self):
        subprocess.run(
            [str(VENV_BIN / "ray"), "stop", "--force"],
            check=False,
            capture_output=True,
            timeout=120,
        )


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
