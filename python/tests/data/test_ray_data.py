"""`python -m embedrt.ray_data` on a real Ray cluster: every row embedded once, vectors equal to `embedrt embed`."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from client import cli_embed, max_abs_diff

STSB = pathlib.Path(
    os.environ.get(
        "EMBEDRT_STSB", pathlib.Path(__file__).resolve().parents[4] / "shared/data/stsb"
    )
)


@pytest.fixture(scope="module")
def sentences():
    with open(STSB / "stsb-en-dev.csv", newline="") as f:
        rows = list(csv.reader(f))
    return [r[0] for r in rows[:150]]


def run_job(cluster, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "embedrt.ray_data",
            "--address",
            cluster.address,
            "--device",
            "cpu",
            "--num-cpus",
            "0.5",
            "--batch-size",
            "32",
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=cluster.env,
    )


def read_output(directory):
    table = pq.read_table(directory)
    return table.to_pydict()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_every_row_embedded_once_with_cli_parity(
    tmp_path, cluster, embedrt_bin, minilm_dir, sentences, fmt
):
    ids = list(range(1000, 1000 + len(sentences)))
    if fmt == "jsonl":
        src = tmp_path / "in.jsonl"
        src.write_text(
            "".join(
                json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, sentences)
            )
        )
    else:
        src = tmp_path / "in.parquet"
        pq.write_table(pa.table({"id": ids, "text": sentences}), src, row_group_size=40)
    out = run_job(
        cluster,
        "--input",
        str(src),
        "--output",
        str(tmp_path / "out"),
        "--model",
        str(minilm_dir),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = read_output(tmp_path / "out")
    assert sorted(got["id"]) == ids, "every row exactly once"
    by_id = dict(zip(got["id"], zip(got["text"], got["embedding"])))
    reference = cli_embed(embedrt_bin, minilm_dir, sentences)
    assert max_abs_diff([by_id[i][1] for i in ids], reference) <= 1e-6
    assert [by_id[i][0] for i in ids] == sentences
    schema = pq.read_schema(next((tmp_path / "out").glob("*.parquet")))
    assert schema.field("embedding").type == pa.list_(pa.float32())


def test_a_missing_text_column_is_one_error_line(tmp_path, cluster, minilm_dir):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "body": "x"}) + "\n")
    out = run_job(
        cluster,
        "--input",
        str(src),
        "--output",
        str(tmp_path / "out"),
        "--model",
        str(minilm_dir),
    )
    assert out.returncode != 0
    assert "text" in out.stderr
