"""Compiles the embedded CUDA kernels with NVRTC on a machine without a GPU and prints the
ptxas resource report (registers, shared memory, spills) for each kernel.

usage: [NVRTC=/path/to/libnvrtc.so.13] nvrtc_check.py ARCH DEFINE=V ... -- FILE.cu [FILE.cu ...]
NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc (same version as the device's, 13.0), found
through the running Python (e.g. .venv/bin/python) unless NVRTC names the library.
The files are concatenated in order, as crates/cuda/src/kernels.rs does.
"""
import ctypes
import os
import sys

args = sys.argv[1:]
sep = args.index("--")
arch, defines, files = args[0], args[1:sep], args[sep + 1:]
path = os.environ.get("NVRTC")
if not path:
    import nvidia.cu13  # the wheel's namespace package

    path = os.path.join(list(nvidia.cu13.__path__)[0], "lib", "libnvrtc.so.13")
# libnvrtc dlopens its builtins by soname: load them first, globally.
ctypes.CDLL(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
lib = ctypes.CDLL(path)
src = "".join(open(f).read() for f in files).encode()
prog = ctypes.c_void_p()
r = lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"encoder.cu", 0, None, None)
assert r == 0, r
opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"--ptxas-options=--verbose"]
opts += [f"-D{d}".encode() for d in defines]
arr = (ctypes.c_char_p * len(opts))(*opts)
r = lib.nvrtcCompileProgram(prog, len(opts), arr)
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, log)
print(log.value.decode(errors="replace"))
print("compile", "OK" if r == 0 else f"FAILED ({r})")
sys.exit(0 if r == 0 else 1)
