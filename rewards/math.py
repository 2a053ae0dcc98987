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

import math
import os
import re
from fractions import Fraction
from functools import lru_cache
from typing import Any

from rewards._math_worker import MathVerifyWorker, call_all
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


# -- exact arithmetic on a small LaTeX grammar ------------------------------------------------------
# Sums of terms c·√r·π^p·x^a·y^b… with c rational, r square-free: such a canonical form is unique (square
# roots of distinct square-free integers are linearly independent over Q, π is transcendental, and
# monomials are independent), so equal/unequal is decided exactly. Grammar, on purpose small:
#   expr := [±] term (± term)*      term := [uint[^e]] factor*  (at least one of the two)
#   factor := \frac{expr}{expr} (denominator: one variable-free term; not right after a uint: math-verify
#             reads 2\frac{1}{2} as the mixed number 5/2) | \sqrt{uint} | \pi[^e] | letter[^e]
#   interval := ( or [  expr , expr  ) or ]  with variable-free endpoints (± \infty only open)
# No parentheses, decimals, \sqrt of fractions (math-verify: \sqrt{1/n} ≠ 1/\sqrt{n}), e or i (constants).
_TOK = re.compile(r"\s*(?:(\\[dt]?frac|\\sqrt|\\pi|\\infty)(?![a-zA-Z])|(\d+)|([abcdfghjkmnpqrstuvwxyz])|([-+^{},()\[\]]))")
Key = tuple  # (square-free r, power of π, ((letter, exponent), ...))
Value = dict  # Key -> Fraction, no zero coefficients


class _NotExact(Exception):
    pass


def _tokens(s: str) -> list[str]:
    out, i, s = [], 0, s.rstrip()
    while i < len(s):
        m = _TOK.match(s, i)
        if not m:
            raise _NotExact
        out.append(next(g for g in m.groups() if g is not None))
        i = m.end()
    if len(out) > 80:
        raise _NotExact
    return out


