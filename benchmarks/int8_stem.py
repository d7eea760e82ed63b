"""Does the float stem make ONNX int8 faster than fp32? Every image family, both stems, side by side.

For each student architecture and input shape, an untrained copy (the real graph, generic weights) is
exported to ONNX three times: fp32, int8 with the exporter's float stem (the default: the first conv on
a <= 3-channel input stays fp32, see ``exporters/onnx.py``), and int8 with the stem quantized too
(``FLOAT_STEM_MAX_CHANNELS = 0``, the old behaviour). The three files are timed together with bench's
harness (one worker per engine, 1 thread, warm-up, rounds rotated, median of the rounds' p50) at batch 1
and batch ``--batch``; the table gives p50 and each int8 file's speed relative to its fp32 one (higher
is faster) and the top-1 agreement of each int8 file with the fp32 one.

Inputs are real Fashion-MNIST images: 1x28x28 as they are, 3x32x32 padded by 2 and repeated over three
channels (the shape of a small RGB task; the pixel statistics only matter for calibration).

    python benchmarks/int8_stem.py                                  # ~4 min on 2 cores
    python benchmarks/int8_stem.py --archs pool-w16-d3 --shapes 1x28x28

Writes benchmarks/results/int8_stem.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import exporters
import exporters.onnx as onnx_exporter
from exporters.size import generic_copy
from prokt_deploy import formats, load_recipe
from prokt_deploy.data import load_recipe_data
from prokt_deploy.harness import measure
from prokt_deploy.harness.fingerprint import fingerprint
from prokt_deploy.models import count_params, create_model

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("fp32", "int8-float-stem", "int8-int8-stem")


def images(shape: tuple[int, int, int], n_calib: int, n_eval: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, evaluation) float32 arrays of ``shape`` from the default recipe's real images."""
    data = load_recipe_data(load_recipe(None))
    train, test = data.train.x[:n_calib].numpy(), data.test.x[:n_eval].numpy()
    c, h, w = shape
    out = []
    for x in (train, test):
        ph, pw = h - x.shape[2], w - x.shape[3]
        if ph < 0 or pw < 0:
            raise SystemExit(f"shape {shape} is smaller than the data's {x.shape[1:]}")
        x = np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        out.append(np.ascontiguousarray(np.repeat(x, c, axis=1) if x.shape[1] == 1 and c > 1 else x, dtype=np.float32))
    return out[0], out[1]


def export_variant(model, variant: str, out: Path, calib: np.ndarray):
    precision = "fp32" if variant == "fp32" else "int8"
    saved = onnx_exporter.FLOAT_STEM_MAX_CHANNELS
    if variant == "int8-int8-stem":
        onnx_exporter.FLOAT_STEM_MAX_CHANNELS = 0
    try:
        return exporters.export(
            model, "onnx", precision, out, example_input=torch.from_numpy(calib[:2]), calibration=calib if precision == "int8" else None
        )
    finally:
        onnx_exporter.FLOAT_STEM_MAX_CHANNELS = saved


def run_cell(arch: str, shape: tuple[int, int, int], args, tmp: Path) -> dict:
    calib, evalx = images(shape, args.calibration, args.eval)
    model = generic_copy(create_model(arch, num_classes=10, in_channels=shape[0], image_size=shape[1:]), 0).eval()
    cell = tmp / f"{arch}-{'x'.join(map(str, shape))}"
    rows, logits = [], {}
    for variant in VARIANTS:
        art = export_variant(model, variant, cell / variant, calib)
        main = next(f for f in art.files if f.suffix == ".onnx")
        logits[variant] = exporters.predict_logits(exporters.load(art, "onnx"), evalx)
        rows.append({"variant": variant, "bytes": art.bytes, "main": main})
    npz = cell / "x.npz"
    np.savez(npz, x=evalx[:64], y=np.zeros(min(64, len(evalx)), dtype=np.int64))
    targets = {"openvino": "CPU", "onnxruntime": ["CPUExecutionProvider"]}
    engines = [
        {"id": r["variant"], **formats.artifact_engine("onnx", [r["main"]], targets), "accuracy": {"accuracy": 0.0, "samples": 0}} for r in rows
    ]
    timed = measure.measure(engines, npz, threads=1, batch=args.batch, runs=args.runs, warmup=args.warmup, repeats=args.repeats)
    ref = logits["fp32"].argmax(1)
    for r, m in zip(rows, timed):
        r.pop("main")
        r["p50_ms_b1"] = round(m["latency_ms"]["p50"], 5)
        r[f"p50_ms_b{args.batch}"] = round(m["batch_latency_ms"]["p50"], 5)
        r["top1_agreement_with_fp32"] = round(float((logits[r["variant"]].argmax(1) == ref).mean()), 4)
    by = {r["variant"]: r for r in rows}
    out = {"arch": arch, "params": count_params(model), "input_shape": list(shape), "rows": rows}
    for b in (1, args.batch):
        key = f"p50_ms_b{b}"
        out[f"b{b}"] = {v: round(by["fp32"][key] / by[v][key], 3) for v in VARIANTS[1:]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="pool-w16-d3,resnet-w8-d1,cnn-w8-d1,wide-w64-d2")
    ap.add_argument("--shapes", default="1x28x28,3x32x32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=300, help="real training images to calibrate int8 on")
    ap.add_argument("--eval", type=int, default=1000, help="real test images for the top-1 agreement")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_stem.json"))
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if any(len(s) != 3 for s in shapes):
        raise SystemExit("--shapes: CxHxW, comma-separated, e.g. 1x28x28,3x32x32")
    fp = fingerprint()
    isa = fp["cpu"].get("int8_dot_product")
    t0 = time.perf_counter()
    results = {
        "command": "python benchmarks/int8_stem.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {"cpu": fp["cpu"]["model"], "int8_dot_product": isa, "flags": fp["cpu"]["flags"], "fingerprint": fp["id"]},
        "settings": {"threads": 1, "batch": args.batch, "runs": args.runs, "warmup": args.warmup, "repeats": args.repeats},
        "cells": [],
    }
    with tempfile.TemporaryDirectory(prefix="int8-stem-") as tmp:
        for arch in args.archs.split(","):
            for shape in shapes:
                cell = run_cell(arch, shape, args, Path(tmp))
                results["cells"].append(cell)
                print(f"{arch} {'x'.join(map(str, shape))}: int8/fp32 b1 {cell['b1']}, b{args.batch} {cell[f'b{args.batch}']}", flush=True)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")

    bn = f"b{args.batch}"
    print(
        f"\n{fp['cpu']['model']} ({isa or 'no VNNI-class int8 dot products'}), 1 thread; ONNX int8 speed relative to its own fp32 (higher is faster)"
    )
    print(f"  {'arch':14} {'input':8} {'fp32 b1 ms':>10} {'stem':>6} {'b1':>6} {bn:>6} {'top-1 =':>8} {'bytes':>8}")
    for c in results["cells"]:
        fp32 = c["rows"][0]
        for r in c["rows"][1:]:
            stem = r["variant"].split("-")[1]
            print(
                f"  {c['arch']:14} {'x'.join(map(str, c['input_shape'])):8} {fp32['p50_ms_b1']:>10.4f} {stem:>6} "
                f"{c['b1'][r['variant']]:>6.2f} {c[bn][r['variant']]:>6.2f} {r['top1_agreement_with_fp32']:>8.3f} {r['bytes']:>8,}"
            )
    print(f"\nwrote {args.out} ({results['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
