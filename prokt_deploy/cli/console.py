"""Consoles and the Rich training progress display (stderr), shared by the commands."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

err = Console(stderr=True)
out = Console(soft_wrap=True)


def print_json(data: object) -> None:
    """Machine-readable output: plain JSON on stdout (no Rich markup or wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


class RichProgress:
    """Implements engine.Progress: a bar per training phase with epoch, loss, accuracy and ETA."""

    def __init__(self, console: Console = err, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task = None
        self._phase = ""

    def start(self, phase: str, total_steps: int, completed: int = 0) -> None:
        if self.quiet:
            return
        self._phase = phase
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(phase, total=total_steps, completed=completed, stats="")

    def step(self, metrics: dict[str, float]) -> None:
        if self._progress is None:
            return
        stats = f"epoch {metrics['epoch']} loss {metrics['loss']:.4f} acc {metrics['acc']:.3f}"
        if "teacher_acc" in metrics:
            stats += f" teacher acc {metrics['teacher_acc']:.3f}"
        self._progress.update(self._task, advance=1, stats=stats)

    def epoch(self, record: dict) -> None:
        if self.quiet:
            return
        trained = "teacher" if self._phase.startswith("teacher") else "student"  # the CE phase trains the teacher
        parts = [f"{self._phase} epoch {record['epoch']}", f"{record['seconds']:.1f}s", f"val {trained} {record['val_student_accuracy']:.4f}"]
        if "val_teacher_accuracy" in record:
            parts.append(f"val teacher {record['val_teacher_accuracy']:.4f}")
        if "val_kl_teacher_student" in record:
            parts.append(f"KL(t||s) {record['val_kl_teacher_student']:.4f}")
        self.console.print(" | ".join(parts))

    def estimate(self, record: dict) -> None:
        """The phase's steps and the time it will take at the pace of its first steps, once, above the bar."""
        from prokt_deploy.train.engine import estimate_line

        if not self.quiet:
            self.console.print(estimate_line(record), highlight=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
