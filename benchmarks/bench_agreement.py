"""Our latency measurement against OpenVINO's own benchmark_app, on the same files and settings.

For each artifact file (OpenVINO IR and ONNX, fp32 and int8) the p50 at batch 1 is measured

- by ``prokt_deploy.harness.measure`` (what ``prokt-deploy bench`` uses), with OpenVINO: the wall-clock time
  around one ``infer()`` call from Python, and OpenVINO's own per-call timer read in the same loop;
  ONNX files also with onnxruntime, for reference (a different runtime: not part of the agreement);
- by ``benchmark_app`` (ships with the openvino package) on the same file: ``-d CPU -hint latency
  -api sync -inference_only true -data_shape [1,C,H,W]`` and, through ``-load_config``, the exact
  properties our engine sets: INFERENCE_NUM_THREADS=1, NUM_STREAMS=1, PERFORMANCE_HINT=LATENCY,
  INFERENCE_PRECISION_HINT=f32. Its reported median is OpenVINO's per-call timer.

Rounds alternate our measurement and benchmark_app's; the median over rounds is reported. The models
are untrained (latency does not depend on the weights' values; int8 is calibrated on random data):
the digits student (cnn-w8-d1 on 8x8), the Fashion-MNIST student (resnet-w8-d1 on 28x28) and teacher
(resnet-w24-d1 on 28x28), from tens of microseconds to milliseconds per call.

    python benchmarks/bench_agreement.py                 # writes benchmarks/results/bench_agreement.json
    python benchmarks/bench_agreement.py --rounds 5 --runs 500
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import exporters
from prokt_deploy.harness import measure
from prokt_deploy.harness.fingerprint import fingerprint
from prokt_deploy.models import count_params, create_model

ROOT = Path(__file__).resolve().parent.parent
MODELS = [("cnn-w8-d1", (1, 8, 8)), ("resnet-w8-d1", (1, 28, 28)), ("resnet-w24-d1", (1, 28, 28))]
BENCHMARK_APP_CONFIG = {"CPU": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "1", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}}


def export_artifacts(arch: str, shape: tuple[int, int, int], out: Path) -> list[tuple[str, str, Path]]:
    """(format, precision, main file) of fp32 and int8 ONNX and OpenVINO exports of an untrained model."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=shape[0], image_size=shape[1:]).eval()
    calibration = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
    example = torch.from_numpy(calibration[:2])
    files = []
    for fmt in ("onnx", "openvino"):
        for precision in ("fp32", "int8"):
            art = exporters.export(
                model,
                fmt,
                precision,
                out / f"{arch}-{fmt}-{precision}",
                example_input=example,
                calibration=calibration if precision == "int8" else None,
            )
            files.append((fmt, precision, next(f for f in art.files if f.suffix in (".onnx", ".xml"))))
    return files


