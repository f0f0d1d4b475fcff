"""Ray Serve (embedrt.ray_serve) vs `embedrt serve`: the same model, the same client.

Starts one server at a time on loopback, runs CLIENTS threads posting
BATCH-sentence TEI /embed requests (STS-B dev sentences) for SECONDS, and
prints sentences/s and p50/p99 latency of each plus the ratio, as JSON.

    python bench/ray/serve_vs_embedrt.py --model .cache/all-MiniLM-L6-v2 --device cpu \
        [--batch 32] [--clients 8] [--seconds 20] [--replicas 1] [--num-gpus 0]
"""

import argparse
import csv
import http.client
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sentences():
    path = (
        pathlib.Path(os.environ.get("EMBEDRT_STSB", ROOT.parent / "shared/data/stsb"))
        / "stsb-en-dev.csv"
    )
    with open(path, newline="") as f:
        return [r[0] for r in csv.reader(f)]


def post(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(
            "POST", "/embed", body=body, headers={"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_ok(port, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if post(port, json.dumps({"inputs": "warm"})) == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: nothing answers on port {port} after {timeout}s")


def load(port, texts, batch, clients, seconds):
    bodies = [
        json.dumps({"inputs": texts[i : i + batch]})
        for i in range(0, len(texts) - batch, batch)
    ]
    lat, errors, lock = [], [0], threading.Lock()
    stop = time.monotonic() + seconds

    def client(k):
        i = k
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status = post(port, bodies[i % len(bodies)])
            dt = time.perf_counter() - t0
            with lock:
                if status == 200:
                    lat.append(dt)
                else:
                    errors[0] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "sentences_per_s": round(len(lat) * batch / wall, 1),
        "requests": len(lat),
        "errors": errors[0],
        "p50_ms": round(lat[len(lat) // 2] * 1e3, 1) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 1) if lat else None,
    }


def run_embedrt(args, texts):
    port = free_port()
    exe = os.environ.get("EMBEDRT_BIN", str(ROOT / "target/release/embedrt"))
    proc = subprocess.Popen(
        [
            exe,
            "serve",
            "--model",
            args.model,
            "--device",
            args.device,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ok(port)
        load(port, texts, args.batch, args.clients, 3)  # warm-up
        return load(port, texts, args.batch, args.clients, args.seconds)
    finally:
        proc.terminate()
        proc.wait(30)


def run_ray(args, texts):
    gcs, dash, port = free_port(), free_port(), free_port()
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{gcs}", RAY_USAGE_STATS_ENABLED="0")
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--num-cpus={os.cpu_count()}", "--object-store-memory=200000000", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    try:
        config = yaml.safe_load((ROOT / "python/embedrt/serve/config.yaml").read_text())
        config["http_options"]["port"] = port
        app = config["applications"][0]
        app["args"]["model"] = args.model
        dep = app["deployments"][0]
        # A fixed count: the class's own autoscaling_config outlives a key removed here.
        dep["autoscaling_config"] = {
            "min_replicas": args.replicas,
            "max_replicas": args.replicas,
            "initial_replicas": args.replicas,
        }
        dep["ray_actor_options"] = {"num_cpus": 0, "num_gpus": args.num_gpus}
        dep["user_config"] = {
            "model": args.model,
            "device": args.device,
            "version": "1",
        }
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(config, f)
        subprocess.run(
            [str(BIN / "serve"), "deploy", f.name, "--address", f"http://127.0.0.1:{dash}"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{dash}/api/serve/applications/"
            ) as r:
                if (
                    json.load(r)["applications"].get("embedrt", {}).get("status")
                    == "RUNNING"
                ):
                    break
            time.sleep(1)
        wait_ok(port)
        load(port, texts, args.batch, args.clients, 3)
        return load(port, texts, args.batch, args.clients, args.seconds)
    finally:
        subprocess.run(
            [str(BIN / "ray"), "stop", "--force"], check=False, capture_output=True
        )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--num-gpus", type=float, default=0)
    args = p.parse_args()
    args.model = (
        str(pathlib.Path(args.model).resolve())
        if os.path.exists(args.model)
        else args.model
    )
    texts = sentences()
    native = run_embedrt(args, texts)
    ray = run_ray(args, texts)
    print(
        json.dumps(
            {
                "batch": args.batch,
                "clients": args.clients,
                "device": args.device,
                "embedrt_serve": native,
                "ray_serve": ray,
                "ratio_ray_over_embedrt": round(
                    ray["sentences_per_s"] / native["sentences_per_s"], 3
                ),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
