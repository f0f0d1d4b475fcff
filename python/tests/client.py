"""A small HTTP client for the Serve app, and the reference embeddings from `embedrt embed`."""

import http.client
import json
import subprocess


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    @property
    def version(self):
        return self.headers.get("x-model-version")


def request(port, method, path, body=None, timeout=60) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        conn.request(
            method,
            path,
            body=body,
            headers={"Content-Type": "application/json"} if body is not None else {},
        )
        resp = conn.getresponse()
        return Response(
            resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        )
    finally:
        conn.close()


def post_with_retry(port, path, body, retries=1) -> tuple[Response, int]:
    """The retry the tests add: once more on a connection error or a 5xx. Returns (response, retries used)."""
    for attempt in range(retries + 1):
        try:
            resp = request(port, "POST", path, body)
            if resp.status < 500 or attempt == retries:
                return resp, attempt
        except OSError:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


def cli_embed(binary, model, texts):
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    out = subprocess.run(
        [str(binary), "embed", "--model", str(model), "--device", "cpu"],
        input=lines.encode(),
        capture_output=True,
        timeout=300,
        check=True,
    )
    rows = [
        json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()
    ]
    return [r["embedding"] for r in sorted(rows, key=lambda r: r["index"])]


def max_abs_diff(a, b) -> float:
    assert len(a) == len(b), (len(a), len(b))
    worst = 0.0
    for x, y in zip(a, b):
        assert len(x) == len(y), (len(x), len(y))
        worst = max(worst, max(abs(p - q) for p, q in zip(x, y)))
    return worst
