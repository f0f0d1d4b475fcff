"""The embedded CUDA kernels compile with NVRTC 13.0 (what the GPU machines run) for every
architecture the engine supports, in both precisions and for the model sizes we ship, and every
kernel the engine looks up is there. Runs without a GPU: NVRTC comes from the PyPI wheel
nvidia-cuda-nvrtc. This is what catches a broken kernel before a device run does."""
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA = os.path.join(ROOT, "crates", "cuda")
sys.path.insert(0, os.path.join(ROOT, "bench", "gpu"))
import nvrtc_check  # the NVRTC loader and compile call, shared with the dev tool


def nvrtc():
    try:
        return nvrtc_check.load_nvrtc()
    except ImportError:
        pytest.fail("nvidia-cuda-nvrtc is not installed: run scripts/setup-test-env.sh")


def source():
    """The kernel files in the order kernels.rs concatenates them."""
    with open(os.path.join(CUDA, "src", "kernels.rs")) as f:
        rs = f.read()
    files = re.findall(r'include_str!\("\.\./kernels/([a-z_0-9]+\.cu)"\)', rs)
    assert files, "kernels.rs no longer include_str!s its kernel files"
    return "".join(open(os.path.join(CUDA, "kernels", f)).read() for f in files)


def looked_up():
    """Kernel names engine.rs asks the module for."""
    with open(os.path.join(CUDA, "src", "engine.rs")) as f:
        rs = f.read()
    names = set(re.findall(r'func\(gpu\.module, "([a-z_0-9]+)"\)', rs))
    names |= set(re.findall(r'"(small_linear_m\d+)"', rs))
    names |= set(re.findall(r'"(attention_tc\d*)"', rs))
    assert {"embed_layernorm", "layernorm", "gelu", "attention", "pool"} | TC_ATTENTION <= names
    return names


# The tensor-core attention and its occupancy variants (EMBEDRT_ATTENTION=tc2 / tc4).
TC_ATTENTION = {"attention_tc", "attention_tc2", "attention_tc4"}

# (hidden, head_dim): all-MiniLM-L6-v2, MPNet-base / BERT-base, BGE-large, the tiny fixtures.
SIZES = [(384, 32), (768, 64), (1024, 64), (32, 8)]
# compute_90a: Hopper's arch-specific target, which the engine uses on compute capability 9.0.
ARCHS = ["compute_75", "compute_80", "compute_86", "compute_89", "compute_90a"]


def test_every_kernel_compiles_and_is_present_where_the_engine_uses_it():
    lib, src, names = nvrtc(), source(), looked_up()
    jobs = [(arch, fp16, h, d) for arch in ARCHS for fp16 in (1, 0) for h, d in SIZES]

    def one(job):
        arch, fp16, h, d = job
        rc, log, ptx = nvrtc_check.compile(lib, src, arch, [f"EMBEDRT_FP16={fp16}", f"HIDDEN={h}", f"HEAD_DIM={d}"])
        return job, rc, log, set(re.findall(r"\.entry\s+([A-Za-z_0-9]+)", ptx))

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, jobs))
    for (arch, fp16, h, d), rc, log, entries in results:
        where = f"{arch} fp16={fp16} hidden={h} head_dim={d}"
        assert rc == 0, f"{where}: NVRTC failed:\n{log}"
        always = {"embed_layernorm", "layernorm", "gelu", "attention", "pool"}
        assert always <= entries, f"{where}: missing {always - entries}"
        tensor_cores = fp16 == 1 and arch != "compute_75"
        small = {n for n in names if n.startswith("small_linear_")}
        if tensor_cores:
            assert small <= entries, f"{where}: missing {small - entries}"
            present = TC_ATTENTION & entries
            assert present == (TC_ATTENTION if d % 16 == 0 else set()), f"{where}: tensor-core attention presence"
        else:
            assert not (small | TC_ATTENTION) & entries, f"{where}: tensor-core kernels built"
        hopper = fp16 == 1 and arch == "compute_90a"
        assert ("ffn_in_gelu_sm90" in entries) == hopper, f"{where}: ffn_in_gelu_sm90 presence"


