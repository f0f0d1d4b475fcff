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
# The Python package: one release build of the wheel (sharing target/), installed into .venv.
(cd python && CARGO_TARGET_DIR="$PWD/../target" ../.venv/bin/maturin build --release --locked -o ../target/wheels)
.venv/bin/python -m pip install --disable-pip-version-check -q --force-reinstall --no-deps target/wheels/embedrt-*-abi3-*.whl
.venv/bin/python -m pytest -q python/tests
