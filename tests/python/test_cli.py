"""The `embedrt` CLI end to end with the real all-MiniLM-L6-v2."""
import json
import subprocess

import numpy as np


def run(embedrt_bin, *args, stdin=b""):
    return subprocess.run(
        [str(embedrt_bin), *map(str, args)], input=stdin, capture_output=True, timeout=600, check=False
    )


def test_embed_outputs_json_lines_in_input_order(embedrt_bin, minilm_dir, golden_path):
    golden = json.loads(golden_path.read_text())
    sentences = golden["sentences"][:40]
    # Reverse the order so sorting by length inside the engine cannot hide a mix-up.
    sentences = sentences[::-1]
    want = np.array(golden["embeddings"][:40][::-1], dtype=np.float32)
    stdin = "".join(json.dumps({"text": s}) + "\n" for s in sentences).encode()
    out = run(embedrt_bin, "embed", "--model", minilm_dir, "--batch-size", 7, stdin=stdin)
    assert out.returncode == 0, out.stderr.decode()
    lines = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [line["index"] for line in lines] == list(range(len(sentences)))
    got = np.array([line["embedding"] for line in lines], dtype=np.float32)
    assert np.abs(got - want).max() <= 1e-5


def test_no_normalize_returns_raw_mean_pooling(embedrt_bin, minilm_dir):
    stdin = b'{"text": "A man is playing a flute."}\n'
    norm = run(embedrt_bin, "embed", "--model", minilm_dir, stdin=stdin)
    raw = run(embedrt_bin, "embed", "--model", minilm_dir, "--no-normalize", stdin=stdin)
    assert norm.returncode == 0 and raw.returncode == 0
    v = np.array(json.loads(norm.stdout)["embedding"])
    r = np.array(json.loads(raw.stdout)["embedding"])
    assert abs(np.linalg.norm(v) - 1.0) < 1e-5
    assert abs(np.linalg.norm(r) - 1.0) > 1e-2
    assert np.abs(r / np.linalg.norm(r) - v).max() < 1e-6


def test_eval_reports_spearman_on_stsb_dev(embedrt_bin, minilm_dir, stsb_dir):
    out = run(embedrt_bin, "eval", "--model", minilm_dir, "--sts", stsb_dir / "stsb-en-dev.csv")
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    assert result["pairs"] == 1500
    # sentence-transformers fp32 reference: 86.7163
    assert abs(result["spearman"] - 86.7163) <= 0.01


def test_bench_reports_throughput(embedrt_bin, fixtures_dir, stsb_dir):
    out = run(
        embedrt_bin, "bench", "--model", fixtures_dir / "tiny-mpnet-mean-norm",
        "--input", stsb_dir / "stsb-en-dev.csv",
    )
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    assert result["sentences"] == 3000 and result["tokens"] > 3000
    assert result["sentences_per_s"] > 0 and result["device"] == "cpu"


def test_bench_times_each_pass_and_reports_the_median(embedrt_bin, fixtures_dir, stsb_dir):
    out = run(
        embedrt_bin, "bench", "--model", fixtures_dir / "tiny-mpnet-mean-norm",
        "--input", stsb_dir / "stsb-en-dev.csv", "--repeat", "3", "--min-seconds", "0",
    )
    assert out.returncode == 0, out.stderr.decode()
    r = json.loads(out.stdout)
    assert r["passes"] == 3 and r["sentences"] == 9000
    assert r["median_pass_seconds"] <= r["seconds"]
    assert abs(r["sentences_per_s"] - 3000 / r["median_pass_seconds"]) < 1e-6 * r["sentences_per_s"]
    # --min-seconds keeps timing past --repeat.
    out = run(
        embedrt_bin, "bench", "--model", fixtures_dir / "tiny-mpnet-mean-norm",
        "--input", stsb_dir / "stsb-en-dev.csv", "--min-seconds", str(3 * r["median_pass_seconds"]),
    )
    assert out.returncode == 0, out.stderr.decode()
    r2 = json.loads(out.stdout)
    assert r2["passes"] >= 2 and r2["seconds"] >= 3 * r["median_pass_seconds"]
