"""`embedrt serve` against real clients on loopback: every route, every error
path, 64 concurrent clients, reload under load, SIGHUP and SIGTERM."""
import base64
import concurrent.futures
import csv
import hashlib
import http.client
import json
import shutil
import signal
import socket
import struct
import threading
import time

import pytest
from server_helpers import Server, cli_embed, max_abs_diff

TINY = "tiny-bert-mean-norm"  # normalizes
TINY_OTHER = "tiny-mpnet-mean-norm"  # same sizes, other weights: tells versions apart
TINY_NO_NORM = "tiny-bert-max"


def expected(fixtures_dir, name):
    return json.loads((fixtures_dir / name / "expected.json").read_text())


def fingerprint(model_dir) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:12]


def assert_error(resp, status, error_type=None):
    assert resp.status == status, (resp.status, resp.body)
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("error_type"), str), body
    if error_type:
        assert body["error_type"] == error_type, body


@pytest.fixture(scope="module")
def tiny(embedrt_bin, fixtures_dir):
    with Server(embedrt_bin, "--model", fixtures_dir / TINY, "--device", "cpu",
                "--max-client-batch-size", 40, "--payload-limit", 100_000) as s:
        yield s


# ---- routes -------------------------------------------------------------


def test_health_ready_and_info(tiny, fixtures_dir):
    health = tiny.get("/health")
    assert health.status == 200 and health.json()["status"] == "alive"
    ready = tiny.get("/ready")
    assert ready.status == 200
    version = ready.version
    assert version and version.endswith(fingerprint(fixtures_dir / TINY))
    info = tiny.get("/info")
    assert info.status == 200 and info.version == version
    body = info.json()
    assert body["model_version"] == version
    assert body["device"] == "cpu" and body["precision"] == "fp32"
    assert body["hidden_size"] == 32
    assert body["max_input_length"] == expected(fixtures_dir, TINY)["max_seq_length"]
    assert body["max_client_batch_size"] == 40
    for key in ("max_batch_tokens", "max_batch_requests", "max_concurrent_requests", "version", "model_id"):
        assert key in body


def test_embed_matches_the_cli(tiny, embedrt_bin, fixtures_dir):
    texts = expected(fixtures_dir, TINY)["texts"]
    want = cli_embed(embedrt_bin, fixtures_dir / TINY, texts)
    resp = tiny.post("/embed", {"inputs": texts})
    assert resp.status == 200, resp.body
    assert resp.version
    got = resp.json()
    assert max_abs_diff(got, want) < 1e-6
    root = tiny.post("/", {"inputs": texts[:2], "normalize": True})  # TEI's root route
    assert root.status == 200 and max_abs_diff(root.json(), want[:2]) < 1e-6
    one = tiny.post("/embed", {"inputs": texts[3]})
    assert one.status == 200
    assert max_abs_diff(one.json(), [want[3]]) < 1e-6


def test_embed_without_normalization_matches_the_cli(embedrt_bin, fixtures_dir):
    texts = expected(fixtures_dir, TINY_NO_NORM)["texts"][:10]
    want = cli_embed(embedrt_bin, fixtures_dir / TINY_NO_NORM, texts, "--no-normalize")
    with Server(embedrt_bin, "--model", fixtures_dir / TINY_NO_NORM, "--device", "cpu") as s:
        resp = s.post("/embed", {"inputs": texts, "normalize": False})
        assert resp.status == 200, resp.body
        assert max_abs_diff(resp.json(), want) < 1e-5
        normed = s.post("/embed", {"inputs": texts}).json()
        for row in normed:
            assert abs(sum(x * x for x in row) - 1.0) < 1e-4


