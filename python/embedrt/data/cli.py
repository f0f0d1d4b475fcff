"""`python -m embedrt.ray_data`: the RayJob entrypoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from embedrt.data.job import EmbedJobOptions, embed_dataset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m embedrt.ray_data",
        description="Embed a Parquet or JSON-lines dataset with Ray Data; writes Parquet with an `embedding` column.",
    )
    p.add_argument(
        "--input",
        required=True,
        help="Parquet file/directory or JSON-lines file (local, s3://, ...)",
    )
    p.add_argument("--output", required=True, help="output directory for Parquet files")
    p.add_argument("--model", help="model directory, Hugging Face id or URI")
    p.add_argument("--plan", help="GPU plan file or URI")
    p.add_argument("--device", default="auto")
    p.add_argument("--text-column", default="text")
    p.add_argument("--input-format", choices=["parquet", "json"])
    p.add_argument("--batch-size", type=int, default=256, help="rows per engine call")
    p.add_argument(
        "--concurrency", type=int, default=1, help="actors (engines) in the pool"
    )
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    p.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs per actor (1 on GPU nodes)"
    )
    p.add_argument(
        "--no-normalize",
        action="store_true",
        help="do not L2-normalize (default: as the model says)",
    )
    p.add_argument(
        "--address",
        help="Ray cluster address (default: RAY_ADDRESS or a local cluster)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    options = EmbedJobOptions(
        model=args.model,
        plan=args.plan,
        device=args.device,
        text_column=args.text_column,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        normalize=False if args.no_normalize else None,
        input_format=args.input_format,
    )
    try:
        ray.init(address=args.address, ignore_reinit_error=True, log_to_driver=False)
        out = embed_dataset(args.input, args.output, options)
        print(f"embedded {out.count()} rows into {args.output}")
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(
            f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            file=sys.stderr,
        )
        return 1
    return 0
