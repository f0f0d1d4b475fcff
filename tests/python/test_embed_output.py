"""`embedrt embed --output FILE.npy|FILE.parquet|FILE.jsonl`: read back with
numpy and pyarrow, equal to the JSON lines on standard output."""

import json
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

TEXTS = [
    "A man is eating food.",
    "A man is riding a horse.",
    "Two dogs play in the snow.",
    "x",
    "word " * 400,
]


def run(binary, model, *extra):
    stdin = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS)
    return subprocess.run(
        [str(binary), "embed", "--model", str(model), "--device", "cpu", *extra],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def json_vectors(binary, model):
    out = run(binary, model)
    assert out.returncode == 0, out.stderr
    return np.array(
        [json.loads(line)["embedding"] for line in out.stdout.splitlines()], np.float32
    )


@pytest.mark.parametrize("name", ["tiny-bert-mean-norm", "tiny-mpnet-cls", "minilm"])
def test_npy_and_parquet_equal_the_json_lines(
    embedrt_bin, fixtures_dir, minilm_dir, tmp_path, name
):
    model = minilm_dir if name == "minilm" else fixtures_dir / name
    want = json_vectors(embedrt_bin, model)
    npy, parquet, jsonl = (
        tmp_path / "v.npy",
        tmp_path / "v.parquet",
        tmp_path / "v.jsonl",
    )
    for path in (npy, parquet, jsonl):
        out = run(embedrt_bin, model, "--output", str(path))
        assert out.returncode == 0, out.stderr
        assert out.stdout == ""
    got = np.load(npy)
    assert got.dtype == np.float32 and got.shape == want.shape
    # JSON prints each f32 exactly (shortest round-trip), so equality is exact.
    np.testing.assert_array_equal(got, want)
    table = pq.read_table(parquet)
    assert table.column_names == ["index", "text", "embedding"]
    assert table.column("index").to_pylist() == list(range(len(TEXTS)))
    assert table.column("text").to_pylist() == TEXTS
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(emb, want)
    assert (
        str(table.schema.field("embedding").type)
        == f"fixed_size_list<item: float not null>[{want.shape[1]}]"
    )
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    np.testing.assert_array_equal(
        np.array([r["embedding"] for r in lines], np.float32), want
    )


def test_unknown_format_is_refused_before_any_work(embedrt_bin, fixtures_dir, tmp_path):
    target = tmp_path / "v.csv"
    out = run(
        embedrt_bin, fixtures_dir / "tiny-bert-mean-norm", "--output", str(target)
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        (
            f"error: --output {target}: unknown format; name the file FILE.parquet, FILE.npy "
            "or FILE.jsonl, or give - for JSON lines on standard output"
        )
    ]
    assert not target.exists()


def test_a_failed_run_leaves_no_file(embedrt_bin, tmp_path):
    target = tmp_path / "v.npy"
    out = run(embedrt_bin, tmp_path / "no-model", "--output", str(target))
    assert out.returncode == 1 and out.stderr.startswith("error: ")
    assert not target.exists()


def test_output_into_a_missing_directory_names_the_file(
    embedrt_bin, fixtures_dir, tmp_path
):
    bad = tmp_path / "no-dir" / "v.parquet"
    out = run(embedrt_bin, fixtures_dir / "tiny-bert-mean-norm", "--output", str(bad))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: writing {bad}"), out.stderr