def test_openai_embeddings(tiny, embedrt_bin, fixtures_dir):
    texts = expected(fixtures_dir, TINY)["texts"][:6]
    want = cli_embed(embedrt_bin, fixtures_dir / TINY, texts)
    resp = tiny.post("/v1/embeddings", {"input": texts, "model": "text-embedding-3-small"})
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["object"] == "list" and body["model"] == "text-embedding-3-small"
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    assert all(d["object"] == "embedding" for d in body["data"])
    assert max_abs_diff([d["embedding"] for d in body["data"]], want) < 1e-6
    ids = tiny.post("/tokenize", {"inputs": texts}).json()
    n_tokens = sum(len(seq) for seq in ids)
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}

    b64 = tiny.post("/v1/embeddings", {"input": texts[0], "model": "m", "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    floats = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert max_abs_diff([floats], [want[0]]) < 1e-6

    short = tiny.post("/v1/embeddings", {"input": [texts[0]], "model": "m", "dimensions": 8}).json()
    row = short["data"][0]["embedding"]
    assert len(row) == 8
    norm = sum(x * x for x in want[0][:8]) ** 0.5
    assert max_abs_diff([row], [[x / norm for x in want[0][:8]]]) < 1e-6

    assert_error(tiny.post("/v1/embeddings", {"input": "x", "model": "m", "dimensions": 33}), 422, "validation")
    assert_error(tiny.post("/v1/embeddings", {"input": "x", "encoding_format": "int8"}), 422)


def test_tokenize_matches_the_reference_tokenizer(tiny, fixtures_dir):
    exp = expected(fixtures_dir, TINY)
    resp = tiny.post("/tokenize", {"inputs": exp["texts"]})
    assert resp.status == 200, resp.body
    got = [[t["id"] for t in seq] for seq in resp.json()]
    assert got == exp["token_ids"]
    assert all(isinstance(t["text"], str) for t in resp.json()[0])


def test_metrics(tiny):
    assert tiny.post("/embed", {"inputs": ["metrics please", "and again"]}).status == 200
    assert tiny.post("/embed", {"inputs": []}).status == 422
    resp = tiny.get("/metrics")
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.body.decode()
    for needle in (
        'embedrt_requests_total{route="/embed",status="200"}',
        'embedrt_requests_total{route="/embed",status="422"}',
        'embedrt_request_duration_seconds_bucket{route="/embed",status="200",le="+Inf"}',
        "embedrt_queue_depth 0",
        "embedrt_batch_size_count",
        "embedrt_batch_tokens_sum",
        "embedrt_inference_duration_seconds_count",
        "embedrt_model_version 1",
        f'embedrt_model_info{{version="{resp.version}"',
        "embedrt_models_loaded 1",
    ):
        assert needle in text, needle
    assert tiny.metric("embedrt_batch_tokens_sum") > 0


def test_official_openai_and_huggingface_clients_work_unchanged(embedrt_bin, fixtures_dir):
    """The clients users come with: openai's SDK (base64 by default) and
    huggingface_hub's InferenceClient (TEI's protocol), API key included."""
    import openai
    from huggingface_hub import InferenceClient

    texts = expected(fixtures_dir, TINY)["texts"][:5]
    want = cli_embed(embedrt_bin, fixtures_dir / TINY, texts)
    with Server(embedrt_bin, "--model", fixtures_dir / TINY, "--device", "cpu", "--api-key", "k-123") as s:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="k-123", max_retries=0)
        resp = client.embeddings.create(model="text-embedding-3-small", input=texts)
        assert max_abs_diff([d.embedding for d in resp.data], want) < 1e-6
        assert resp.usage.prompt_tokens == sum(len(t) for t in expected(fixtures_dir, TINY)["token_ids"][:5])
        short = client.embeddings.create(model="m", input=texts[0], encoding_format="float", dimensions=16)
        assert len(short.data[0].embedding) == 16
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="wrong",
                          max_retries=0).embeddings.create(model="m", input="x")
        tei = InferenceClient(base_url=f"http://127.0.0.1:{s.port}", token="k-123")
        got = tei.feature_extraction(texts)
        assert got.shape == (5, 32)
        assert max_abs_diff(got.tolist(), want) < 1e-6


