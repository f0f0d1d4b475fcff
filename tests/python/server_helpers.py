"""A real `embedrt serve` on a loopback port, and a small HTTP client (standard library only)."""
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def version(self):
        return self.headers.get("x-model-version")


class Server:
    """Starts the binary, waits for /ready, always kills it on exit."""

    def __init__(self, binary, *args, ready=True):
        self.port = free_port()
        self.args = [str(binary), "serve", "--host", "127.0.0.1", "--port", str(self.port), *map(str, args)]
        # The child gets its own copy of the descriptor: ours can be closed once it has started.
        with tempfile.NamedTemporaryFile(prefix="embedrt-serve-", suffix=".log", delete=False) as log:
            self.log_path = log.name
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        if ready:
            try:
                self.wait_ready()
            except BaseException:
                # No `with` block owns the process yet: stop it here, or it outlives the test.
                self.proc.kill()
                self.proc.wait()
                raise

    def wait_ready(self, timeout=START_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if self.request("GET", "/ready", timeout=5).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def request(self, method, path, body=None, headers=None, timeout=60) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
            hdrs = {"Content-Type": "application/json"} if body is not None else {}
            hdrs.update(headers or {})
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def post(self, path, body, **kw) -> Response:
        return self.request("POST", path, body=body, **kw)

    def get(self, path, **kw) -> Response:
        return self.request("GET", path, **kw)

    def metric(self, name, headers=None) -> float:
        """The value of an unlabelled metric line, or the sum over labelled ones matching `name{`."""
        text = self.get("/metrics", headers=headers).body.decode()
        total, found = 0.0, False
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        if not found:
            raise AssertionError(f"no metric {name} in:\n{text}")
        return total

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def cli_embed(binary, model, texts, *extra):
    """Embeddings from `embedrt embed`, the reference the server must reproduce."""
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    out = subprocess.run(
        [str(binary), "embed", "--model", str(model), "--device", "cpu", *extra],
        input=lines.encode(),
        capture_output=True,
        timeout=300,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]
    return [r["embedding"] for r in sorted(rows, key=lambda r: r["index"])]


def max_abs_diff(a, b) -> float:
    assert len(a) == len(b), (len(a), len(b))
    worst = 0.0
    for x, y in zip(a, b):
        assert len(x) == len(y), (len(x), len(y))
        worst = max(worst, max(abs(p - q) for p, q in zip(x, y)))
    return worst
