"""Math answer correctness: extract the final answer, then check equivalence with the gold answer.

Pipeline per completion:
1. **Extraction** (`extract_answers`): inside the last `<answer>…</answer>` block if there is one (else
   after the last `</think>`, else the whole text): every `\\boxed{}`; else the answer block's text; else
   the last `#### x`; else the last "the (final) answer is x"; else, only with `last_number=True`, the
   last number. More than one *distinct* boxed/answer-block answer is a hedge (`\\boxed{3} or \\boxed{7}`)
   and scores 0.
2. **Normalisation** (both sides): `$`/spaces trimmed, `\\sqrt(2)` → `\\sqrt{2}` (math-verify parses the
   parenthesised form as nothing, so `4` "equalled" `4\\sqrt(2)`), and `%` is dropped. Percent is a
   *unit* here, not "/100": datasets write a percent gold as `50` or `50\\%`, so `50\\%` = `50`, while
   `0.5` for `50\\%` is an answer on the wrong scale and scores 0 (math-verify alone accepts it).
3. **Fast path**: identical normalised strings (gold known parseable) → 1; both sides plain numbers (integer, decimal, `a/b`, `\\frac{a}{b}`): exact rational
   equality → 1; clearly different (integers, or > 0.1 % apart) → 0. Near-misses go to math-verify,
   whose float rounding decides them, so the fast path never changes math-verify's verdict
   (tests/test_rewards_math.py and benchmarks/rewards.py check this). Verdicts of the slow path are
   memoised per (gold, answer): completions in a GRPO group often repeat an answer string.
4. **math-verify** in a persistent child process (rewards/_math_worker.py) with its SIGALRM timeouts
   off; the deadline is enforced by killing the process, so it works in any thread and inside Ray
   actors, and `9999999!` costs at most `timeout_s`. The gold is parsed as `$gold$` (bare strings like
   `1-1/e` otherwise parse as `1`), and a gold that yields no sympy expression is unparseable → None.

Scores: 1.0 / 0.0; None when the gold cannot be parsed; `timeout_score` (0.0) when verification ran out
of time (the completion did not demonstrate equality within budget).
Known math-verify limits we keep: `\\frac{1}{2004!}` = `\\frac{1}{2006!}` (float rounding).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from rewards.registry import completion_text, register

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
_THE_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*\$?([^\n$]*?[^\s.$])\$?\s*\.?\s*$", re.I | re.M)
_HASHES = re.compile(r"####\s*([^\n]+)")
_LAST_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?(?:/\d+)?")


def _boxed_all(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}`, braces balanced."""
    out, i = [], 0
    while True:
        m = re.compile(r"\\(?:boxed|fbox)\s*\{").search(text, i)
        if not m:
            return out
        depth, start = 0, m.end()
        for j in range(start, len(text)):
            ch = text[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                if depth == 0:
                    out.append(text[start:j].strip())
                    break
                depth -= 1
        else:
            return out  # unbalanced: no further complete box
        i = j + 1


def extract_answers(text: str, last_number: bool = False) -> list[str]:
    """The completion's distinct final answers (normally one); [] when it states none."""
    tags = [t.strip() for t in _ANSWER_TAG.findall(text)]
    region = tags[-1] if tags else text.rsplit("</think>", 1)[-1]
    boxed = _boxed_all(region)
    if boxed:
        found = boxed
    elif tags:
        found = [t for t in tags if t]  # several different answer blocks = hedging too
    else:
        found = []
        for pat in (_HASHES, _THE_ANSWER_IS):
            hits = pat.findall(region)
            if hits:
                found = [hits[-1].strip()]
                break
        if not found and last_number:
            nums = _LAST_NUMBER.findall(region)
            found = nums[-1:]
    distinct: list[str] = []
    for a in found:
        n = normalise(a)
        num = as_number(n)
        if n and n not in distinct and (num is None or all(as_number(d) != num for d in distinct)):
            distinct.append(n)  # "7" and "7.0" are one answer, not a hedge
    return distinct


_SQRT_PAREN = re.compile(r"\\sqrt\s*\(([^()]*)\)")


def normalise(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = s.replace("\\%", "").replace("%", "").replace("\\!", "")
    s = _SQRT_PAREN.sub(r"\\sqrt{\1}", s)
    s = s.strip().rstrip(".").strip()
    return s


_PLAIN = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)(?:/(\d+))?$")
_LATEX_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")


def as_number(s: str) -> Fraction | None:
    """A plain numeric answer as an exact rational, else None (no commas, units or expressions)."""
    s = s.replace(" ", "")
    m = _PLAIN.match(s) or _LATEX_FRAC.match(s)
    if not m or len(s) > 40:
        return None
    sign, num, den = m.groups()
    try:
        value = Fraction(num) / Fraction(den) if den else Fraction(num)
    except ZeroDivisionError:
        return None
    return -value if sign == "-" else value


def fast_verdict(gold: Fraction, pred: Fraction) -> float | None:
    """Verdict for two numbers when it is certain math-verify agrees; None to defer to math-verify."""
    if gold == pred:
        return 1.0
    big = max(abs(gold), abs(pred))
    if gold.denominator == pred.denominator == 1 and big < 10**15:
        return 0.0
    if abs(gold - pred) > Fraction(1, 1000) * max(1, big):
        return 0.0
    return None


# -- math-verify in a killable process ---------------------------------------------------------------
_WORKER_PATH = str(Path(__file__).with_name("_math_worker.py"))


class MathVerifyWorker:
    """A persistent math-verify process. `call` is thread-safe; on a deadline the process is killed
    (a replacement starts importing at once, so the next call does not pay the whole start-up)."""

    def __init__(self, memory_mb: int = 2048) -> None:
        self.memory_mb = memory_mb
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self._ready = False
        self.restarts = 0

    def _spawn(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-I", _WORKER_PATH, str(self.memory_mb)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        self._buf, self._ready = b"", False

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass
            self._proc.wait()
            self._proc.stdin.close()
            self._proc.stdout.close()
            self._proc = None

    def _readline(self, deadline: float) -> bytes | None:
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("math-verify worker exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def call(self, req: dict, timeout_s: float) -> dict | None:
        """The worker's answer, or None when it did not answer within `timeout_s`."""
        with self._lock:
            for attempt in (1, 2):  # a worker that died (killed from outside, thread exit) gets one retry
                try:
                    if self._proc is None or self._proc.poll() is not None:
                        self._kill()
                        self._spawn()
                    if not self._ready:  # start-up (imports) is not charged to the item's budget
                        if self._readline(time.monotonic() + 120) is None:
                            raise EOFError("math-verify worker did not start")
                        self._ready = True
                    self._proc.stdin.write(json.dumps(req).encode() + b"\n")
                    self._proc.stdin.flush()
                    line = self._readline(time.monotonic() + timeout_s)
                except (EOFError, BrokenPipeError, OSError):
                    self._kill()
                    if attempt == 2:
                        raise
                    continue
                if line is None:
                    self._kill()
                    self.restarts += 1
                    self._spawn()  # warm up the replacement in the background
                    return None
                return json.loads(line)
        return None

    def close(self) -> None:
        with self._lock:
            self._kill()


_WORKER = MathVerifyWorker()
_VERDICTS: dict[tuple[str, str], float | None] = {}  # math-verify is deterministic: memoise its verdicts


@lru_cache(maxsize=65536)
def _gold_ok(gold: str, timeout_s: float) -> bool:
    if as_number(gold) is not None:
        return True
    resp = _WORKER.call({"gold": gold}, timeout_s)
    return bool(resp and resp.get("gold_ok"))


def score_one(text: str, gold: Any, *, last_number: bool = False, timeout_s: float = 5.0, timeout_score: float = 0.0) -> float | None:
    """Score one completion text against one gold answer (see the module docstring)."""
    g = normalise(str(gold if gold is not None else ""))
    boxed = _boxed_all(g)  # golds stored as "\boxed{...}" (MATH solutions)
    if boxed:
        g = normalise(boxed[-1])
    if not g or not _gold_ok(g, timeout_s):
        return None
    answers = extract_answers(text, last_number=last_number)
    if len(answers) != 1:
        return 0.0  # no answer, or a hedge between several
    pred = answers[0]
    if pred == g:
        return 1.0  # same string, same parse: math-verify's verdict for a parseable gold is equality
    gn, pn = as_number(g), as_number(pred)
    if gn is not None and pn is not None:
        v = fast_verdict(gn, pn)
        if v is not None:
            return v
    key = (g, pred)
    if key in _VERDICTS:  # a GRPO group often repeats the same answer string
        return _VERDICTS[key]
    resp = _WORKER.call({"gold": g, "pred": pred}, timeout_s)
    if resp is None:
        return timeout_score  # not cached: a later call with a larger budget may still decide it
    if len(_VERDICTS) >= 100_000:
        _VERDICTS.clear()
    _VERDICTS[key] = resp["v"]
    return resp["v"]


def math_accuracy(completions: list, answer: list, *, last_number: bool = False, timeout_s: float = 5.0,
                  timeout_score: float = 0.0, **_: Any) -> list[float | None]:
    """1.0 if the completion's single final answer equals the gold `answer`, 0.0 if not, None if the gold
    cannot be parsed. Extra TRL kwargs (prompts, completion_ids, trainer_state, ...) are ignored."""
    return [score_one(completion_text(c), a, last_number=last_number, timeout_s=timeout_s, timeout_score=timeout_score)
            for c, a in zip(completions, answer, strict=True)]


@register("math_accuracy", factory=True)
def make_math_accuracy(last_number: bool = False, timeout_s: float = 5.0, timeout_score: float = 0.0):
    """Factory: `last_number` falls back to the last number when no answer is marked (off by default)."""

    def fn(completions, answer, **kw):
        return math_accuracy(completions, answer, last_number=last_number, timeout_s=timeout_s, timeout_score=timeout_score)

    fn.__doc__ = math_accuracy.__doc__
    return fn
