#!/usr/bin/env python3
"""HTTP load client for `embedrt serve` (standard library only).

Closed loop: C concurrent clients (threads, spread over P processes so the
client is not the bottleneck) each send one request, wait for the answer,
send the next, for a fixed duration. Sentences come from an STS CSV (both
sides of each pair) or JSON lines ({"text": ...}), cycled in file order.
Prints one JSON line: requests/s, sentences/s, p50/p90/p99 latency, errors.

  load_client.py --url http://127.0.0.1:8080 --input stsb-en-dev.csv \
      --concurrency 64 --duration 20 [--batch 1] [--route embed|openai]
"""
import argparse
import csv
import http.client
import json
import multiprocessing
import re
import socket
import sys
import threading
import time
import urllib.parse


def read_sentences(path):
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            return [s for row in csv.reader(f) for s in row[:2]]
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def request_bytes(route, host, texts):
    """One complete HTTP/1.1 request, built once and reused."""
    if route == "openai":
        path, body = "/v1/embeddings", json.dumps({"input": texts, "model": "bench"})
    else:
        path, body = "/embed", json.dumps({"inputs": texts})
    body = body.encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Connection:
    """A keep-alive HTTP/1.1 connection that reads responses by Content-Length:
    far less client CPU per request than http.client, so one client process
    keeps up with a fast server."""

    def __init__(self, host, port):
        self.addr = (host, port)
        self.sock = None
        self.buf = b""

    def roundtrip(self, request):
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=120)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        self.sock.sendall(request)
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._recv()
        head = self.buf[:end]
        status = int(head[9:12])
        m = CONTENT_LENGTH.search(head)
        if not m:
            raise http.client.HTTPException("response without Content-Length")
        total = end + 4 + int(m.group(1))
        while len(self.buf) < total:
            self._recv()
        self.buf = self.buf[total:]
        if CLOSE.search(head):
            self.close()
        return status

    def _recv(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
CLOSE = re.compile(rb"(?i)\r\nconnection: *close")


def worker(args):
    """One process: `threads` closed-loop clients until `stop_at`; returns latencies and errors."""
    url, sentences, threads, batch, route, start_at, stop_at, offset = args
    u = urllib.parse.urlparse(url)
    host = f"{u.hostname}:{u.port}"
    # Requests prebuilt per start position, so the loop only sends and reads.
    starts = range(0, len(sentences), batch) if batch > 1 else range(len(sentences))
    requests = [request_bytes(route, host, [sentences[(i + j) % len(sentences)] for j in range(batch)])
                for i in starts]
    latencies, errors = [], []
    lock = threading.Lock()

    def client(k):
        conn = Connection(u.hostname, u.port)
        i = (offset + k) * 7919
        mine, bad = [], []
        while time.time() < start_at:
            time.sleep(0.001)
        while True:
            t0 = time.time()
            if t0 >= stop_at:
                break
            request = requests[i % len(requests)]
            i += 1
            try:
                status = conn.roundtrip(request)
                if status != 200:
                    bad.append(status)
                else:
                    mine.append(time.time() - t0)
            except (OSError, ValueError, http.client.HTTPException) as e:
                bad.append(type(e).__name__)
                conn.close()
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    pool = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies, errors


def scrape(url):
    """Server-side counters from /metrics: CPU seconds, engine calls, sequences in them."""
    import urllib.request
    want = {"process_cpu_seconds_total": "cpu_s", "embedrt_batch_size_count": "batches",
            "embedrt_batch_size_sum": "sequences", "embedrt_inference_duration_seconds_sum": "engine_s"}
    out = {}
    try:
        text = urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in want:
            out[want[name]] = float(value)
    return out


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--input", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    ap.add_argument("--batch", type=int, default=1, help="sentences per request")
    ap.add_argument("--route", choices=["embed", "openai"], default="embed")
    ap.add_argument("--processes", type=int, default=0, help="client processes (default: min(4, concurrency))")
    a = ap.parse_args()
    sentences = read_sentences(a.input)
    if not sentences:
        sys.exit(f"{a.input}: no sentences")
    procs = a.processes or min(4, a.concurrency)
    procs = max(1, min(procs, a.concurrency))
    shares = [a.concurrency // procs + (1 if p < a.concurrency % procs else 0) for p in range(procs)]
    if a.warmup > 0:
        t = time.time() + 0.5
        with multiprocessing.Pool(procs) as pool:
            pool.map(worker, [(a.url, sentences, n, a.batch, a.route, t, t + a.warmup, p * 100)
                              for p, n in enumerate(shares)])
    start_at = time.time() + 1.0  # every process started before the clock runs
    stop_at = start_at + a.duration
    jobs = [(a.url, sentences, n, a.batch, a.route, start_at, stop_at, p * 100) for p, n in enumerate(shares)]
    with multiprocessing.Pool(procs) as pool:
        pending = pool.map_async(worker, jobs)
        time.sleep(max(0.0, start_at - time.time()))
        before = scrape(a.url)
        time.sleep(max(0.0, stop_at - time.time()))
        after = scrape(a.url)
        results = pending.get()
    server = {k: after[k] - before[k] for k in after if k in before}
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = [e for _, err in results for e in err]
    n = len(latencies)
    print(json.dumps({
        "concurrency": a.concurrency,
        "batch": a.batch,
        "route": a.route,
        "seconds": a.duration,
        "requests": n,
        "errors": len(errors),
        "error_kinds": sorted(set(map(str, errors))),
        "requests_per_s": n / a.duration,
        "sentences_per_s": n * a.batch / a.duration,
        "p50_ms": percentile(latencies, 50) and 1000 * percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90) and 1000 * percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99) and 1000 * percentile(latencies, 99),
        # What the server did in the same window: how busy its cores were,
        # its CPU per sentence (robust to other load on the machine), and
        # how large the batches it formed were.
        "server_cores_busy": server.get("cpu_s", 0) / a.duration if server else None,
        "server_cpu_ms_per_sentence": 1000 * server["cpu_s"] / (n * a.batch) if server and n else None,
        "engine_busy": server.get("engine_s", 0) / a.duration if server else None,
        "mean_batch": server["sequences"] / server["batches"] if server.get("batches") else None,
    }))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
