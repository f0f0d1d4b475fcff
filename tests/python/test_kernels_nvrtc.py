"""The embedded CUDA kernels compile with NVRTC 13.0 (what the GPU machines run) for every
architecture the engine supports, in both precisions and for the model sizes we ship; every
kernel the engine looks up is in the one kernel table (kernels.rs) and in the program where the
table says. Runs without a GPU: NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc. This is what catches a broken kernel before a device run does."""
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


def read(*parts):
    with open(os.path.join(CUDA, *parts)) as f:
        return f.read()


def source():
    """The kernel files in the order kernels.rs concatenates them."""
    rs = read("src", "kernels.rs")
    m = re.search(r"pub const ENCODER_SOURCE: &str = concat!\((.*?)\);", rs, re.DOTALL)
    assert m, "kernels.rs no longer defines ENCODER_SOURCE as a concat!"
    files = re.findall(r'include_str!\("\.\./kernels/([a-z_0-9]+\.cu)"\)', m.group(1))
    assert files, "kernels.rs no longer include_str!s its kernel files"
    return "".join(read("kernels", f) for f in files)


def kernel_table():
    """The one list of kernels (kernels.rs, between `// BEGIN KERNELS` and `// END KERNELS`):
    {name: (source file, when built)}."""
    rs = read("src", "kernels.rs")
    m = re.search(r"// BEGIN KERNELS\n(.*?)// END KERNELS", rs, re.DOTALL)
    assert m, "kernels.rs lost its BEGIN/END KERNELS markers"
    rows = re.findall(r'^\s*([A-Z]\w*) = "([a-z_0-9]+)" in "([a-z_0-9]+\.cu)" when (\w+),$', m.group(1), re.MULTILINE)
    lines = [line for line in m.group(1).splitlines() if line.strip() and not line.strip().startswith("//")]
    assert len(rows) == len(lines), f"unparsed kernel table lines: {lines}"
    table = {name: (file, built) for _, name, file, built in rows}
    assert len(table) == len(rows), "a kernel name is listed twice"
    assert {"embed_layernorm", "layernorm", "gelu", "attention", "pool", "attention_tc"} <= set(table)
    return table


def engine_sources():
    """Every host source of the engine: crates/cuda/src/**/*.rs."""
    for root, _, files in os.walk(os.path.join(CUDA, "src")):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(root, f)
                with open(path) as fh:
                    yield os.path.relpath(path, CUDA), fh.read()


def test_the_engine_looks_kernels_up_only_from_the_table():
    """Lookups go through `kernels::function(module, Kernel::X)`; X is a table entry (else the
    crate does not compile). A name still passed as a string (quantized.rs's `func("...")`) must
    be in the table too, and no other file calls the driver's get_function."""
    table = kernel_table()
    ids = set(re.findall(r"^\s*([A-Z]\w*) = ", read("src", "kernels.rs"), re.MULTILINE))
    used = set()
    for path, text in engine_sources():
        used |= set(re.findall(r"Kernel::([A-Z]\w*)", text))
        for name in re.findall(r'func\(\s*(?:[\w.]+,\s*)?"([a-z_0-9]+)"\s*\)', text):
            assert name in table, f"{path} looks up {name}, which the kernel table lacks"
        if re.search(r"\bget_function\s*\(", text):
            assert path in ("src/kernels.rs", "src/engine/quantized.rs"), f"{path} looks kernels up itself"
    assert used, "the engine no longer names kernels by Kernel::"
    assert used <= ids | {"ALL"}, f"unknown kernel ids {used - ids - {'ALL'}}"


def test_every_listed_kernel_is_defined_in_its_file():
    for name, (file, _) in kernel_table().items():
        assert re.search(rf"\b{name}\s*[(,]", read("kernels", file)), f"{name} is not defined in {file}"


def built(when, arch, fp16, head_dim, quant):
    """Whether a kernel listed `when` is in a program for (arch, precision, head size, quant)."""
    sm80 = arch != "compute_75"
    return {
        "Always": True,
        "Fp16Sm80": fp16 == 1 and sm80,
        "Fp16Sm80Head16": fp16 == 1 and sm80 and head_dim % 16 == 0,
        "Fp16Sm90a": fp16 == 1 and arch == "compute_90a",
        "Fp16Sm90aHead64": fp16 == 1 and arch == "compute_90a" and head_dim == 64,
        "Quant": quant != 0,
        "QuantSm80": quant != 0 and sm80,
        "QuantSm80Head16": quant != 0 and sm80 and head_dim % 16 == 0,
        "Fp8Head16": quant == 2 and head_dim % 16 == 0,
    }[when]


# The tensor-core attention and its occupancy variants (EMBEDRT_ATTENTION=tc2 / tc4).
TC_ATTENTION = {"attention_tc", "attention_tc2", "attention_tc4"}

# (hidden, head_dim): all-MiniLM-L6-v2, MPNet-base / BERT-base, BGE-large, the tiny fixtures.
SIZES = [(384, 32), (768, 64), (1024, 64), (32, 8)]
# compute_90a: Hopper's arch-specific target, which the engine uses on compute capability 9.0.
ARCHS = ["compute_75", "compute_80", "compute_86", "compute_89", "compute_90a"]


def test_every_kernel_compiles_and_is_present_where_the_engine_uses_it():
    """Each listed kernel is in the program exactly where its `when` says (present where the
    engine may look it up, absent where the `#if` guards keep it out)."""
    lib, src, table = nvrtc(), source(), kernel_table()
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
        for name, (_, when) in table.items():
            want = built(when, arch, fp16, d, 0)
            assert (name in entries) == want, f"{where}: {name} ({when}) {'missing' if want else 'built'}"


def test_hopper_cubin_has_no_register_spills_in_the_hot_kernels():
    """ptxas for sm_90a with MPNet-base sizes: the GELU, LayerNorm, pooling, small-token,
    FFN-in GEMM, occupancy-variant and pipelined attention kernels keep everything in registers (a spill
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
    hot = ["gelu", "layernorm", "embed_layernorm", "pool", "attention_tc2", "attention_tc4"]
    hot += ["attention_tc_pipe", "attention_wg", "attention_wg_q", "attention_wg_qo"]
    hot += ["ffn_in_gelu_sm90", "ffn_in_gelu_sm90_c2", "ffn_in_gelu_sm90_c4"]
    hot += [f"small_linear_m{m}" for m in (16, 32, 48, 64)] + ["small_attn_out_m16"]
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
    """The quantized encoder's own kernels: the table's `when Quant` entries."""
    names = {n for n, (_, when) in kernel_table().items() if when == "Quant"}
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
        wanted = names | {n for n, (_, when) in kernel_table().items() if built(when, arch, 1, d, q)}
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
    small_q = {n for n, (_, when) in kernel_table().items()
               if when in ("QuantSm80", "QuantSm80Head16") and arch != "sm_75"}
    for k in sorted(quant_looked_up() | small_q):
        assert k in report, f"{arch}: no ptxas report for {k}"
        assert report[k] == 0, f"{arch}: {k} spills {report[k]} bytes"