def _mul(a: Value, b: Value) -> Value:
    out: Value = {}
    for (r1, p1, m1), c1 in a.items():
        for (r2, p2, m2), c2 in b.items():
            g = math.gcd(r1, r2)  # √r1·√r2 = g·√(r1 r2 / g²), and r1 r2 / g² is square-free again
            mono: dict[str, int] = dict(m1)
            for v, e in m2:
                mono[v] = mono.get(v, 0) + e
            key = (r1 * r2 // (g * g), p1 + p2, tuple(sorted(mono.items())))
            out[key] = out.get(key, 0) + c1 * c2 * g
    return {k: c for k, c in out.items() if c}


def _add(a: Value, b: Value, sign: int = 1) -> Value:
    out = dict(a)
    for k, c in b.items():
        out[k] = out.get(k, 0) + sign * c
    return {k: c for k, c in out.items() if c}


def _sqrt(n: int) -> Value:
    if n > 10**6:
        raise _NotExact
    if n == 0:
        return {}
    coef, f = 1, 2
    while f * f <= n:
        while n % (f * f) == 0:
            n //= f * f
            coef *= f
        f += 1
    return {(n, 0, ()): Fraction(coef)}


class _Parser:
    def __init__(self, toks: list[str]) -> None:
        self.t, self.i = toks, 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise _NotExact
        self.i += 1
        return tok

    def uint(self) -> int:
        tok = self.take()
        if not tok.isdigit() or (len(tok) > 1 and tok[0] == "0") or len(tok) > 12:
            raise _NotExact
        return int(tok)

    def exponent(self) -> int:
        if self.peek() != "^":
            return 1
        self.take()
        if self.peek() == "{":
            self.take()
            e = self.uint()
            self.take("}")
        else:
            tok = self.take()  # unbraced: one digit only (math-verify reads 2^34 as 2^{34})
            if not (tok.isdigit() and len(tok) == 1):
                raise _NotExact
            e = int(tok)
        if not 1 <= e <= 30 or self.peek() == "^":
            raise _NotExact
        return e

    def expr(self, stop: str) -> Value:
        total: Value = {}
        sign = -1 if self.peek() == "-" else 1
        if self.peek() in ("+", "-"):
            self.take()
        while True:
            total = _add(total, self.term(), sign)
            if self.peek() == stop or self.peek() is None:
                return total
            sign = -1 if self.take() == "-" else 1
            if sign == 1 and self.t[self.i - 1] != "+":
                raise _NotExact

    def term(self) -> Value:
        val: Value = {(1, 0, ()): Fraction(1)}
        empty, lead_int = True, False
        if self.peek() is not None and self.peek().isdigit():
            n = self.uint()
            e = self.exponent()
            if n.bit_length() * e > 256:
                raise _NotExact
            val, empty, lead_int = {(1, 0, ()): Fraction(n**e)} if n else {}, False, True
        while (tok := self.peek()) is not None and tok not in ("+", "-", "}", ",", ")", "]"):
            self.take()
            if tok in ("\\frac", "\\dfrac", "\\tfrac"):
                if lead_int or not empty:
                    raise _NotExact
                self.take("{")
                num = self.expr("}")
                self.take("}")
                self.take("{")
                den = self.expr("}")
                self.take("}")
                if len(den) != 1 or next(iter(den))[2]:
                    raise _NotExact  # only a nonzero variable-free monomial can be inverted here
                (r, p, _), c = next(iter(den.items()))
                f = _mul(num, {(r, -p, ()): 1 / (c * r)})  # 1/(c√r π^p) = √r / (c r) · π^-p
            elif tok == "\\sqrt":
                self.take("{")
                f = _sqrt(self.uint())
                self.take("}")
            elif tok == "\\pi":
                f = {(1, self.exponent(), ()): Fraction(1)}
            elif tok.isalpha():
                f = {(1, 0, ((tok, self.exponent()),)): Fraction(1)}
            else:
                raise _NotExact
            val, empty = _mul(val, f), False
        if empty:
            raise _NotExact
        return val


@lru_cache(maxsize=65536)
def exact_value(s: str) -> tuple | None:
    """("num", Value) for an expression, ("interval", open_left, lo, hi, open_right) for an interval
    (lo/hi: Value or ±1 for ±∞), or None outside the grammar."""
    try:
        p = _Parser(_tokens(s))
        if p.peek() in ("(", "[") and p.t[-1] in (")", "]"):
            left = p.take()
            lo = p.infinity() if p.t[p.i : p.i + 2] == ["-", "\\infty"] else p.expr(",")
            p.take(",")
            hi = p.infinity() if p.t[p.i : p.i + 2] in (["\\infty"], ["+", "\\infty"]) else p.expr(")" if p.t[-1] == ")" else "]")
            right = p.take()
            if p.peek() is not None or any(isinstance(x, dict) and any(k[2] for k in x) for x in (lo, hi)):
                raise _NotExact
            if (lo == -1 and left != "(") or (hi == 1 and right != ")") or lo == 1 or hi == -1:
                raise _NotExact  # sympy opens infinite ends itself: [-\infty,3] is (-\infty,3]
            return ("interval", left == "(", lo, hi, right == ")")
        v = p.expr("")
        if p.peek() is not None:
            raise _NotExact
        return ("num", v)
    except (_NotExact, ZeroDivisionError, RecursionError):
        return None


def _infinity(self: _Parser) -> int:
    sign = -1 if self.peek() == "-" else 1
    if self.peek() in ("+", "-"):
        self.take()
    self.take("\\infty")
    return sign


_Parser.infinity = _infinity


def _approx(v: Value) -> tuple[float, float]:
    """(value, sum of |terms|) of a variable-free value, in floats."""
    terms = [float(c) * math.sqrt(r) * math.pi**p for (r, p, _), c in v.items()]
    return math.fsum(terms), math.fsum(abs(t) for t in terms)


def _clearly_unequal(a: Value, b: Value) -> bool:
    """True when a ≠ b by far more than math-verify's float rounding / evalf chop could hide."""
    diff = _add(a, b, -1)
    scale = max([1.0] + [_approx({k: c})[1] for k, c in list(a.items()) + list(b.items())])
    by_mono: dict[tuple, Value] = {}
    for (r, p, m), c in diff.items():
        by_mono.setdefault(m, {})[(r, p, ())] = c
    return any(abs(_approx(v)[0]) > 1e-3 * scale for v in by_mono.values())


def _lone_variable(v: Value) -> bool:
    k = next(iter(v), None)
    return len(v) == 1 and k[:2] == (1, 0) and len(k[2]) == 1 and k[2][0][1] == 1 and v[k] == 1


def _exact_or_number(s: str) -> tuple | None:
    n = as_number(s)  # decimals and a/b join the grammar's values here (math-verify rounds only near-misses)
    return ("num", {(1, 0, ()): n} if n else {}) if n is not None else exact_value(s)


_ASSIGN = re.compile(r"^\s*[abcdfghjkmnpqrstuvwxyz]\s*=([^=]+)$")


def exact_verdict(gold: str, pred: str) -> float | None:
    """math-verify's verdict where the exact forms make it certain, else None (defer to math-verify)."""
    g, p = _exact_or_number(gold), _exact_or_number(pred)
    m = _ASSIGN.match(pred)
    if m and "=" not in gold and g is not None and g[0] == "num":
        # math-verify unwraps `x = v` to v when the gold is no equation; only variable-free v here
        p = _exact_or_number(m.group(1))
        if p is None or p[0] != "num" or any(k[2] for k in p[1]):
            return None
    if g is None or p is None or g[0] != p[0]:
        return None
    if g[0] == "interval":
        for lo, hi in ((g[2], g[3]), (p[2], p[3])):  # only proper intervals: (5,2) is a tuple, [5,2] empty
            if not (isinstance(lo, int) or isinstance(hi, int)) and not _approx(hi)[0] - _approx(lo)[0] > 1e-3 * max(1.0, _approx(hi)[1], _approx(lo)[1]):
                return None
        if g[1] != p[1] or g[4] != p[4]:
            return 0.0  # math-verify compares open/closed ends first
        verdicts = []
        for a, b in ((g[2], p[2]), (g[3], p[3])):
            if isinstance(a, int) or isinstance(b, int):
                verdicts.append(1.0 if a == b else 0.0)
            else:
                verdicts.append(1.0 if a == b else 0.0 if _clearly_unequal(a, b) else None)
        return 0.0 if 0.0 in verdicts else None if None in verdicts else 1.0
    a, b = g[1], p[1]
    if a == b:
        # a lone letter is compared by its printed form: x ≠ \frac{2x}{2} (kept unevaluated) there
        return None if (_lone_variable(a) or _lone_variable(b)) else 1.0
    return 0.0 if _clearly_unequal(a, b) else None


# -- scoring ------------------------------------------------------------------------------------------
_POOL_SIZE = max(1, min(int(os.environ.get("RAYZERO_MATH_WORKERS", "2")), os.cpu_count() or 1))
_WORKERS = [MathVerifyWorker() for _ in range(_POOL_SIZE)]  # processes start lazily, on first use
_WORKER = _WORKERS[0]
_VERDICTS: dict[tuple[str, str], float | None] = {}  # math-verify is deterministic: memoise its verdicts
_GOLD_OK: dict[tuple[str, float], bool] = {}


def _gold_known_ok(gold: str) -> bool:
    """Golds math-verify certainly parses to a sympy expression (tests check the grammar's)."""
    return as_number(gold) is not None or exact_value(gold) is not None


def _gold(gold: Any) -> str:
    g = normalise(str(gold if gold is not None else ""))
    boxed = _boxed_all(g)  # golds stored as "\boxed{...}" (MATH solutions)
    return normalise(boxed[-1]) if boxed else g


def _decide(g: str, answers: list[str]) -> float | tuple[str, str] | None:
    """The verdict for a parseable gold, or the (gold, pred) pair math-verify must decide."""
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
    v = exact_verdict(g, pred)
    if v is not None:
        return v
    return _VERDICTS.get((g, pred), (g, pred))


def math_accuracy(completions: list, answer: list, *, last_number: bool = False, timeout_s: float = 5.0,
                  timeout_score: float = 0.0, **_: Any) -> list[float | None]:
    """1.0 if the completion's single final answer equals the gold `answer`, 0.0 if not, None if the gold
    cannot be parsed. Extra TRL kwargs (prompts, completion_ids, trainer_state, ...) are ignored.
    Work math-verify must do is batched over the worker pool (one process per core, at most 2)."""
    items = [(_gold(a), completion_text(c)) for c, a in zip(completions, answer, strict=True)]
    unknown = sorted({g for g, _ in items if g and not _gold_known_ok(g) and (g, timeout_s) not in _GOLD_OK})
    for g, resp in zip(unknown, call_all(_WORKERS, [{"gold": g} for g in unknown], timeout_s)):
        if len(_GOLD_OK) >= 100_000:
            _GOLD_OK.clear()
        _GOLD_OK[(g, timeout_s)] = bool(resp and resp.get("gold_ok"))
    out: list = []
    for g, text in items:
        ok = bool(g) and (_gold_known_ok(g) or _GOLD_OK.get((g, timeout_s), False))
        out.append(_decide(g, extract_answers(text, last_number=last_number)) if ok else None)
    pairs = sorted({v for v in out if isinstance(v, tuple)})
    resps = call_all(_WORKERS, [{"gold": g, "pred": p} for g, p in pairs], timeout_s)
    decided = {}
    for key, resp in zip(pairs, resps):
        if resp is None:
            decided[key] = timeout_score  # not cached: a later call with a larger budget may still decide it
            continue
        if len(_VERDICTS) >= 100_000:
            _VERDICTS.clear()
        decided[key] = _VERDICTS[key] = resp["v"]
    return [decided[v] if isinstance(v, tuple) else v for v in out]


def score_one(text: str, gold: Any, *, last_number: bool = False, timeout_s: float = 5.0, timeout_score: float = 0.0) -> float | None:
    """Score one completion text against one gold answer (see the module docstring)."""
    return math_accuracy([text], [gold], last_number=last_number, timeout_s=timeout_s, timeout_score=timeout_score)[0]


@register("math_accuracy", factory=True)
def make_math_accuracy(last_number: bool = False, timeout_s: float = 5.0, timeout_score: float = 0.0):
    """Factory: `last_number` falls back to the last number when no answer is marked (off by default)."""

    def fn(completions, answer, **kw):
        return math_accuracy(completions, answer, last_number=last_number, timeout_s=timeout_s, timeout_score=timeout_score)

    fn.__doc__ = math_accuracy.__doc__
    return fn
