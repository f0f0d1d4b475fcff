"""Compiles the embedded CUDA kernels with NVRTC on a machine without a GPU and prints the
ptxas resource report (registers, shared memory, spills) for each kernel.

usage: [NVRTC=/path/to/libnvrtc.so.13] nvrtc_check.py ARCH DEFINE=V ... -- FILE.cu [FILE.cu ...]
NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc (same version as the device's, 13.0), found
through the running Python (e.g. .venv/bin/python) unless NVRTC names the library.
The files are concatenated in order, as crates/cuda/src/kernels.rs does.
tests/python/test_kernels_nvrtc.py imports load_nvrtc and compile from here.
"""
import ctypes
import os
import sys


def load_nvrtc():
    """libnvrtc from $NVRTC or the nvidia-cuda-nvrtc wheel (ImportError if neither)."""
    path = os.environ.get("NVRTC")
    if not path:
        import nvidia.cu13  # the wheel's namespace package

        path = os.path.join(next(iter(nvidia.cu13.__path__)), "lib", "libnvrtc.so.13")
    # libnvrtc dlopens its builtins by soname: load them first, globally.
    ctypes.CDLL(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(path)


def compile(lib, src, arch, defines, ptxas_report=False):
    """(return code, log, PTX) of compiling src for arch (sm_XY: CUBIN, compute_XY: PTX only)."""
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"encoder.cu", 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    opts += [b"--ptxas-options=--verbose"] if ptxas_report else []
    opts += [f"-D{d}".encode() for d in defines]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = b""
    if rc == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.value
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), ptx.decode(errors="replace")


if __name__ == "__main__":
    args = sys.argv[1:]
    sep = args.index("--")
    arch, defines, files = args[0], args[1:sep], args[sep + 1:]
    parts = []
    for f in files:
        with open(f) as fh:
            parts.append(fh.read())
    source = "".join(parts)
    rc, log, _ = compile(load_nvrtc(), source, arch, defines, ptxas_report=arch.startswith("sm_"))
    print(log)
    print("compile", "OK" if rc == 0 else f"FAILED ({rc})")
    sys.exit(0 if rc == 0 else 1)
