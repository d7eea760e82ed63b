"""Training throughput with 1 process vs N DDP processes (torchrun, gloo), side by side.

Each configuration runs the real CLI (`prokt-deploy distill`) on the same recipe, alternating
1-process and N-process runs for ``--repeats`` rounds; the training time (manifest
``timings.train_s``) is compared by median. On a 2-core machine the 1-process run uses 2 torch
threads and each DDP rank 1 thread (same cores in total).

    python benchmarks/ddp_speedup.py --recipe recipes/fashion-mnist.yaml --max-train-samples 6000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(recipe: str, nproc: int, epochs: int, samples: int, threads: int, method: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "prokt_deploy",
            "distill",
            "--recipe",
            recipe,
            "--epochs",
            str(epochs),
            "--method",
            method,
            "--max-train-samples",
            str(samples),
            "--out",
            str(out),
            "--json",
        ]
        if nproc > 1:
            cmd += ["--nproc-per-node", str(nproc)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({nproc} proc): {proc.stderr[-2000:]}")
        return json.loads((out / "manifest.json").read_text())["timings"]["train_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "fashion-mnist.yaml"))
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-train-samples", type=int, default=6000)
    ap.add_argument("--method", default="prokt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddp_speedup.json"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    times: dict[int, list[float]] = {1: [], args.nproc: []}
    for _ in range(args.repeats):
        times[1].append(run(args.recipe, 1, args.epochs, args.max_train_samples, cores, args.method))
        times[args.nproc].append(run(args.recipe, args.nproc, args.epochs, args.max_train_samples, max(1, cores // args.nproc), args.method))
    med = {k: statistics.median(v) for k, v in times.items()}
    samples = args.epochs * args.max_train_samples
    result = {
        "recipe": Path(args.recipe).name,
        "method": args.method,
        "epochs": args.epochs,
        "train_samples": args.max_train_samples,
        "cores": cores,
        "train_seconds": {str(k): v for k, v in times.items()},
        "samples_per_s_median": {str(k): round(samples / v, 1) for k, v in med.items()},
        "speedup": round(med[1] / med[args.nproc], 3),
    }
    print(f"{'processes':<10}{'train s (median)':>18}{'samples/s':>12}")
    for k in (1, args.nproc):
        print(f"{k:<10}{med[k]:>18.2f}{samples / med[k]:>12.1f}")
    print(f"speed-up of {args.nproc} DDP processes over 1: {result['speedup']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
