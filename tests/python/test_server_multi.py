"""`embedrt serve` with several engines, through the real binary. Without a GPU (CI)
only the device options and the per-device reporting of one CPU engine can be
checked here; failover with two engines under load is tested in Rust
(crates/server/tests/pool.rs) with real CPU engines and a fault injector."""
import subprocess

import pytest
from cuda_probe import has_cuda
from server_helpers import Server

TINY = "tiny-bert-mean-norm"


def serve_fails(binary, fixtures_dir, device):
    r = subprocess.run([str(binary), "serve", "--port", "0", "--model", str(fixtures_dir / TINY),
                        "--device", device], capture_output=True, text=True, timeout=120,
                       check=False)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    return r.returncode, errors, r.stderr


def test_one_cpu_engine_is_reported_per_device(embedrt_bin, fixtures_dir):
    with Server(embedrt_bin, "--model", fixtures_dir / TINY, "--device", "cpu",
                "--max-batch-requests", 2) as s:
        assert s.post("/embed", {"inputs": ["a b", "c d e", "f"]}).status == 200
        info = s.get("/info").json()
        assert info["device"] == "cpu"
        [dev] = info["devices"]
        assert dev["device"] == "cpu" and dev["engine"] == "cpu"
        assert dev["state"] == "healthy" and dev["failures"] == 0 and dev["error"] is None
        # Three inputs at two per batch, after the warm-up (not counted).
        assert dev["batches"] == 2, dev
        assert s.metric('embedrt_device_batches_total{device="cpu"}') == 2
        assert s.metric('embedrt_device_sequences_total{device="cpu"}') == 3
        assert s.metric('embedrt_device_failures_total{device="cpu"}') == 0
        assert s.metric('embedrt_engine_healthy{device="cpu"}') == 1
        assert s.metric("embedrt_inputs_retried_total") == 0


@pytest.mark.parametrize("device, words", [
    ("cuda:0,0", "listed twice"),
    ("cuda:0,x", "not a GPU number"),
    ("cuda:1,", "not a GPU number"),
])
def test_bad_device_sets_are_one_line_errors(embedrt_bin, fixtures_dir, device, words):
    code, errors, stderr = serve_fails(embedrt_bin, fixtures_dir, device)
    assert code == 1, stderr
    assert len(errors) == 1 and words in errors[0], stderr


@pytest.mark.skipif(has_cuda(), reason="this machine has a CUDA driver")
@pytest.mark.parametrize("device", ["cuda:all", "cuda:0,1"])
def test_several_gpus_without_a_gpu_is_a_one_line_error(embedrt_bin, fixtures_dir, device):
    code, errors, stderr = serve_fails(embedrt_bin, fixtures_dir, device)
    assert code == 1, stderr
    assert len(errors) == 1 and f"--device {device}" in errors[0] and "CUDA" in errors[0], stderr


def test_one_device_commands_point_to_serve_for_several_gpus(embedrt_bin, fixtures_dir):
    r = subprocess.run([str(embedrt_bin), "embed", "--model", str(fixtures_dir / TINY),
                        "--device", "cuda:all"], input='{"text": "a"}\n', capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "embedrt serve" in r.stderr, r.stderr