def benchmark_app_p50_ms(path: Path, shape: tuple[int, int, int], runs: int, config: Path) -> float:
    """benchmark_app's median latency (its 'Median:' line) for ``path`` at batch 1."""
    with tempfile.TemporaryDirectory() as report:
        cmd = [
            str(Path(sys.executable).with_name("benchmark_app")),
            "-m",
            str(path),
            "-d",
            "CPU",
            "-hint",
            "latency",
            "-load_config",
            str(config),
            "-api",
            "sync",
            "-inference_only",
            "true",
            "-niter",
            str(runs),
            "-data_shape",
            f"[1,{','.join(map(str, shape))}]",
            "-report_type",
            "no_counters",
            "-report_folder",
            report,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    match = re.search(r"Median:\s+([\d.]+)\s*(us|ms)", proc.stdout)
    if proc.returncode != 0 or not match:
        raise SystemExit(f"benchmark_app failed on {path}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "us" else value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (ours, then benchmark_app)")
    ap.add_argument("--runs", type=int, default=500, help="timed calls per round, for both")
    ap.add_argument("--warmup", type=int, default=50, help="our warm-up calls per round (benchmark_app does its own first inference)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_agreement.json"))
    args = ap.parse_args()

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp_str:
        tmp = Path(tmp_str)
        config = tmp / "benchmark_app_config.json"
        config.write_text(json.dumps(BENCHMARK_APP_CONFIG))
        for arch, shape in MODELS:
            print(f"exporting {arch} {shape}", file=sys.stderr)
            files = export_artifacts(arch, shape, tmp)
            data = tmp / f"{arch}.npz"
            np.savez(data, x=np.random.default_rng(1).standard_normal((8, *shape)).astype(np.float32), y=np.zeros(8, dtype=np.int64))
            engines = [{"id": f"{fmt}-{precision}-openvino", "runtime": "openvino", "path": str(f), "device": "CPU"} for fmt, precision, f in files]
            engines += [
                {"id": f"{fmt}-{precision}-onnxruntime", "runtime": "onnxruntime", "path": str(f), "providers": ["CPUExecutionProvider"]}
                for fmt, precision, f in files
                if fmt == "onnx"
            ]
            ours: dict[str, list[dict]] = {e["id"]: [] for e in engines}
            theirs: dict[str, list[float]] = {f"{fmt}-{precision}": [] for fmt, precision, _ in files}
            for r in range(args.rounds):
                print(f"  round {r + 1}/{args.rounds}", file=sys.stderr)
                for e, res in zip(engines, measure.measure(engines, data, threads=1, batch=1, runs=args.runs, warmup=args.warmup, repeats=1)):
                    ours[e["id"]].append(res)
                for fmt, precision, f in files:
                    theirs[f"{fmt}-{precision}"].append(benchmark_app_p50_ms(f, shape, args.runs, config))
            params = count_params(create_model(arch, num_classes=10, in_channels=shape[0], image_size=shape[1:]))
            for fmt, precision, f in files:
                key = f"{fmt}-{precision}"
                ov = ours[f"{key}-openvino"]
                wall = statistics.median(r["latency_ms"]["p50"] for r in ov)
                timer = statistics.median(r["runtime_latency_ms"]["p50"] for r in ov)
                app = statistics.median(theirs[key])
                ort = statistics.median(r["latency_ms"]["p50"] for r in ours[f"{key}-onnxruntime"]) if fmt == "onnx" else None
                size = sum(p.stat().st_size for p in (f, f.with_suffix(".bin")) if p.exists())
                rows.append(
                    {
                        "model": arch,
                        "params": params,
                        "input": [1, *shape],
                        "file": f"{fmt} {precision} ({f.name})",
                        "bytes": size,
                        "benchmark_app_p50_ms": round(app, 5),
                        "ours_openvino_timer_p50_ms": round(timer, 5),
                        "ours_wall_p50_ms": round(wall, 5),
                        "ratio_timer": round(timer / app, 3),
                        "ratio_wall": round(wall / app, 3),
                        "python_call_overhead_ms": round(wall - timer, 5),
                        "ours_onnxruntime_p50_ms": round(ort, 5) if ort is not None else None,
                        "rounds": {
                            "benchmark_app_p50_ms": theirs[key],
                            "ours_wall_p50_ms": [r["latency_ms"]["p50"] for r in ov],
                            "ours_openvino_timer_p50_ms": [r["runtime_latency_ms"]["p50"] for r in ov],
                        },
                    }
                )

    header = f"{'model':<14} {'file':<28} {'benchmark_app':>13} {'ours (OV timer)':>15} {'ratio':>6} {'ours (wall)':>11} {'ratio':>6} {'ORT wall':>9}"
    print(header)
    for r in rows:
        ort = f"{r['ours_onnxruntime_p50_ms']:.4f}" if r["ours_onnxruntime_p50_ms"] is not None else "-"
        print(
            f"{r['model']:<14} {r['file']:<28} {r['benchmark_app_p50_ms']:>13.4f} {r['ours_openvino_timer_p50_ms']:>15.4f} {r['ratio_timer']:>6.2f} "
            f"{r['ours_wall_p50_ms']:>11.4f} {r['ratio_wall']:>6.2f} {ort:>9}"
        )
    print("p50 in ms at batch 1, 1 thread, 1 stream, latency hint; ratio = ours / benchmark_app")
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/bench_agreement.py " + " ".join(sys.argv[1:]),
        "fingerprint": fingerprint(),
        "settings": {
            "rounds": args.rounds,
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": 1,
            "streams": 1,
            "batch": 1,
            "benchmark_app_config": BENCHMARK_APP_CONFIG["CPU"],
            "statistic": "median over rounds of each round's p50",
        },
        "rows": rows,
        "within_10_percent": {
            "openvino_timer": all(abs(r["ratio_timer"] - 1) <= 0.10 for r in rows),
            "wall_clock": all(abs(r["ratio_wall"] - 1) <= 0.10 for r in rows),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
