"""Size budgets: parse '5MB', '200KB', '750kB', '1.5MiB', '64KiB' into bytes.

Decimal units are powers of 1000 (B, kB/KB, MB, GB); binary units are powers of 1024
(KiB, MiB, GiB). Units are case-insensitive except that the 'i' marks a binary unit.
A bare number is bytes.
"""

from __future__ import annotations

import math
import re

from prokt_deploy.errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int | float) -> int:
    """Return the number of bytes in a size string; raise UsageError when it is not a positive size."""
    if isinstance(text, bool):
        raise UsageError(f"budget {text!r} is not a size; use e.g. 5MB, 200KB, 1.5MiB")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _PATTERN.match(str(text))
        if not match:
            raise UsageError(f"budget {text!r} is not a size; use e.g. 5MB, 200KB, 750kB, 1.5MiB, 64KiB")
        value, unit = float(match.group(1)), match.group(2).lower()
        if unit not in _UNITS:
            raise UsageError(f"budget {text!r} has unknown unit {match.group(2)!r}; use B, kB, MB, GB, KiB, MiB or GiB")
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"budget {text!r} must be a positive size")
    size = int(value * _UNITS[unit])
    if size < 1:
        raise UsageError(f"budget {text!r} is smaller than one byte")
    return size


def format_size(n_bytes: int | float) -> str:
    """Human-readable size in decimal units, e.g. 20480 -> '20.5 kB'."""
    n = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def compact(n: int) -> str:
    """19810 -> '19.8k', 2364832 -> '2.36M': counts short enough for an 80-column table."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            v = n / scale
            return f"{v:.3g}{unit}"
    return str(n)


def parse_target(target: str) -> tuple[str, str]:
    """``onnx``, ``onnx:CPU``, ``openvino`` or ``openvino:GPU`` -> (format, device): a format of the exporter
    registry, timed in its runtime."""
    import exporters

    fmt, _, device = target.partition(":")
    fmt = fmt.strip().lower()
    if fmt not in exporters.FORMATS:
        known = " or ".join(exporters.FORMATS)
        raise UsageError(f"unknown --target {target!r}; use {known}, optionally with :DEVICE (e.g. openvino:CPU)")
    return fmt, (device.strip() or "CPU")


def parse_latency(text: str | float) -> float:
    """``0.2ms``, ``200us``, ``0.0002s`` or a bare number of milliseconds -> milliseconds (> 0)."""
    raw = str(text).strip().lower()
    for suffix, scale in (("ms", 1.0), ("us", 1e-3), ("µs", 1e-3), ("s", 1e3), ("", 1.0)):
        if raw.endswith(suffix):
            try:
                value = float(raw[: len(raw) - len(suffix)] if suffix else raw) * scale
            except ValueError:
                break
            if value > 0 and value != float("inf"):
                return value
            break
    raise UsageError(f"--latency-budget {text!r} is not a positive latency; use e.g. 0.2ms, 200us or 0.2 (ms)")
