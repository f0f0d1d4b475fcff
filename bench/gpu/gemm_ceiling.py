"""cuBLAS through PyTorch on MPNet-base's four linear shapes, as the ceiling our GEMM stages are
read against: fp16 torch.matmul and fp8 torch._scaled_mm (e4m3, row-wise scales, fp16 out), at
the token counts of W1's one call (32,768), W1's half (16,384) and W2's last call (4,161).
Each shape: one call after 0.5 s idle (a cool, boosted GPU) and the median of 50 back-to-back
calls (the sustained clock), in TFLOP/s. One JSON line per (precision, tokens, layer).

usage: gemm_ceiling.py
"""
import json
import time

import torch

SHAPES = {"qkv": (2304, 768), "attn_out": (768, 768), "ffn_in": (3072, 768), "ffn_out": (768, 3072)}
E4M3 = torch.float8_e4m3fn


def timed(f, n):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(n):
        start.record()
        f()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def gemm(precision, m, n, k, dev):
    """A closure running one (m x k) @ (k x n) product in `precision`, fp16 out."""
    a = torch.randn(m, k, device=dev, dtype=torch.float16)
    w = torch.randn(n, k, device=dev, dtype=torch.float16)
    if precision == "fp16":
        return lambda: torch.matmul(a, w.t())
    aq, wq = a.to(E4M3), w.to(E4M3)
    sa, sw = torch.ones(m, 1, device=dev), torch.ones(1, n, device=dev)
    return lambda: torch._scaled_mm(aq, wq.t(), scale_a=sa, scale_b=sw, out_dtype=torch.float16)


def main():
    dev = torch.device("cuda")
    for precision in ("fp16", "fp8"):
        for m in (32768, 16384, 4161):
            for layer, (n, k) in SHAPES.items():
                f = gemm(precision, m, n, k, dev)
                for _ in range(10):
                    f()
                torch.cuda.synchronize()
                time.sleep(0.5)
                cool = timed(f, 1)
                sustained = timed(f, 50)
                flop = 2.0 * m * n * k
                print(json.dumps({
                    "precision": precision, "tokens": m, "layer": layer,
                    "cool_ms": cool, "sustained_ms": sustained,
                    "cool_tflops": flop / cool / 1e9, "sustained_tflops": flop / sustained / 1e9,
                }), flush=True)


if __name__ == "__main__":
    main()