# ---- errors -------------------------------------------------------------


def test_input_errors(tiny, fixtures_dir):
    exp = expected(fixtures_dir, TINY)
    long_text = exp["texts"][exp["token_ids"].index(max(exp["token_ids"], key=len))]
    assert_error(tiny.post("/embed", {"inputs": []}), 422, "validation")
    assert_error(tiny.post("/v1/embeddings", {"input": [], "model": "m"}), 422, "validation")
    assert_error(tiny.post("/embed", b'{"inputs": ["unclosed'), 400, "bad_request")
    assert_error(tiny.post("/embed", b'{"inputs": ["\xff\xfe"]}'), 400, "bad_request")
    assert_error(tiny.post("/embed", {"inputs": 5}), 422, "validation")
    assert_error(tiny.post("/embed", {"text": "no inputs"}), 422, "validation")
    assert_error(tiny.post("/embed", {"inputs": ["x"] * 41}), 413, "payload_too_large")
    assert_error(tiny.post("/embed", {"inputs": ["word " * 30_000]}), 413, "payload_too_large")
    assert_error(tiny.post("/embed", {"inputs": [long_text], "truncate": False}), 413, "payload_too_large")
    cut = tiny.post("/embed", {"inputs": [long_text], "truncate": True})
    assert cut.status == 200 and len(cut.json()[0]) == 32
    assert_error(tiny.get("/no/such/route"), 404, "not_found")
    assert_error(tiny.get("/embed"), 405, "method_not_allowed")
    assert_error(tiny.post("/admin/reload", b"x" * 200_000), 413, "payload_too_large")
    # The server is unharmed.
    assert tiny.post("/embed", {"inputs": ["still fine"]}).status == 200


def test_too_many_concurrent_requests_get_429(embedrt_bin, fixtures_dir):
    # One request at a time, and a batch that waits 3 s for company: the
    # second request arrives while the first is certainly in flight.
    with Server(embedrt_bin, "--model", fixtures_dir / TINY, "--device", "cpu",
                "--max-concurrent-requests", 1, "--max-wait-us", 3_000_000) as s:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(s.post, "/embed", {"inputs": ["slow one"]})
            deadline = time.monotonic() + 10
            while s.metric("embedrt_queue_depth") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            second = s.post("/embed", {"inputs": ["too many"]})
            assert_error(second, 429, "overloaded")
            assert int(second.headers["retry-after"]) >= 1
            assert first.result(timeout=30).status == 200
        assert s.post("/embed", {"inputs": ["now there is room"]}).status == 200


def test_disconnected_client_work_is_dropped(embedrt_bin, fixtures_dir):
    with Server(embedrt_bin, "--model", fixtures_dir / TINY, "--device", "cpu",
                "--max-wait-us", 2_000_000, "--max-batch-requests", 64) as s:
        body = json.dumps({"inputs": [f"abandoned {i}" for i in range(5)]}).encode()
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while s.metric("embedrt_queue_depth") < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.metric("embedrt_queue_depth") == 5
        sock.close()  # gone before its batch ran
        deadline = time.monotonic() + 10
        while s.metric("embedrt_dropped_inputs_total") < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.metric("embedrt_dropped_inputs_total") == 5
        assert s.metric("embedrt_queue_depth") == 0
        assert s.metric("embedrt_batch_size_count") == 0  # the engine never saw them
        assert s.post("/embed", {"inputs": ["present"]}).status == 200


