#!/usr/bin/env bash
# Print the GPU machine facts the CUDA engine needs (driver, toolkit, library paths, python packages).
echo "== date"; date -u
echo "== uname"; uname -a; head -4 /etc/os-release; nproc; free -g | head -2
echo "== nvidia-smi"; nvidia-smi
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm --format=csv
echo "== nvcc"; which nvcc; nvcc --version
echo "== env"; echo "CUDA_HOME=$CUDA_HOME"; echo "CUDA_PATH=$CUDA_PATH"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; echo "PATH=$PATH"
ls -la /usr/local | head -30; ls -la /usr/local/cuda* 2>/dev/null | head -20
echo "== libs (find)"
timeout 120 find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o \
  \( -name 'libcublasLt.so*' -o -name 'libcublas.so*' -o -name 'libnvrtc*.so*' -o -name 'libcuda.so*' -o -name 'libcudart.so*' \) -print 2>/dev/null \
  | sort | head -60 | xargs -r ls -la
echo "== ldconfig"; ldconfig -p | grep -E 'libcuda\.|cublas|nvrtc|cudart' | head -20
echo "== python"
python3 - <<'PY'
import sys, importlib
print("python", sys.version.split()[0], sys.executable)
for m in ["torch", "transformers", "sentence_transformers", "tokenizers", "safetensors", "onnxruntime", "onnx", "numpy"]:
    try:
        mod = importlib.import_module(m); print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "NOT AVAILABLE", e)
import torch
print("torch.version.cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "cc", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count, "mem GiB", round(p.total_memory / 2**30, 1))
try:
    import onnxruntime as ort; print("ort providers", ort.get_available_providers())
except Exception as e:
    print("ort", e)
PY
