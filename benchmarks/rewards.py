"""Reward throughput on this machine: `.venv/bin/python benchmarks/rewards.py [--pairs 1000] [--tests 500]`.

1. Math: rayzero's `math_accuracy` vs calling math-verify directly (`verify(parse(gold), parse(completion))`,
   gold parses cached for both) on the same deterministic pairs; verdicts must be identical.
2. Code: sandboxed stdin/stdout test executions (bwrap fork-server) vs one plain `python3` subprocess
   per test, same interpreter, same programs, same verdicts.
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.math import _WORKER, math_accuracy  # noqa: E402
from rewards.sandbox import Sandbox, SandboxConfig  # noqa: E402

FILLER = ["First, note that", "Let us compute", "Substituting back gives", "We check the case", "Multiplying both sides by",
          "This simplifies to", "Hence", "Adding the two equations,", "By symmetry,", "So far we have"]


def _answer_pair(rng: random.Random, kind: int) -> tuple[str, str, str]:
    """(gold, right answer written differently or the same, a wrong answer)."""
    if kind == 0:
        n = rng.randint(-500, 5000)
        return str(n), str(n), str(n + rng.choice([-10, -2, -1, 1, 3, 100]))
    if kind == 1:
        a, b = rng.randint(1, 60), rng.randint(2, 60)
        f = Fraction(a, b)
        right = rng.choice([f"\\frac{{{f.numerator}}}{{{f.denominator}}}", f"{f.numerator}/{f.denominator}", f"\\frac{{{2 * a}}}{{{2 * b}}}"])
        return f"\\frac{{{f.numerator}}}{{{f.denominator}}}", right, f"\\frac{{{f.numerator + 1}}}{{{f.denominator}}}"
    if kind == 2:
        d = round(rng.uniform(0, 100), 2)
        return str(d), str(d), str(round(d + 0.5, 2))
    k, m = rng.randint(2, 9), rng.randint(2, 7)
    forms = [
        (f"{k}\\sqrt{{{m}}}", f"\\sqrt{{{k * k * m}}}", f"{k + 1}\\sqrt{{{m}}}"),
        (f"\\frac{{{k}\\pi}}{{{m}}}", f"\\frac{{{k}}}{{{m}}}\\pi", f"\\frac{{{k}\\pi}}{{{m + 1}}}"),
        (f"{k}x+{m}", f"{m}+{k}x", f"{k}x-{m}"),
        (f"\\frac{{\\sqrt{{{m}}}}}{{{k}}}", f"\\frac{{\\sqrt{{{m}}}}}{{{k}}}", f"\\frac{{\\sqrt{{{m + 1}}}}}{{{k}}}"),
        (f"[{k},{k + m}]", f"[{k},{k + m}]", f"({k},{k + m})"),
        (f"{k}^{{{m}}}", str(k**m), str(k**m + 1)),
    ]
    return rng.choice(forms)


def math_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(completion, gold, kind) with kind "numeric" (integer/decimal/fraction) or "latex"."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.choice([0, 0, 1, 2, 3, 3])
        gold, right, wrong = _answer_pair(rng, kind)
        for _ in range(4):  # GRPO-like: several completions per problem
            ans = right if rng.random() < 0.5 else wrong
            # R1-style reasoning: 1.5k-5k characters of prose with inline LaTeX, like the field notes' 2.9k.
            steps = [f"{rng.choice(FILLER)} ${rng.randint(2, 99)} \\times \\frac{{{rng.randint(2, 99)}}}{{{rng.randint(2, 9)}}} = {rng.randint(100, 9999)}$."
                     for _ in range(rng.randint(25, 80))]
            out.append((f"<think>{' '.join(steps)}</think>\nTherefore, the final answer is $\\boxed{{{ans}}}$.", gold,
                        "latex" if kind == 3 else "numeric"))
    return out[:n]


def bench_math(n: int) -> None:
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    pairs = math_pairs(n)
    math_accuracy(["\\boxed{1}"], ["1"])  # start the worker outside the timing, as in a long training run
    golds: dict[str, list] = {}

    def direct(batch):
        out = []
        for c, g, _ in batch:
            if g not in golds:
                golds[g] = parse(f"${g}$")
            out.append(1.0 if verify(golds[g], parse(c)) else 0.0)
        return out

    times = {}
    ours, base = {}, {}
    for kind in ("numeric", "latex"):
        batch = [p for p in pairs if p[2] == kind]
        t0 = time.perf_counter()
        ours[kind] = math_accuracy([c for c, _, _ in batch], [g for _, g, _ in batch])
        t1 = time.perf_counter()
        base[kind] = direct(batch)
        times[kind] = (t1 - t0, time.perf_counter() - t1, len(batch))
    a = ours["numeric"] + ours["latex"]
    b = base["numeric"] + base["latex"]
    ordered = [p for p in pairs if p[2] == "numeric"] + [p for p in pairs if p[2] == "latex"]
    diff = [(ordered[i], a[i], b[i]) for i in range(n) if a[i] != b[i]]
    chars = sum(len(c) for c, _, _ in pairs) / n
    print(f"math: {n} pairs (avg {chars:.0f} chars, {sum(b) / n:.0%} correct), verdicts identical: {not diff} ({len(diff)} differ)")
    for (c, g, _), x, y in diff[:5]:
        print(f"  differs: gold={g!r} tail={c[-60:]!r} rayzero={x} math-verify={y}")
    for kind, (t_ours, t_direct, k) in times.items():
        print(f"  {kind:8s} ({k:4d} pairs): rayzero {k / t_ours:9.0f}/s  math-verify {k / t_direct:6.0f}/s  ratio {t_direct / t_ours:6.1f}x")
    t_ours = sum(t[0] for t in times.values())
    t_direct = sum(t[1] for t in times.values())
    print(f"  all 1000 pairs: rayzero math_accuracy {n / t_ours:.0f} verifications/s, math-verify directly {n / t_direct:.0f}/s")
    print(f"  ratio: {t_direct / t_ours:.1f}x  (goal >= 10x)")


PROGRAMS = [
    "n = int(input())\nprint(n * n)\n",
    "a, b = map(int, input().split())\nprint(a + b)\n",
    "s = input().strip()\nprint(s[::-1])\n",
    "n = int(input())\nprint(sum(range(n + 1)))\n",
    "import sys\nxs = list(map(int, sys.stdin.read().split()))\nprint(max(xs))\n",
]


def io_cases(prog: int, k: int, rng: random.Random) -> list[dict]:
    cases = []
    for _ in range(k):
        x, y = rng.randint(1, 999), rng.randint(1, 999)
        inp, out = [(f"{x}\n", str(x * x)), (f"{x} {y}\n", str(x + y)), (f"ab{x}\n", f"ab{x}"[::-1]),
                    (f"{x}\n", str(x * (x + 1) // 2)), (f"{x} {y} 5\n", str(max(x, y, 5)))][prog]
        cases.append({"input": inp, "output": out})
    return cases


def bench_sandbox(n_tests: int) -> None:
    rng = random.Random(1)
    per = 10
    jobs = [(PROGRAMS[i % len(PROGRAMS)], io_cases(i % len(PROGRAMS), per, rng)) for i in range(n_tests // per)]
    cfg = SandboxConfig()
    with Sandbox(cfg) as sb:
        sb.run("print(1)", [{"input": "", "output": "1"}])  # start the fork-server outside the timing
        t0 = time.perf_counter()
        ours = [sb.run(p, cases).tests for p, cases in jobs]
        t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = []
    for p, cases in jobs:
        row = []
        for case in cases:
            r = subprocess.run([cfg.python, "-c", p], input=case["input"].encode(), capture_output=True, timeout=cfg.timeout_s)
            row.append("passed" if r.returncode == 0 and r.stdout.decode().strip() == case["output"].strip() else "failed")
        plain.append(row)
    t_plain = time.perf_counter() - t0
    n = sum(len(c) for _, c in jobs)
    print(f"sandbox: {n} stdin/stdout test executions, verdicts identical: {ours == plain}, all passed: {all(t == 'passed' for r in ours for t in r)}")
    print(f"  bwrap fork-server sandbox: {n / t_ours:7.0f} test executions/s")
    print(f"  plain python3 subprocess:  {n / t_plain:7.0f} test executions/s (no isolation)")
    print(f"  ratio: {t_plain / t_ours:.1f}x  (goal >= 3x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--tests", type=int, default=500)
    args = ap.parse_args()
    bench_math(args.pairs)
    bench_sandbox(args.tests)
    _WORKER.close()


if __name__ == "__main__":
    main()
