"""The CUDA engine's behaviour on a machine without a GPU (CI): device selection and
plan-file errors through the real `embedrt` binary. Plans are assembled without a GPU
by `embedrt-gpu-check assemble-plan`."""
import json
import os
import pathlib
import subprocess

import pytest
from cuda_probe import has_cuda

FIXTURE = "tiny-mpnet-mean-norm"


def run(binary, *args, stdin=""):
    return subprocess.run([str(binary), *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def check_bin(embedrt_bin):
    path = pathlib.Path(embedrt_bin).with_name("embedrt-gpu-check")
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --release`")
    return path


@pytest.fixture(scope="module")
def plan(check_bin, fixtures_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("plans") / "tiny.plan"
    r = run(check_bin, "assemble-plan", fixtures_dir / FIXTURE, path)
    assert r.returncode == 0, r.stderr
    return path


TEXTS = '{"text": "a GPU would be nice"}\n{"text": "the CPU will do"}\n'


def embeddings(stdout):
    return [json.loads(l)["embedding"] for l in stdout.splitlines()]


@pytest.mark.skipif(has_cuda(), reason="this machine has the CUDA driver")
def test_device_auto_falls_back_to_cpu_and_says_so(embedrt_bin, fixtures_dir):
    model = fixtures_dir / FIXTURE
    auto = run(embedrt_bin, "embed", "--model", model, stdin=TEXTS)
    cpu = run(embedrt_bin, "embed", "--model", model, "--device", "cpu", stdin=TEXTS)
    assert auto.returncode == 0 and cpu.returncode == 0, auto.stderr + cpu.stderr
    assert "running on the CPU" in auto.stderr and "libcuda.so.1" in auto.stderr
    assert "running on the CPU" not in cpu.stderr
    assert embeddings(auto.stdout) == embeddings(cpu.stdout)
    assert len(embeddings(cpu.stdout)) == 2


@pytest.mark.skipif(has_cuda(), reason="this machine has the CUDA driver")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_cuda_without_gpu_is_one_clear_error(embedrt_bin, fixtures_dir, device):
    r = run(embedrt_bin, "embed", "--model", fixtures_dir / FIXTURE, "--device", device, stdin=TEXTS)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "CUDA is not usable" in lines[0] and "libcuda.so.1" in lines[0]
    assert "panicked" not in r.stderr


def test_bad_device_names_are_refused(embedrt_bin, fixtures_dir):
    for device in ["gpu", "cuda:x", "cuda:-1"]:
        r = run(embedrt_bin, "embed", "--model", fixtures_dir / FIXTURE, "--device", device, stdin=TEXTS)
        assert r.returncode == 1 and "unknown device" in r.stderr, r.stderr


def test_info_prints_what_the_plan_holds(embedrt_bin, plan):
    r = run(embedrt_bin, "info", "--plan", plan)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for want in ["mpnet hidden 32 layers 2 heads 4", "fp16", "1x8:16x64:64x128",
                 "test GPU sm_90 (compute capability 9.0)", "weight bytes", "workspace bytes",
                 # assembled untuned: no algorithm timed, so cuBLASLt's heuristic picks each
                 "gemm algorithms cuBLASLt's heuristic choice (cuBLASLt "]:
        assert want in out, (want, out)
    header = json.loads(run(embedrt_bin, "info", "--plan", plan, "--json").stdout)
    weight_line = next(l for l in out.splitlines() if l.startswith("weight bytes"))
    assert str(header["weight_bytes"]) in weight_line
    assert header["weight_bytes"] == sum(t["bytes"] for t in header["tensors"])


def damaged(plan, tmp_path, how):
    data = bytearray(plan.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "corrupted":
        data[len(data) - 1000] ^= 0x40
    elif how == "version":
        data[16:20] = (99).to_bytes(4, "little")
    elif how == "not a plan":
        data = bytearray(b'{"text": "hello"}\n')
    path = tmp_path / f"{how.replace(' ', '_')}.plan"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how,cause", [("truncated", "truncated"), ("corrupted", "corrupted"),
                                       ("version", "format version 99"),
                                       ("not a plan", "not an embedrt plan")])
def test_bad_plans_name_the_cause(embedrt_bin, plan, tmp_path, how, cause):
    path = damaged(plan, tmp_path, how)
    for args in (["info", "--plan", path], ["embed", "--plan", path]):
        r = run(embedrt_bin, *args, stdin=TEXTS)
        assert r.returncode == 1, r.stdout
        assert r.stderr.startswith("error: ") and cause in r.stderr and str(path) in r.stderr, r.stderr
        assert "panicked" not in r.stderr


def test_plan_needs_a_gpu_device(embedrt_bin, plan):
    r = run(embedrt_bin, "embed", "--plan", plan, "--device", "cpu", stdin=TEXTS)
    assert r.returncode == 1 and "--plan runs on a GPU" in r.stderr, r.stderr


@pytest.mark.skipif(has_cuda(), reason="this machine has the CUDA driver")
def test_good_plan_without_gpu_says_cuda_is_missing(embedrt_bin, plan):
    r = run(embedrt_bin, "embed", "--plan", plan, stdin=TEXTS)
    assert r.returncode == 1 and "CUDA is not usable" in r.stderr, r.stderr


def test_build_without_gpu_is_one_clear_error(embedrt_bin, fixtures_dir, tmp_path):
    out = tmp_path / "x.plan"
    r = run(embedrt_bin, "build", "--model", fixtures_dir / FIXTURE, "--profile", "1x8:4x4:2x2",
            "-o", out)
    assert r.returncode == 1 and "MIN <= OPT <= MAX" in r.stderr, r.stderr
    r = run(embedrt_bin, "build", "--model", fixtures_dir / FIXTURE, "--device", "cpu", "-o", out)
    assert r.returncode == 1 and "plans are for GPUs" in r.stderr, r.stderr
    if not has_cuda():
        r = run(embedrt_bin, "build", "--model", fixtures_dir / FIXTURE, "-o", out)
        assert r.returncode == 1 and "CUDA is not usable" in r.stderr, r.stderr
    assert not out.exists()


def test_8bit_gemm_options_are_checked_before_any_gpu_work(embedrt_bin, fixtures_dir, tmp_path):
    out = tmp_path / "x.plan"
    model = fixtures_dir / FIXTURE
    for extra in (["--quant-gemm-output", "fp16"], ["--tune-8bit"]):
        r = run(embedrt_bin, "build", "--model", model, "--precision", "fp16", *extra, "-o", out)
        assert r.returncode == 1, r.stderr
        assert "--quant-gemm-output and --tune-8bit are for --precision int8 or fp8" in r.stderr
        assert r.stderr.strip().count("\n") == 0, r.stderr
    r = run(embedrt_bin, "build", "--model", model, "--precision", "fp8",
            "--quant-gemm-output", "fp32", "-o", out)
    assert r.returncode == 1 and "expected one of acc32, fp16, fp16-fast" in r.stderr, r.stderr
    assert not out.exists()


def run_env(binary, *args, env, stdin=""):
    """`run` with the plan cache variables set as `env` says (None: unset)."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("EMBEDRT_PLAN_CACHE", "XDG_CACHE_HOME", "HOME")}
    full.update({k: str(v) for k, v in env.items() if v is not None})
    return subprocess.run([str(binary), *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=120, env=full, check=False)


@pytest.mark.skipif(has_cuda(), reason="this machine has the CUDA driver")
def test_without_a_gpu_nothing_is_cached_and_the_notes_are_as_before(embedrt_bin, fixtures_dir,
                                                                      tmp_path):
    cache = tmp_path / "plans"
    model = fixtures_dir / FIXTURE
    r = run_env(embedrt_bin, "embed", "--model", model, "--device", "cuda",
                env={"EMBEDRT_PLAN_CACHE": cache}, stdin=TEXTS)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: --device cuda"), \
        r.stderr
    assert "CUDA is not usable" in lines[0]
    # auto: the one CPU-fallback note, no plan note, and still nothing cached.
    r = run_env(embedrt_bin, "embed", "--model", model, env={"EMBEDRT_PLAN_CACHE": cache},
                stdin=TEXTS)
    notes = [l for l in r.stderr.splitlines() if l.startswith("note: ")]
    assert r.returncode == 0 and len(notes) == 1, r.stderr
    assert notes[0].startswith("note: --device auto: no usable GPU") and "--plan" not in notes[0]
    assert not cache.exists()


def test_info_without_a_plan_lists_the_plan_cache(embedrt_bin, plan, tmp_path):
    cache = tmp_path / "xdg" / "embedrt" / "plans"
    cache.mkdir(parents=True)
    good = cache / "fp16-sm90-0123.plan"
    good.write_bytes(plan.read_bytes())
    bad = cache / "fp16-sm90-4567.plan"
    bad.write_bytes(plan.read_bytes()[:1000])
    (cache / "README").write_text("not a plan, not listed")
    # $XDG_CACHE_HOME/embedrt/plans when EMBEDRT_PLAN_CACHE is unset.
    env = {"XDG_CACHE_HOME": tmp_path / "xdg", "HOME": tmp_path / "home"}
    r = run_env(embedrt_bin, "info", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"plan cache      {cache} (2 plans)", r.stdout
    assert str(good) in lines[1] and "fp16 mpnet 1x8:16x64:64x128 for test GPU sm_90" in lines[1]
    assert str(bad) in lines[2] and "truncated" in lines[2] and "rebuilt on next use" in lines[2]
    listed = json.loads(run_env(embedrt_bin, "info", "--json", env=env).stdout)
    assert listed["plan_cache"] == str(cache)
    assert [p["path"] for p in listed["plans"]] == [str(good), str(bad)]
    assert listed["plans"][0]["bytes"] == good.stat().st_size
    # ~/.cache/embedrt/plans without XDG (empty: not there yet), and off.
    r = run_env(embedrt_bin, "info", env={"HOME": tmp_path / "home"})
    assert r.stdout.strip() == f"plan cache      {tmp_path}/home/.cache/embedrt/plans (0 plans)"
    r = run_env(embedrt_bin, "info", env={"EMBEDRT_PLAN_CACHE": "off", **env})
    assert r.returncode == 0 and r.stdout.startswith("plan cache      off"), r.stdout
