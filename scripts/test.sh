#!/usr/bin/env bash
# Every test: Rust unit and integration tests, then the Python suites that
# use ONNX Runtime and real servers as oracles.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
cargo build --release --locked
export EMBEDRT_BIN="$PWD/target/release/embedrt"
export EMBEDRT_MINILM="$PWD/.cache/all-MiniLM-L6-v2"
cargo test --release --workspace --locked
.venv/bin/python -m pytest -q tests/python
