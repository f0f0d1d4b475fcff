"""Whether this machine has the CUDA driver: tests of the no-GPU behaviour skip where it does."""
import ctypes


def has_cuda() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False
