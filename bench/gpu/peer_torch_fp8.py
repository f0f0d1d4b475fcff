"""PyTorch's fp8 path as the quantized peer: peer_torch.py (same model, workloads and timing)
with every encoder nn.Linear replaced by a dynamic fp8 linear, as torchao's float8 dynamic
row-wise recipe does when torchao is not installed: the weight quantized once to e4m3 with one
scale per output row, the activation per token at run time (amax / 448), torch._scaled_mm with
row-wise scales, fp16 out, bias fused. Prints peer_torch.py's JSON lines, relabelled.

usage: peer_torch_fp8.py MODEL_DIR STS_CSV
"""
import os
import sys

import torch

E4M3 = torch.float8_e4m3fn
FMAX = torch.finfo(E4M3).max


class Fp8Linear(torch.nn.Module):
    def __init__(self, lin):
        super().__init__()
        w = lin.weight.detach().float()
        s = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FMAX
        self.w = (w / s).to(E4M3)  # [out, in]
        self.w_scale = s.t().contiguous()  # [1, out]
        self.bias = None if lin.bias is None else lin.bias.detach().half()

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        sx = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FMAX  # [tokens, 1]
        xq = (x2.float() / sx).to(E4M3)
        y = torch._scaled_mm(xq, self.w.t(), scale_a=sx, scale_b=self.w_scale,
                             bias=self.bias, out_dtype=torch.float16)
        return y.reshape(*shape[:-1], y.shape[-1])


def convert(model):
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, torch.nn.Linear) and "encoder" in f"{name}.{child_name}":
                setattr(m, child_name, Fp8Linear(child))
    return model


here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "peer_torch.py")) as f:
    src = f.read()
anchor = ".half().to(dev).eval()"
assert anchor in src, "peer_torch.py changed: update peer_torch_fp8.py"
src = src.replace(anchor, anchor + "\nmodel = convert(model)", 1)
src = src.replace("fp16 eager", "fp8 dynamic row-wise (torch._scaled_mm) eager", 1)
sys.argv = [os.path.join(here, "peer_torch.py")] + sys.argv[1:]
# peer_torch.py itself, with the one line above added: the two peers cannot drift apart.
exec(compile(src, "peer_torch.py+fp8", "exec"), {"__name__": "__main__", "convert": convert})  # noqa: S102 -- deliberate: runs peer_torch.py's own source
