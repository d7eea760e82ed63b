"""Where a benchmark ran: CPU, cores, the instruction sets that decide int8 speed, OS and versions.

Every report carries one, so numbers from different machines can be told apart and compared.

Standalone on purpose: only the standard library at module level (the runtimes are asked, lazily and
only where installed, through the harness's runners: ``runners.py`` beside this file), because
``prokt-deploy bundle`` copies this file next to ``bench_bundle.py`` for boards that have only numpy
and one runtime.

int8 on CPUs, in short (why these flags are recorded):

- x86 without VNNI (AVX2 only) multiplies u8 x s8 with ``vpmaddubsw`` + ``vpmaddwd`` (two instructions
  and an int16 intermediate), so int8 convolutions gain little over fp32 FMA; AVX-512 VNNI / AVX-VNNI
  (``vpdpbusd``) does it in one, and AMX (``amx_int8``) uses tile units.
- ARM: ``asimddp`` (SDOT/UDOT) is the int8 dot product; ``i8mm`` adds int8 matrix multiply.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["INT8_FLAGS", "PACKAGES", "fingerprint", "fingerprint_id", "int8_dot_product"]

#: /proc/cpuinfo flags recorded in the fingerprint (x86 names, then ARM ``Features`` names).
INT8_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "sve2",
    "bf16",
)

#: Packages whose versions are recorded (``None`` when not installed).
PACKAGES = ("prokt-deploy", "torch", "numpy", "onnx", "onnxruntime", "openvino", "nncf")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> list[dict[str, str]]:
    """One dict per processor block of /proc/cpuinfo (empty off Linux)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    blocks = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        if entry:
            blocks.append(entry)
    return blocks


def _cpu_model(blocks: list[dict[str, str]]) -> str:
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for b in blocks:
            if b.get(key):
                return b[key]
    if blocks and "CPU part" in blocks[0]:  # ARM boards often name only the implementer/part
        b = blocks[0]
        return f"ARM implementer {b.get('CPU implementer', '?')} part {b['CPU part']}"
    return platform.processor() or platform.machine() or "unknown"


def _physical_cores(blocks: list[dict[str, str]]) -> int | None:
    pairs = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    return len(pairs) or None


def _cpu_quota() -> float | None:
    """CPUs allowed by a cgroup v2 quota (containers), or ``None`` when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else round(int(quota) / int(period), 2)


def int8_dot_product(flags: list[str]) -> str | None:
    """The int8 dot-product instructions the CPU has (``None`` when it has none)."""
    have = set(flags)
    for flag, name in (
        ("amx_int8", "AMX-INT8"),
        ("avx512_vnni", "AVX512-VNNI"),
        ("avx_vnni", "AVX-VNNI"),
        ("i8mm", "I8MM"),
        ("asimddp", "ASIMD-DotProd"),
    ):
        if flag in have:
            return name
    return None


def _versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in (*PACKAGES, *(p for p in extra if p not in PACKAGES)):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _default_runners() -> tuple:
    """The harness's runners of the runtimes every fingerprint asks about (``runners.py`` beside this file)."""
    if __package__:
        from . import runners
    else:  # a bundle: the files lie flat beside bench_bundle.py, which loaded runners.py already
        import importlib.util
        import sys

        runners = sys.modules.get("_harness_runners")  # as measure.py (bench_bundle.py) names it
        if runners is None:
            spec = importlib.util.spec_from_file_location("_harness_runners", Path(__file__).resolve().with_name("runners.py"))
            runners = importlib.util.module_from_spec(spec)
            sys.modules["_harness_runners"] = runners
            spec.loader.exec_module(runners)
    return tuple(runners.FINGERPRINT_RUNNERS)


def _runtimes(runners) -> dict:  # runner classes (runners.py)
    """What the installed runtimes report about this machine (devices, providers, CPU capabilities)."""
    out: dict = {}
    for runner in runners:
        if runner.installed():
            out.update(runner.fingerprint())
    return out


def _with_defaults(runners) -> tuple:
    chosen = list(_default_runners())
    for r in runners or ():
        if r.name not in {c.name for c in chosen}:
            chosen.append(r)
    return tuple(chosen)


def fingerprint(*, runtimes: bool = True, runners=None) -> dict:  # runner classes
    """A JSON-able description of this machine and software stack (see the module docstring).

    ``runners``: the runner classes (``runners.py``) of the formats in use, beside onnxruntime and OpenVINO which are
    always asked: their runtimes' versions (``distribution``) and what they report (``runtimes``) are recorded."""
    chosen = _with_defaults(runners)
    blocks = _cpuinfo()
    flag_text = blocks[0].get("flags", blocks[0].get("Features", "")) if blocks else ""
    present = set(flag_text.split())
    flags = [f for f in INT8_FLAGS if f in present]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    fp = {
        "cpu": {
            "model": re.sub(r"\s+", " ", _cpu_model(blocks)),
            "arch": platform.machine(),
            "logical_cores": os.cpu_count(),
            "physical_cores": _physical_cores(blocks),
            "usable_cores": usable,
            "cgroup_cpu_quota": _cpu_quota(),
            "flags": flags,
            "int8_dot_product": int8_dot_product(flags),
        },
        "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
        "python": platform.python_version(),
        "versions": _versions(tuple(r.distribution for r in chosen if r.distribution)),
    }
    if runtimes:
        fp["runtimes"] = _runtimes(chosen)
    fp["id"] = fingerprint_id(fp)
    return fp


def fingerprint_id(fp: dict) -> str:
    """A short stable id of a machine and runtime stack, e.g. ``x86_64-amd-epyc-3f2a9c``."""
    cpu = fp["cpu"]
    key = repr((cpu["model"], cpu["arch"], cpu["logical_cores"], cpu["flags"], fp["os"]["platform"], sorted(fp["versions"].items())))
    slug = re.sub(r"[^a-z0-9]+", "-", f"{cpu['arch']}-{cpu['model']}".lower()).strip("-")[:40]
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
