"""The Serve app against `embedrt embed` and `embedrt serve`'s contract, over HTTP on a real Ray cluster."""

import base64
import concurrent.futures

import numpy as np
import pytest
from client import cli_embed, max_abs_diff, request

TEXTS = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome.",
    "Two dogs play in the snow while a child watches from the porch.",
    "x",
]


@pytest.fixture(scope="module")
def reference(embedrt_bin, minilm_dir):
    return cli_embed(embedrt_bin, minilm_dir, TEXTS)


def test_tei_embed_matches_the_cli(serve_app, reference):
    resp = request(serve_app["port"], "POST", "/embed", {"inputs": TEXTS})
    assert resp.status == 200, resp.body
    assert resp.version == "1"
    assert max_abs_diff(resp.json(), reference) <= 1e-6
    one = request(serve_app["port"], "POST", "/", {"inputs": TEXTS[0]})
    assert max_abs_diff(one.json(), reference[:1]) <= 1e-6


def test_openai_embeddings_match_the_cli(serve_app, reference):
    resp = request(
        serve_app["port"], "POST", "/v1/embeddings", {"input": TEXTS, "model": "m"}
    )
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["object"] == "list" and body["model"] == "m"
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert max_abs_diff([d["embedding"] for d in body["data"]], reference) <= 1e-6
    assert body["usage"]["prompt_tokens"] > len(TEXTS)
    b64 = request(
        serve_app["port"],
        "POST",
        "/v1/embeddings",
        {"input": TEXTS[:2], "encoding_format": "base64"},
    ).json()
    rows = [
        np.frombuffer(base64.b64decode(d["embedding"]), "<f4").tolist()
        for d in b64["data"]
    ]
    assert max_abs_diff(rows, reference[:2]) <= 1e-6
    short = request(
        serve_app["port"],
        "POST",
        "/v1/embeddings",
        {"input": TEXTS[:1], "dimensions": 8},
    ).json()
    row = np.array(short["data"][0]["embedding"])
    assert row.shape == (8,) and abs(np.linalg.norm(row) - 1) < 1e-5


def test_info_and_health(serve_app):
    info = request(serve_app["port"], "GET", "/info")
    assert (
        info.status == 200
        and info.json()["hidden_size"] == 384
        and info.json()["model_version"] == "1"
    )
    health = request(serve_app["port"], "GET", "/health")
    assert health.status == 200 and health.json() == {"status": "alive"}


@pytest.mark.parametrize(
    "path,body,status,error_type",
    [
        ("/embed", b"{not json", 400, "bad_request"),
        ("/embed", b"\xff\xfe", 400, "bad_request"),
        ("/embed", {"inputs": []}, 422, "validation"),
        ("/embed", {"inputs": 5}, 422, "validation"),
        ("/embed", {"text": "a"}, 422, "validation"),
        ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "validation"),
        ("/embed", {"inputs": ["a"] * 33}, 413, "payload_too_large"),
        (
            "/embed",
            {"inputs": "word " * 400, "truncate": False},
            413,
            "payload_too_large",
        ),
        ("/v1/embeddings", {"input": "a", "dimensions": 0}, 422, "validation"),
        ("/v1/embeddings", {"input": "a", "encoding_format": "hex"}, 422, "validation"),
        ("/nope", {"inputs": "a"}, 404, "not_found"),
    ],
)
def test_bad_input_is_a_json_4xx_and_the_replica_lives(
    serve_app, path, body, status, error_type
):
    resp = request(serve_app["port"], "POST", path, body)
    assert resp.status == status, resp.body
    err = resp.json()
    assert (
        err["error_type"] == error_type
        and isinstance(err["error"], str)
        and err["error"]
    )
    assert (
        request(serve_app["port"], "POST", "/embed", {"inputs": "still alive"}).status
        == 200
    )


def test_many_concurrent_clients_get_their_own_vectors(serve_app, reference):
    def one(i):
        text = TEXTS[i % len(TEXTS)]
        resp = request(serve_app["port"], "POST", "/embed", {"inputs": [text]})
        return i, resp.status, resp.json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(160)))
    assert all(status == 200 for _, status, _ in results)
    for i, _, rows in results:
        assert max_abs_diff(rows, [reference[i % len(TEXTS)]]) <= 1e-6
