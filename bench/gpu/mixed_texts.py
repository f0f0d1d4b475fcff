"""96 texts of 1..~500 words (the tokenizer makes >= as many tokens; plans truncate at 512),
so every attention and small-token path runs: one to eight warps a block, partial key tiles,
several query blocks a sequence. Written as JSON lines to the path given.

usage: mixed_texts.py OUT.jsonl
"""
import json
import random
import sys

LENGTHS = [1, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 100, 127, 128, 129, 200, 255, 300, 383, 450, 500]

r = random.Random(7)
words = ["the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at", "by", "an", "be", "this", "are", "from", "or", "have", "not"]
words += ["embedding", "sentence", "model", "attention", "tensor", "kernel", "vector", "search", "retrieval", "query"]
with open(sys.argv[1], "w") as f:
    for i in range(96):
        n = LENGTHS[i % len(LENGTHS)] + r.randrange(3)
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(n))}) + "\n")
