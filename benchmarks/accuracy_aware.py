"""Plain int8 vs accuracy-aware int8: test accuracy drop, bytes and batch-1 latency, per format (every registered
format with accuracy-aware int8: ONNX, OpenVINO, LiteRT, ExecuTorch where their runtimes are installed).

For each recipe a student is distilled with the recipe (``--epochs`` / ``--max-train-samples``
shorten it), then exported at int8 twice per format: plain (``exporters.export``) and accuracy-aware
(``exporters.export_accuracy_aware``, the search ranked on the validation split, target
``--max-int8-drop``). Two cases per recipe:

- ``trained``: the student as distilled. Plain int8 usually meets the gate and accuracy-aware then
  keeps nothing in fp32 (it costs one plain quantization plus the fp32 and int8 validation runs).
- ``outlier``: the same student with one huge-range activation built in (channel 0 of the second
  block's BatchNorm scaled by 1000 and the next conv's weights on that channel divided by 1000: the
  same function in fp32, as in tests/test_accuracy_aware.py), the case plain int8 fails.

Accuracy is on the run's held-out test split, in each artifact's runtime, against the PyTorch
student; latency is batch 1, 1 thread, one process per engine (``prokt_deploy.harness.measure``: warm-up,
timed runs, rounds rotated, median of the rounds' p50). Only families whose second block is
conv -> BatchNorm -> ReLU -> conv (``cnn``) get the outlier case.

    python benchmarks/accuracy_aware.py                                   # digits, every format with it
    python benchmarks/accuracy_aware.py --formats onnx openvino           # ~3 min on 2 cores
    python benchmarks/accuracy_aware.py --recipes digits fashion-mnist --max-train-samples 6000 --epochs 1

Writes benchmarks/results/accuracy_aware.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import exporters
from prokt_deploy import apply_overrides, distill, formats, load_recipe
from prokt_deploy.benchmarking.bench import runtime_targets
from prokt_deploy.data import load_recipe_data
from prokt_deploy.harness import measure
from prokt_deploy.rundir.reader import load_model

ROOT = Path(__file__).resolve().parent.parent
SCALE = 1000.0


def outlier_copy(student: torch.nn.Module) -> torch.nn.Module | None:
    """The student with one channel of a 1000x range between two convs (same fp32 function), or None."""
    import copy

    feats = getattr(student, "features", None)
    if feats is None or len(feats) < 7 or not isinstance(feats[4], torch.nn.BatchNorm2d) or not isinstance(feats[6], torch.nn.Conv2d):
        return None
    m = copy.deepcopy(student).eval()
    with torch.no_grad():
        m.features[4].weight[0] *= SCALE
        m.features[4].bias[0] *= SCALE
        m.features[6].weight[:, 0] /= SCALE
    return m


def export_pair(model, fmt, data, out: Path, max_drop: float, calibration: np.ndarray) -> list[dict]:
    x_test, y_test = data.test.x.numpy(), data.test.y.numpy()
    rows = []
    t = time.perf_counter()
    plain = exporters.export(model, fmt, "int8", out / f"{fmt}-plain", example_input=data.train.x[:2], calibration=calibration)
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    aware = exporters.export_accuracy_aware(
        model,
        fmt,
        out / f"{fmt}-aware",
        example_input=data.train.x[:2],
        calibration=calibration,
        validation_x=data.val.x.numpy(),
        validation_y=data.val.y.numpy(),
        max_accuracy_drop=max_drop,
    )
    aware_s = time.perf_counter() - t
    for mode, art, seconds in (("plain", plain, plain_s), ("accuracy-aware", aware.artifact, aware_s)):
        v = exporters.validate(exporters.load(art, fmt, threads=1), model, x_test, y_test, max_accuracy_drop=max_drop)
        row = {
            "format": fmt,
            "mode": mode,
            "bytes": art.bytes,
            "test_accuracy": round(v.test_accuracy, 6),
            "reference_accuracy": round(v.reference_accuracy, 6),
            "accuracy_drop": round(v.accuracy_drop, 4),
            "passes_gate": v.accuracy_drop <= max_drop,
            "export_s": round(seconds, 2),
            "main_file": str(exporters.main_file(fmt, art.files)),
        }
        if mode == "accuracy-aware":
            row["search"] = aware.to_dict()
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["digits"])
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the recipe's)")
    ap.add_argument("--max-train-samples", type=int, default=None)
    ap.add_argument(
        "--formats",
        nargs="+",
        default=list(exporters.formats_with_accuracy_aware()),
        help="formats to compare (default: every registered format with accuracy-aware int8)",
    )
    ap.add_argument("--max-int8-drop", type=float, default=1.0)
    ap.add_argument("--calibration-samples", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_aware.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpu": _cpu_name()},
        "max_accuracy_drop": args.max_accuracy_drop,
        "recipes": [],
    }
    targets = runtime_targets("CPU")
    with tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp_str:
        tmp = Path(tmp_str)
        for name in args.recipes:
            recipe = apply_overrides(load_recipe(name), {"train.epochs": args.epochs, "data.max_train_samples": args.max_train_samples})
            t = time.perf_counter()
            run = distill(recipe, out=tmp / name / "run", runs_root=tmp / "runs").path
            distill_s = time.perf_counter() - t
            data = load_recipe_data(recipe)
            student = load_model(run, "student")
            calibration = data.train.x[: args.calibration_samples].numpy()
            entry = {
                "recipe": name,
                "student": json.loads((run / "manifest.json").read_text())["student"]["arch"],
                "distill_s": round(distill_s, 1),
                "test_samples": len(data.test),
                "val_samples": len(data.val),
                "cases": [],
            }
            cases = [("trained", student), ("outlier", outlier_copy(student))]
            npz = tmp / name / "test.npz"
            np.savez(npz, x=data.test.x.numpy(), y=data.test.y.numpy())
            for case, model in cases:
                if model is None:
                    continue
                rows = []
                for fmt in args.formats:
                    print(f"{name} {case} {fmt}", flush=True)
                    rows += export_pair(model, fmt, data, tmp / name / case, args.max_accuracy_drop, calibration)
                engines = [{"id": f"{r['format']}-{r['mode']}", **formats.artifact_engine(r["format"], [r["main_file"]], targets)} for r in rows]
                timed = measure.measure(engines, npz, threads=1, batch=1, runs=args.runs, repeats=args.repeats)
                for r, m in zip(rows, timed):
                    r["latency_ms_p50"] = round(m["latency_ms"]["p50"], 4)
                    r.pop("main_file")
                entry["cases"].append({"case": case, "rows": rows})
                for r in rows:
                    kept = r.get("search", {}).get("kept_fp32")
                    print(
                        f"  {r['format']:8} {r['mode']:14} drop {r['accuracy_drop']:+7.2f}  {r['bytes']:7,} B  "
                        f"p50 {r['latency_ms_p50']:.4f} ms" + (f"  fp32: {[k['name'] for k in kept]}" if kept is not None else ""),
                        flush=True,
                    )
            results["recipes"].append(entry)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