def test_api_key(embedrt_bin, fixtures_dir):
    with Server(embedrt_bin, "--model", fixtures_dir / TINY, "--device", "cpu", "--api-key", "s3cret") as s:
        good = {"Authorization": "Bearer s3cret"}
        assert s.get("/health").status == 200
        assert s.get("/ready").status == 200
        for method, path, body in [("POST", "/embed", {"inputs": "x"}),
                                   ("POST", "/v1/embeddings", {"input": "x", "model": "m"}),
                                   ("POST", "/tokenize", {"inputs": "x"}),
                                   ("GET", "/info", None), ("GET", "/metrics", None),
                                   ("POST", "/admin/reload", None)]:
            assert_error(s.request(method, path, body=body), 401, "unauthorized")
            assert_error(s.request(method, path, body=body, headers={"Authorization": "Bearer nope"}), 401)
        assert s.post("/embed", {"inputs": "x"}, headers=good).status == 200
        assert s.post("/v1/embeddings", {"input": "x", "model": "m"}, headers=good).status == 200
        assert s.get("/metrics", headers=good).status == 200


def test_a_model_that_does_not_load_exits_with_one_line(embedrt_bin, tmp_path):
    s = Server(embedrt_bin, "--model", tmp_path / "missing", "--device", "cpu", ready=False)
    try:
        assert s.proc.wait(60) == 1
        errors = [line for line in s.output().splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "missing" in errors[0]
    finally:
        s.stop()


# ---- load, reload, signals ----------------------------------------------


def stsb_sentences(stsb_dir, n):
    out = []
    with open(stsb_dir / "stsb-en-dev.csv", newline="") as f:
        for row in csv.reader(f):
            out.extend(row[:2])
            if len(out) >= n:
                break
    return out[:n]


def test_64_concurrent_clients_get_the_cli_embeddings(embedrt_bin, minilm_dir, stsb_dir):
    sentences = stsb_sentences(stsb_dir, 256)
    want = cli_embed(embedrt_bin, minilm_dir, sentences)
    with Server(embedrt_bin, "--model", minilm_dir, "--device", "cpu") as s:
        def client(c):
            rows = {}
            for k in range(4):  # 64 clients x 4 requests x 1-4 sentences
                start = (c * 4 + k) % len(sentences)
                idx = [(start + j) % len(sentences) for j in range(1 + (c + k) % 4)]
                if k % 2:
                    resp = s.post("/v1/embeddings", {"input": [sentences[i] for i in idx], "model": "m"}, timeout=120)
                    assert resp.status == 200, resp.body
                    vecs = [d["embedding"] for d in resp.json()["data"]]
                else:
                    resp = s.post("/embed", {"inputs": [sentences[i] for i in idx]}, timeout=120)
                    assert resp.status == 200, resp.body
                    vecs = resp.json()
                rows.update(zip(idx, vecs))
            return rows

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            results = list(pool.map(client, range(64), timeout=600))
        checked = 0
        worst = 0.0
        for rows in results:
            for i, vec in rows.items():
                worst = max(worst, max_abs_diff([vec], [want[i]]))
                checked += 1
        assert checked >= 64 * 4
        # Equal up to 1-ulp differences: gemm rounds a row slightly
        # differently depending on how many rows share its batch.
        assert worst < 1e-6, worst
        assert s.metric("embedrt_queue_depth") == 0
        # Concurrency really batched: fewer engine calls than requests.
        assert s.metric("embedrt_batch_size_count") < 64 * 4


def test_reload_under_load_never_mixes_versions(embedrt_bin, fixtures_dir, tmp_path):
    a_dir, b_dir = fixtures_dir / TINY, fixtures_dir / TINY_OTHER
    texts = expected(fixtures_dir, TINY)["texts"][:8]
    want = {fingerprint(a_dir): cli_embed(embedrt_bin, a_dir, texts),
            fingerprint(b_dir): cli_embed(embedrt_bin, b_dir, texts)}
    assert max_abs_diff(*want.values()) > 1e-2  # the two models are told apart
    # Small batches: each 8-input request spans several engine calls.
    with Server(embedrt_bin, "--model", a_dir, "--device", "cpu", "--max-batch-requests", 3) as s:
        stop = threading.Event()
        failures, seen = [], {}

        def client(c):
            n = 0
            while not stop.is_set() or n < 3:
                resp = s.post("/embed", {"inputs": texts}, timeout=60)
                n += 1
                if resp.status != 200:
                    failures.append((resp.status, resp.body))
                    continue
                fp = resp.version.split("-", 1)[1]
                if fp not in want or max_abs_diff(resp.json(), want[fp]) > 1e-6:
                    failures.append(("mixed or wrong", resp.version))
                seen[resp.version] = seen.get(resp.version, 0) + 1
            return n

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            futures = [pool.submit(client, c) for c in range(64)]
            versions = []
            for target in [b_dir, a_dir, b_dir, a_dir]:
                time.sleep(0.3)
                r = s.post("/admin/reload", {"model": str(target)}, timeout=120)
                assert r.status == 200, r.body
                assert r.json()["model_version"].endswith(fingerprint(target))
                versions.append(r.json()["model_version"])
            time.sleep(0.3)
            stop.set()
            total = sum(f.result(timeout=120) for f in futures)
        assert not failures, failures[:5]
        assert [v.split("-")[0] for v in versions] == ["2", "3", "4", "5"]
        # Every version served traffic, so every switch happened under load.
        assert set(seen) == {f"1-{fingerprint(a_dir)}", *versions}, seen
        assert total >= 64 * 3
        # The old models were freed once their requests finished.
        deadline = time.monotonic() + 10
        while s.metric("embedrt_models_loaded") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.metric("embedrt_models_loaded") == 1


def test_failed_reload_keeps_the_old_model(tiny, tmp_path):
    before = tiny.get("/info").json()["model_version"]
    r = tiny.post("/admin/reload", {"model": str(tmp_path / "nope")})
    assert_error(r, 500, "reload_failed")
    assert "nope" in r.json()["error"]
    assert_error(tiny.post("/admin/reload", {"weights": "x"}), 422, "validation")
    assert tiny.get("/info").json()["model_version"] == before
    resp = tiny.post("/embed", {"inputs": ["still serving"]})
    assert resp.status == 200 and resp.version == before


def test_reload_rereads_from_disk_and_sighup(embedrt_bin, fixtures_dir, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(fixtures_dir / TINY, served)
    with Server(embedrt_bin, "--model", served, "--device", "cpu") as s:
        v1 = s.get("/info").json()["model_version"]
        assert v1 == "1-" + fingerprint(served)
        # New weights on disk, picked up by a bodiless reload.
        shutil.copytree(fixtures_dir / TINY_OTHER, served, dirs_exist_ok=True)
        r = s.post("/admin/reload", None)
        assert r.status == 200, r.body
        assert r.json()["model_version"] == "2-" + fingerprint(served)
        assert r.json()["previous_version"] == v1
        s.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while s.get("/info").json()["model_version"].split("-")[0] != "3" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.get("/info").json()["model_version"] == "3-" + fingerprint(served)
        assert s.post("/embed", {"inputs": ["after sighup"]}).version.startswith("3-")


def test_sigterm_finishes_in_flight_work_and_exits_0(embedrt_bin, fixtures_dir):
    s = Server(embedrt_bin, "--model", fixtures_dir / TINY, "--device", "cpu", "--max-wait-us", 1_500_000)
    try:
        # An idle keep-alive connection must not hold up the exit.
        idle = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        idle.request("GET", "/health")
        assert idle.getresponse().read()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(s.post, "/embed", {"inputs": ["in flight at shutdown"]})
            deadline = time.monotonic() + 10
            while s.metric("embedrt_queue_depth") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            s.signal(signal.SIGTERM)
            resp = pending.result(timeout=30)
            assert resp.status == 200 and len(resp.json()[0]) == 32
        assert s.proc.wait(30) == 0
        idle.close()
        with pytest.raises(OSError):
            s.get("/health", timeout=2)
    finally:
        s.stop()
