"""Text quality grid: scratch / KD / ProKT / ProKT with a label term for the same <= 5 MB student.

The image grid's machinery (benchmarks/quality.py: tuning on validation with the same budget per
method, per-cell resume, paired differences by seed) on the text recipe: the pretrained
all-MiniLM-L6-v2 teacher, the tweets data, the full training split (16,198 tweets) and 3 seeds.
KD's converged teacher (MiniLM fine-tuned with cross-entropy, one per seed) is kept under
--teacher-dir; ProKT fine-tunes its own teacher jointly from the pretrained backbone (PROKT.md).

One ProKT epoch on the full split is about half an hour on 2 cores, so the tuning runs (3 per
method, seed 0) use the recipe's own 6,000-tweet subset (--tune-set data.max_train_samples=6000),
the same for every method; the grid cells then run on the full split with the chosen settings.
Writes benchmarks/results/text_quality.json (a list of records, as quality.json) and a Markdown
table next to it; every finished cell is written at once, and --resume continues a stopped grid.

    python benchmarks/text_quality.py --resume                    # the grid (many hours on 2 cores)
    python benchmarks/text_quality.py --max-train-samples 64 --methods scratch,prokt --seeds 0 --out /tmp/t.json \\
        --set teacher.arch=bert-h64-l1 --set data.tokenizer=all-minilm-l6-v2   # a smoke run
"""

from __future__ import annotations

from pathlib import Path

import quality  # benchmarks/, the script's own directory (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent

#: The text grid's defaults; every other option is quality.py's.
DEFAULTS = {
    "recipe": str(ROOT / "recipes" / "tweets-minilm.yaml"),
    "budgets": "5MB",
    "methods": "scratch,kd,prokt,prokt+label",
    "seeds": "0,1,2",
    "max_train_samples": 1_000_000,  # more than the split: every training tweet
    "tune": True,
    "tune_set": ["data.max_train_samples=6000"],
    "teacher_dir": str(ROOT / "benchmarks" / "results" / ".text-teachers"),
    "out": str(ROOT / "benchmarks" / "results" / "text_quality.json"),
}

if __name__ == "__main__":
    quality.main(defaults=DEFAULTS, description=__doc__.splitlines()[0])
