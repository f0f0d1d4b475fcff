"""Copies a sentence-transformers MiniLM directory with model.safetensors converted to fp16
(numpy only), so the model fits the device tool's 64 MiB carry limit.

usage: minilm_fp16.py SRC_DIR DST_DIR
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

src, dst = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(dst, "1_Pooling"), exist_ok=True)
for name in ["config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json"]:
    if os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
shutil.copy(os.path.join(src, "1_Pooling/config.json"), os.path.join(dst, "1_Pooling/config.json"))
with open(os.path.join(src, "model.safetensors"), "rb") as f:
    raw = f.read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
out, blobs, off = {}, [], 0
for name, t in header.items():
    if name == "__metadata__" or t["dtype"] != "F32":
        continue  # position_ids (I64) is not a weight
    s, e = t["data_offsets"]
    data = np.frombuffer(raw[8 + n + s:8 + n + e], dtype="<f4").astype("<f2").tobytes()
    out[name] = {"dtype": "F16", "shape": t["shape"], "data_offsets": [off, off + len(data)]}
    blobs.append(data)
    off += len(data)
hj = json.dumps(out).encode()
hj += b" " * ((8 - len(hj) % 8) % 8)
with open(os.path.join(dst, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
print("wrote", dst)