def test_hopper_cubin_has_no_register_spills_in_the_hot_kernels():
    """ptxas for sm_90a with MPNet-base sizes: the GELU, LayerNorm, pooling, small-token,
    FFN-in GEMM and occupancy-variant attention kernels keep everything in registers (a spill
    there would cost bandwidth on every call)."""
    lib, src = nvrtc(), source()
    rc, log, _ = nvrtc_check.compile(lib, src, "sm_90a", ["EMBEDRT_FP16=1", "HIDDEN=768", "HEAD_DIM=64"],
                                     ptxas_report=True)
    assert rc == 0, log
    report = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and current:
            report[current] = int(m.group(1))
    hot = ["gelu", "layernorm", "embed_layernorm", "pool", "ffn_in_gelu_sm90", "attention_tc2", "attention_tc4"]
    hot += [f"small_linear_m{m}" for m in (16, 32, 48, 64)]
    for k in hot:
        assert k in report, f"no ptxas report for {k}"
        assert report[k] == 0, f"{k} spills {report[k]} bytes"
    # The occupancy variants exist for their register count: at most 80 a thread is 3 blocks
    # of 8 warps (attention_tc2) or 6 of 4 (attention_tc4) an SM, 24 warps, where attention_tc
    # (128) fits 16.
    regs = {}
    for line in log.splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = m.group(1)
        m = re.search(r"Used (\d+) registers", line)
        if m:
            regs[current] = int(m.group(1))
    for k in ("attention_tc2", "attention_tc4"):
        assert regs.get(k, 999) <= 80, f"{k} uses {regs.get(k)} registers (more than 80: fewer blocks an SM)"


def quant_looked_up():
    """Kernel names the quantized encoder (engine/quantized.rs) asks the module for."""
    with open(os.path.join(CUDA, "src", "engine", "quantized.rs")) as f:
        names = set(re.findall(r'func\("([a-z_0-9]+)"\)', f.read()))
    assert {"embed_layernorm_q", "layernorm_q", "gelu_q", "epilogue_bias", "epilogue_ln"} <= names
    return names


# Quantized plans: int8 on every supported GPU, fp8 (e4m3) from Ada (sm_89) on.
QUANT_ARCHS = {1: ["compute_75", "compute_80", "compute_86", "compute_89", "compute_90a"],
               2: ["compute_89", "compute_90a"]}
QUANT_SIZES = [(384, 32), (768, 64)]


def test_quantized_kernels_compile_for_every_gpu_that_runs_them():
    """EMBEDRT_QUANT=1 (int8) / 2 (fp8) programs: every kernel the quantized encoder looks up is
    there next to the float kernels it reuses (attention with its quantized output, pooling)."""
    lib, src, names = nvrtc(), source(), quant_looked_up()
    jobs = [(q, arch, h, d) for q, archs in QUANT_ARCHS.items() for arch in archs for h, d in QUANT_SIZES]

    def one(job):
        q, arch, h, d = job
        defines = ["EMBEDRT_FP16=1", f"HIDDEN={h}", f"HEAD_DIM={d}", f"EMBEDRT_QUANT={q}"]
        rc, log, ptx = nvrtc_check.compile(lib, src, arch, defines)
        return job, rc, log, set(re.findall(r"\.entry\s+([A-Za-z_0-9]+)", ptx)), ptx

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, jobs))
    for (q, arch, h, d), rc, log, entries, ptx in results:
        where = f"{arch} quant={q} hidden={h} head_dim={d}"
        assert rc == 0, f"{where}: NVRTC failed:\n{log}"
        wanted = names | {"attention", "pool", "gelu"}
        assert wanted <= entries, f"{where}: missing {wanted - entries}"
        if q == 2:
            # The e4m3 conversion is the hardware's (round to nearest even, saturating).
            assert "cvt.rn.satfinite.e4m3x2.f32" in ptx, where


def test_fp8_kernels_are_refused_below_ada_with_a_clear_error():
    lib, src = nvrtc(), source()
    rc, log, _ = nvrtc_check.compile(lib, src, "compute_86", ["EMBEDRT_FP16=1", "HIDDEN=384", "HEAD_DIM=32",
                                                              "EMBEDRT_QUANT=2"])
    assert rc != 0
    assert "fp8 (e4m3) plans need compute capability 8.9 or newer" in log, log


# (arch, quant) cubins checked for spills: int8 on Turing, Ampere (A100, A10G) and Hopper,
# fp8 on Ada and Hopper.
QUANT_CUBINS = [("sm_75", 1), ("sm_80", 1), ("sm_86", 1), ("sm_89", 2), ("sm_90a", 2)]


def spill_report(log):
    report, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            report[current] = int(m.group(1)) + int(m.group(2))
    return report


@pytest.mark.parametrize("arch,quant", QUANT_CUBINS)
def test_quantized_hot_kernels_have_no_register_spills(arch, quant):
    """ptxas with MPNet-base sizes: the epilogues, the quantizing LayerNorms and GELU keep
    everything in registers on each GPU generation that runs them."""
    lib, src = nvrtc(), source()
    defines = ["EMBEDRT_FP16=1", "HIDDEN=768", "HEAD_DIM=64", f"EMBEDRT_QUANT={quant}"]
    rc, log, _ = nvrtc_check.compile(lib, src, arch, defines, ptxas_report=True)
    assert rc == 0, log
    report = spill_report(log)
    for k in sorted(quant_looked_up()):
        assert k in report, f"{arch}: no ptxas report for {k}"
        assert report[k] == 0, f"{arch}: {k} spills {report[k]} bytes"
