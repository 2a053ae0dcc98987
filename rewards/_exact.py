"""The exact fast path of rewards/math.py: math-verify's verdict, decided without sympy, wherever it is certain.

* `as_number` / `fast_verdict`: plain numbers (integer, decimal, `a/b`, `\\frac{a}{b}`) as exact rationals;
  equal → 1, clearly different (integers, or > 0.1 % apart) → 0, near-misses → None (math-verify's float
  rounding decides them).
* `exact_value` / `exact_verdict`: a small LaTeX grammar evaluated exactly (rationals, `\\sqrt{int}`,
  `\\pi^k`, letters, `\\frac`, intervals, sets of variable-free values, `x = value` answers), with the
  same rule: certain equality → 1, a difference far beyond math-verify's rounding → 0, anything else,
  and every known math-verify quirk, → None.

None always means "ask math-verify", so a verdict from here never differs from math-verify's own
(tests/unit/test_rewards_math.py, tests/unit/test_rewards_fuzz.py and benchmarks/rewards.py check this).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from functools import lru_cache, wraps
from typing import Any, Callable

def cache_short(max_len: int = 200, maxsize: int = 65536) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
    """lru_cache for a function of one string, applied to strings up to `max_len` only: the answers worth
    caching are short and repeat across a GRPO group and across steps, while long ones (a whole reasoning
    pasted into the answer block) would pin up to `maxsize` x kilobytes."""

    def deco(fn: Callable[[str], Any]) -> Callable[[str], Any]:
        cached = lru_cache(maxsize=maxsize)(fn)

        @wraps(fn)
        def wrapper(s: str) -> Any:
            return cached(s) if len(s) <= max_len else fn(s)

        wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return wrapper

    return deco


_PLAIN = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)(?:/(\d+))?$")
_LATEX_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")


@cache_short()
def as_number(s: str) -> Fraction | None:
    """A plain numeric answer as an exact rational, else None (no commas, units or expressions)."""
    if s.isascii() and s.isdigit() and len(s) <= 40:
        return Fraction(int(s))  # the common case, without Fraction's string parser
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
    if gold.denominator == pred.denominator == 1 and max(abs(gold.numerator), abs(pred.numerator)) < 10**15:
        return 0.0  # two different integers (on int arithmetic: the common wrong answer, kept cheap)
    big = max(abs(gold), abs(pred))
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
#   set := \{ element (, element)* \}  (or \left\{ … \right\}) with variable-free elements: expr, decimal, a/b
# No parentheses, decimals inside expressions (a whole answer or set element may be one: as_number), \sqrt of fractions
# (math-verify: \sqrt{1/n} ≠ 1/\sqrt{n}), e or i (constants).
_TOK = re.compile(r"\s*(?:(\\[dt]?frac|\\sqrt|\\pi|\\infty)(?![a-zA-Z])|(\d+)|([abcdfghjkmnpqrstuvwxyz])|([-+^{},()\[\]!]))")
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
            if self.peek() == "!":  # exact, unlike math-verify's floats, which make 1/2004! = 1/2006!
                self.take()
                if n > 3000:
                    raise _NotExact
                n = math.factorial(n)
            e = self.exponent()
            if n.bit_length() * e > 256 and (e > 1 or n.bit_length() > 40000):
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


_SET = re.compile(r"^\\\{(.*)\\\}$|^\\left\s*\\\{(.*?)\\right\s*\\\}$", re.S)


def _set_value(inner: str) -> tuple | None:
    """("set", distinct element Values) for the inside of `\\{…\\}`, or None (defer to math-verify)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    if len(parts) > 16:
        raise _NotExact
    values: list[Value] = []
    spelled: list[str] = []
    for part in parts:
        e = _exact_or_number(part.strip())
        if e is None or e[0] != "num" or any(k[2] for k in e[1]):
            raise _NotExact  # letters: math-verify compares a lone symbol by its printed form (see below)
        text = part.replace(" ", "")
        if e[1] in values:
            # sympy's FiniteSet drops duplicates by structure; one spelling twice is certainly one element,
            # two spellings of one value (\sqrt{8}, 2\sqrt{2}) are left to math-verify
            if spelled[values.index(e[1])] != text:
                raise _NotExact
            continue
        values.append(e[1])
        spelled.append(text)
    return ("set", values)


@cache_short()
def exact_value(s: str) -> tuple | None:
    """("num", Value) for an expression, ("interval", open_left, lo, hi, open_right) for an interval
    (lo/hi: Value or ±1 for ±∞), ("set", [Value, ...]) for a set (distinct elements), or None outside
    the grammar."""
    try:
        m = _SET.match(s.strip())
        if m:
            return _set_value(m.group(1) if m.group(1) is not None else m.group(2))
        p = _Parser(_tokens(s))
        if p.peek() in ("(", "[") and p.t[-1] in (")", "]"):
            left = p.take()
            lo = p.infinity() if p.t[p.i : p.i + 2] == ["-", "\\infty"] else p.expr(",")
            p.take(",")
            hi = p.infinity() if p.t[p.i : p.i + 1] == ["\\infty"] or p.t[p.i : p.i + 2] == ["+", "\\infty"] else p.expr(")" if p.t[-1] == ")" else "]")
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
    if g[0] == "set":
        # math-verify: a set is a sympy FiniteSet (order and repeats do not matter: \{2,1,1\} = \{1,2\}); two
        # of different sizes are unequal; at equal size it pairs the elements after sorting by value and
        # compares each pair with its float rounding. Hence 0 only when some element has no partner that
        # rounding could match, whatever the pairing. A set vs a tuple, bare list or scalar (math-verify
        # says \{1,2\} = (2,1) = 1,2 and \{5\} = 5) never reaches here: the kinds differ, so it defers.
        a, b = g[1], p[1]
        if len(a) != len(b):
            return 0.0
        if all(x in b for x in a):
            return 1.0
        lonely = any(all(_clearly_unequal(x, y) for y in b) for x in a) or any(all(_clearly_unequal(x, y) for x in a) for y in b)
        return 0.0 if lonely else None
    a, b = g[1], p[1]
    if a != b and "!" in gold + pred and all(len(v) <= 1 and all(k == (1, 0, ()) for k in v) for v in (a, b)):
        return 0.0  # two different exact rationals with factorials: math-verify's rounding says equal
    if a == b:
        # a lone letter is compared by its printed form: x ≠ \frac{2x}{2} (kept unevaluated) there
        return None if (_lone_variable(a) or _lone_variable(b)) else 1.0
    return 0.0 if _clearly_unequal(a, b) else None
