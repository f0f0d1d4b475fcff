"""Shared fixtures: the embedrt CLI (the reference the package must match),
the tiny fixture models, and the real all-MiniLM-L6-v2 when installed."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = [
    "tiny-bert-mean-norm",
    "tiny-bert-max",
    "tiny-mpnet-cls",
    "tiny-mpnet-mean-norm",
]

SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse.",
    "Two dogs play in the snow, and one of them barks loudly at a passing car.",
    "x",
    "The quick brown fox jumps over the lazy dog " * 3,
]


@pytest.fixture(scope="session")
def embedrt_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("EMBEDRT_BIN", ROOT / "target/release/embedrt"))
    if not path.exists():
        pytest.fail(
            f"{path} is missing; run `cargo build --release` or set EMBEDRT_BIN"
        )
    return path


@pytest.fixture(scope="session")
def minilm() -> pathlib.Path:
    path = pathlib.Path(
        os.environ.get("EMBEDRT_MINILM", ROOT / ".cache/all-MiniLM-L6-v2")
    )
    if not (path / "config.json").exists():
        pytest.skip(f"{path} is missing; run scripts/setup-test-env.sh")
    return path


def cli_embed(binary, model, texts, normalize=True):
    """Embeddings from `embedrt embed` on the CPU: the reference."""
    args = [str(binary), "embed", "--model", str(model), "--device", "cpu"]
    if not normalize:
        args.append("--no-normalize")
    stdin = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    out = subprocess.run(args, input=stdin, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["index"] for r in rows] == list(range(len(texts)))
    return np.array([r["embedding"] for r in rows], dtype=np.float32)


def cli_error(binary, *args):
    """The one `error: ...` line `embedrt embed` prints for these arguments."""
    out = subprocess.run(
        [str(binary), "embed", *args],
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0, out
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), out.stderr
    return line.removeprefix("error: ")
