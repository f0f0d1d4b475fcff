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
import nvrtc_check  # noqa: E402  (the NVRTC loader and compile call, shared with the dev tool)


def nvrtc():
    try:
        return nvrtc_check.load_nvrtc()
    except ImportError:
        pytest.fail("nvidia-cuda-nvrtc is not installed: run scripts/setup-test-env.sh")


def source():
    """The kernel files in the order kernels.rs concatenates them."""
    rs = open(os.path.join(CUDA, "src", "kernels.rs")).read()
    files = re.findall(r'include_str!\("\.\./kernels/([a-z_0-9]+\.cu)"\)', rs)
    assert files, "kernels.rs no longer include_str!s its kernel files"
    return "".join(open(os.path.join(CUDA, "kernels", f)).read() for f in files)


def looked_up():
    """Kernel names engine.rs asks the module for."""
    rs = open(os.path.join(CUDA, "src", "engine.rs")).read()
    names = set(re.findall(r'func\(gpu\.module, "([a-z_0-9]+)"\)', rs))
    names |= set(re.findall(r'"(small_linear_m\d+)"', rs))
    assert {"embed_layernorm", "layernorm", "gelu", "attention", "pool", "attention_tc"} <= names
    return names


# (hidden, head_dim): all-MiniLM-L6-v2, MPNet-base / BERT-base, BGE-large, the tiny fixtures.
SIZES = [(384, 32), (768, 64), (1024, 64), (32, 8)]
# compute_90a: Hopper's arch-specific target, which the engine uses on compute capability 9.0.
ARCHS = ["compute_75", "compute_80", "compute_90a"]


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
            assert ("attention_tc" in entries) == (d % 16 == 0), f"{where}: attention_tc presence"
        else:
            assert not (small | {"attention_tc"}) & entries, f"{where}: tensor-core kernels built"
        hopper = fp16 == 1 and arch == "compute_90a"
        assert ("ffn_in_gelu_sm90" in entries) == hopper, f"{where}: ffn_in_gelu_sm90 presence"


def test_hopper_cubin_has_no_register_spills_in_the_hot_kernels():
    """ptxas for sm_90a with MPNet-base sizes: the GELU, LayerNorm, pooling, small-token and
    FFN-in GEMM kernels keep everything in registers (a spill there would cost bandwidth on every call)."""
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
    hot = ["gelu", "layernorm", "embed_layernorm", "pool", "ffn_in_gelu_sm90"]
    hot += [f"small_linear_m{m}" for m in (16, 32, 48, 64)]
    for k in hot:
        assert k in report, f"no ptxas report for {k}"
        assert report[k] == 0, f"{k} spills {report[k]} bytes"
