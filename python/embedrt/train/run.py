"""The pipeline's training step: fine-tunes a sentence-transformers model with
sentence-transformers' own trainer.

Run by path (``python python/embedrt/train/run.py ...``), not as
``python -m embedrt.train``: importing the ``embedrt`` package may need the
native extension, and this step must run where only torch and
sentence-transformers are installed (a CPU box, a Ray worker, the GPU host).

Input: JSON lines, each either a scored pair ``{"sentence1", "sentence2",
"score"}`` (score already scaled to 0..1) trained with CoSENT, or a pair
``{"anchor", "positive"}`` trained with MultipleNegativesRanking (in-batch
negatives). Both kinds in one file train as two datasets, each with its own
loss. Output: the trained model directory and ``train.json`` (steps, loss,
seconds, why it stopped).

``--base``, ``--data`` and ``--out`` may be s3:// URIs (``remote.py``): a Ray
job on a cluster that cannot see the pipeline's disk downloads its inputs
and uploads ``OUT/model/`` and ``OUT/train.json`` when it is done.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

import remote


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--base",
        required=True,
        help="sentence-transformers model directory to start from",
    )
    p.add_argument("--data", required=True, help="training rows, JSON lines")
    p.add_argument("--out", required=True, help="directory for the trained model")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=600.0,
        help="training stops at this many seconds",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p.parse_args(argv)


def read_rows(path: pathlib.Path) -> tuple[list[dict], list[dict]]:
    scored, pairs = [], []
    for line_no, line in enumerate(
        path.read_text(encoding="utf-8").splitlines(), start=1
    ):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path}:{line_no}: not JSON ({e})") from None
        if {"sentence1", "sentence2", "score"} <= row.keys():
            scored.append(row)
        elif {"anchor", "positive"} <= row.keys():
            pairs.append(row)
        else:
            raise SystemExit(
                f"error: {path}:{line_no}: neither a scored pair nor an (anchor, positive) pair"
            )
    return scored, pairs


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Imported here so that --help works without torch.
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from transformers import TrainerCallback, set_seed

    class TimeBudget(TrainerCallback):
        """Stops training once the budget is spent (checked after each step)."""

        def __init__(self, seconds: float):
            self.seconds = seconds
            self.started = time.monotonic()
            self.hit = False

        def on_step_end(self, _args, state, control, **_kwargs):
            if time.monotonic() - self.started >= self.seconds:
                self.hit = True
                control.should_training_stop = True
            return control

    set_seed(args.seed)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="embedrt-train-"))
    base = args.base
    if remote.is_uri(base):
        base = str(remote.download(base.rstrip("/") + "/", scratch / "base"))
    data = pathlib.Path(args.data)
    if remote.is_uri(args.data):
        data = remote.download(args.data, scratch / "train.jsonl")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    scored, pairs = read_rows(data)
    if not scored and not pairs:
        print(f"error: {args.data}: no training rows", file=sys.stderr)
        return 1
    # Trained in fp32 whatever the stored dtype (the GPU carry holds fp16 weights).
    model = SentenceTransformer(base, device=device).float()
    datasets, loss_fns = {}, {}
    if scored:
        datasets["scored"] = Dataset.from_list(
            [
                {
                    "sentence1": r["sentence1"],
                    "sentence2": r["sentence2"],
                    "score": float(r["score"]),
                }
                for r in scored
            ]
        )
        loss_fns["scored"] = losses.CoSENTLoss(model)
    if pairs:
        datasets["pairs"] = Dataset.from_list(
            [{"anchor": r["anchor"], "positive": r["positive"]} for r in pairs]
        )
        loss_fns["pairs"] = losses.MultipleNegativesRankingLoss(model)
    one = len(datasets) == 1
    out = scratch / "out" if remote.is_uri(args.out) else pathlib.Path(args.out)
    budget = TimeBudget(args.time_budget_s)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio,
        seed=args.seed,
        data_seed=args.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, args.max_steps // 10),
        use_cpu=device == "cpu",
        dataloader_drop_last=False,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=next(iter(datasets.values())) if one else datasets,
        loss=next(iter(loss_fns.values())) if one else loss_fns,
        callbacks=[budget],
    )
    started = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - started
    model_dir = out / "model"
    model.save_pretrained(str(model_dir), safe_serialization=True)
    summary = {
        "steps": int(result.global_step),
        "training_loss": float(result.training_loss),
        "seconds": seconds,
        "stopped_by": "time_budget" if budget.hit else "max_steps",
        "device": device,
        "rows": {"scored": len(scored), "pairs": len(pairs)},
        "seed": args.seed,
        "model_dir": str(model_dir),
    }
    if remote.is_uri(args.out):
        summary["model_dir"] = args.out.rstrip("/") + "/model/"
    (out / "train.json").write_text(
        json.dumps(summary, indent=2) + "\n", encoding="utf-8"
    )
    if remote.is_uri(args.out):
        # model/ first, train.json last: the pipeline takes train.json as done.
        remote.upload_dir(model_dir, f"{args.out.rstrip('/')}/model/")
        remote.upload_file(out / "train.json", f"{args.out.rstrip('/')}/train.json")
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
