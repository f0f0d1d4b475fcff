"""Random-weight MPNet-base (the all-mpnet-base-v2 config) as a sentence-transformers dir.

usage: make_mpnet.py OUT_DIR TOKENIZER_JSON
The tokenizer is MiniLM's BERT-uncased WordPiece (the device has no network; MPNet's
vocabulary is the same WordPiece list plus 5 specials, so lengths match closely). Biases
and LayerNorm parameters get noise so that they are exercised, not zero/one.
"""
import json
import os
import shutil
import sys

import torch
from transformers import MPNetConfig, MPNetModel

out, tok = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
cfg = MPNetConfig(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, hidden_act="gelu", max_position_embeddings=514,
                  layer_norm_eps=1e-5, relative_attention_num_buckets=32, pad_token_id=1,
                  bos_token_id=0, eos_token_id=2)
torch.manual_seed(0)
model = MPNetModel(cfg, add_pooling_layer=False)
with torch.no_grad():
    for name, p in model.named_parameters():
        if "LayerNorm" in name or name.endswith(".bias"):
            p.add_(0.02 * torch.randn_like(p))
model.save_pretrained(out, safe_serialization=True)
shutil.copy(tok, os.path.join(out, "tokenizer.json"))
with open(os.path.join(out, "modules.json"), "w") as f:
    json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
              f)
with open(os.path.join(out, "1_Pooling/config.json"), "w") as f:
    json.dump({"word_embedding_dimension": 768, "pooling_mode_mean_tokens": True}, f)
with open(os.path.join(out, "sentence_bert_config.json"), "w") as f:
    json.dump({"max_seq_length": 512, "do_lower_case": False}, f)
print("made", out)
