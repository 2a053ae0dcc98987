"""Property tests: no reward raises or overruns its timeout on arbitrary text, and the math fast path
never disagrees with math-verify on numbers."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards.code import close_sandboxes, extract_program, normalise_tests
from rewards.math import MathVerifyWorker, as_number, exact_value, exact_verdict, extract_answers, fast_verdict, math_accuracy
from rewards.registry import get_reward
from rewards.sandbox import SandboxConfig

@pytest.fixture(scope="module", autouse=True)
def _close_sandboxes():
    yield
    close_sandboxes()


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMEOUT = 1.0
# Text that looks like model output: tags, boxes, latex and numbers mixed with anything.
pieces = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "}", "{", "\\frac{", "^{", "!", "$",
                          "the answer is ", "#### ", "\\sqrt(", "\\%", "=", " or ", "\n", "10", "-3.5", "x", "\\pi", "```python\n", "```"])
texts = st.lists(st.one_of(pieces, st.text(max_size=12)), max_size=25).map("".join)


@FUZZ
@given(texts, st.one_of(texts, st.integers(-10**6, 10**6).map(str)))
def test_math_accuracy_never_raises_nor_overruns(text, gold):
    t0 = time.monotonic()
    [v] = math_accuracy([text], [gold], timeout_s=TIMEOUT)
    assert v is None or v in (0.0, 1.0)
    assert time.monotonic() - t0 < 2 * TIMEOUT + 2.0  # gold parse + verify, each bounded, plus a worker warm-up


@FUZZ
@given(texts)
def test_shaping_and_extraction_never_raise(text):
    for name, params in [("strict_format", {}), ("overlong_penalty", {"max_length": 50, "cache_length": 10}),
                         ("repetition_penalty", {})]:
        [v] = get_reward(name, **params)([text])
        assert isinstance(v, float)
    extract_answers(text, last_number=True)
    extract_program(text)
    try:
        normalise_tests(text)
    except ValueError:
        pass


@pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200), st.text(max_size=30))
def test_code_accuracy_never_raises_nor_overruns(body, expected):
    fn = _code_fn()
    t0 = time.monotonic()
    [v] = fn([f"```python\n{body}\n```"], tests=[[{"input": body, "output": expected}]])
    assert v in (0.0, 1.0)
    assert time.monotonic() - t0 < TIMEOUT + 3.0


_fn = None


def _code_fn():
    global _fn
    if _fn is None:
        _fn = get_reward("code_accuracy", timeout_s=TIMEOUT, memory_mb=256)
    return _fn


numbers = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.builds(lambda a, b: f"{a}/{b}", st.integers(-999, 999), st.integers(1, 999)),
    st.builds(lambda a, b: f"\\frac{{{a}}}{{{b}}}", st.integers(0, 999), st.integers(1, 999)),
    st.integers(1, 7).flatmap(lambda places: st.decimals(-1000, 1000, places=places, allow_nan=False, allow_infinity=False)).map(str),
)


@settings(max_examples=60, deadline=None)
@given(numbers, numbers)
def test_fast_path_never_changes_math_verifys_verdict(gold, pred):
    g, p = as_number(gold), as_number(pred)
    if g is None or p is None:
        return
    fast = fast_verdict(g, p)
    if fast is None:
        return
    assert _worker().call({"gold": gold, "pred": pred}, 10.0)["v"] == fast, (gold, pred)


_w = None


def _worker() -> MathVerifyWorker:
    global _w
    if _w is None:
        _w = MathVerifyWorker()
    return _w


# -- the exact LaTeX fast path against math-verify ----------------------------------------------------
# A random value Σ c·√r·π^p·x^a is drawn once and written twice in different LaTeX (term order, factor
# order, \frac placement, k√m as √(k²m), \dfrac), sometimes with one coefficient changed slightly or a lot.
TERM = st.tuples(st.fractions(min_value=-20, max_value=20, max_denominator=12).filter(bool), st.sampled_from([1, 1, 2, 3, 5, 6]),
                 st.sampled_from([0, 0, 1, 2]), st.sampled_from([(), (), ("x",), ("x", "x"), ("y",), ("x", "y"), ("n",)]))


def _render(draw, terms) -> str:
    out = []
    for c, r, p, vars_ in draw(st.permutations(terms)):
        c = Fraction(c)
        sign, c = ("-" if c < 0 else "+"), abs(c)
        k = draw(st.sampled_from([1, 1, 2, 3])) if r > 1 else 1
        if k > 1 and (c.numerator % k == 0):
            c, r = c / k, r * k * k  # k√m written as √(k²m)
        factors = ([f"\\sqrt{{{r}}}"] if r > 1 else []) + (["\\pi" if p == 1 else f"\\pi^{{{p}}}"] if p else [])
        factors += [v if vars_.count(v) == 1 else f"{v}^{vars_.count(v)}" for v in sorted(set(vars_))]
        factors = draw(st.permutations(factors))
        body = "".join(f + " " if f == "\\pi" else f for f in factors).strip()  # \pi x, not \pix
        if not body and c == 0:
            continue
        frac = draw(st.sampled_from(["\\frac", "\\dfrac"]))
        if c.denominator == 1:
            t = (str(c.numerator) if c != 1 or not body else "") + body
        elif draw(st.booleans()) or not body:
            t = f"{frac}{{{c.numerator}{body if c.numerator != 1 or not body else ''}}}{{{c.denominator}}}".replace("{1" + body + "}", "{" + body + "}") if body and c.numerator == 1 else f"{frac}{{{c.numerator}{body}}}{{{c.denominator}}}"
        else:
            t = f"{frac}{{{c.numerator}}}{{{c.denominator}}}{body}"
        out.append((sign, t))
    if not out:
        return "0"
    s = "".join(f"{sg}{t}" for sg, t in out)
    return s[1:] if s[0] == "+" else s


@st.composite
def latex_pairs(draw):
    terms = draw(st.lists(TERM, min_size=1, max_size=3, unique_by=lambda t: t[1:]))
    gold = _render(draw, terms)
    change = draw(st.sampled_from(["same", "same", "tiny", "big"]))
    if change != "same":
        i = draw(st.integers(0, len(terms) - 1))
        c, *rest = terms[i]
        terms = terms[:i] + [(c + (Fraction(1, 10**7) if change == "tiny" else Fraction(draw(st.integers(1, 5)), 2)), *rest)] + terms[i + 1:]
    pred = _render(draw, terms)
    if draw(st.integers(0, 4)) == 0 and not any(t[3] for t in terms):  # as intervals, brackets drawn independently
        if draw(st.booleans()):
            lo = draw(st.integers(-9, 0))
            gold = f"{draw(st.sampled_from('(['))}{lo},{gold}{draw(st.sampled_from(')]'))}"
            pred = f"{draw(st.sampled_from('(['))}{lo},{pred}{draw(st.sampled_from(')]'))}"
        else:  # a ray [v, ∞), ∞ written with or without +, its end sometimes (wrongly) closed
            infinities = st.sampled_from(["\\infty", "+\\infty"])
            gold = f"{draw(st.sampled_from('(['))}{gold},{draw(infinities)}{draw(st.sampled_from('))]'))}"
            pred = f"{draw(st.sampled_from('(['))}{pred},{draw(infinities)}{draw(st.sampled_from('))]'))}"
    elif not any(t[3] for t in terms) and draw(st.integers(0, 3)) == 0:
        pred = f"{draw(st.sampled_from('xn'))} = {pred}"  # an assignment answering a value gold
    return gold, pred


def _assert_fast_path_agrees(gold: str, pred: str) -> None:
    """Whatever the exact path decides, math-verify (in the worker) decides the same."""
    fast = exact_verdict(gold, pred)
    if exact_value(gold) is not None:  # math_accuracy skips the gold check for golds in the grammar
        assert _worker().call({"gold": gold}, 10.0)["gold_ok"], gold
    if fast is not None:
        assert _worker().call({"gold": gold, "pred": pred}, 10.0)["v"] == fast, (gold, pred, fast)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(latex_pairs())
def test_exact_latex_fast_path_never_changes_math_verifys_verdict(pair):
    _assert_fast_path_agrees(*pair)


# Sets: a few variable-free values drawn once, each written twice in independent LaTeX, the prediction's
# elements shuffled (sometimes one repeated, changed slightly or a lot, dropped, or a new one added), the
# braces plain or \left\{ \right\}. math-verify's set semantics (order and repeats do not matter, element-wise
# float rounding at equal size) must come out of the fast path unchanged.
CONST_TERM = st.tuples(st.fractions(min_value=-20, max_value=20, max_denominator=12).filter(bool), st.sampled_from([1, 1, 2, 3, 5, 6]),
                       st.sampled_from([0, 0, 1, 2]), st.just(()))
CONST_TERMS = st.lists(CONST_TERM, min_size=1, max_size=2, unique_by=lambda t: t[1:3])


def _render_set(draw, values) -> str:
    elems = [_render(draw, terms) for terms in values]
    if elems and draw(st.integers(0, 3)) == 0:
        elems.append(draw(st.sampled_from(elems)))  # the same spelling twice: still one element
    elems = draw(st.permutations(elems))
    sep = draw(st.sampled_from([",", ", "]))
    left, right = draw(st.sampled_from([("\\{", "\\}"), ("\\left\\{", "\\right\\}"), ("\\{ ", " \\}")]))
    return f"{left}{sep.join(elems)}{right}"


@st.composite
def set_pairs(draw):
    values = draw(st.lists(CONST_TERMS, min_size=1, max_size=4))
    gold = _render_set(draw, values)
    change = draw(st.sampled_from(["same", "same", "tiny", "big", "drop", "add"]))
    i = draw(st.integers(0, len(values) - 1))
    if change in ("tiny", "big"):
        c, *rest = values[i][0]
        delta = Fraction(1, 10**7) if change == "tiny" else Fraction(draw(st.integers(1, 5)), 2)
        values = values[:i] + [[(c + delta, *rest), *values[i][1:]]] + values[i + 1:]
    elif change == "drop" and len(values) > 1:
        values = values[:i] + values[i + 1:]
    elif change == "add":
        values = values + [draw(CONST_TERMS)]
    return gold, _render_set(draw, values)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(set_pairs())
def test_exact_set_rule_never_changes_math_verifys_verdict(pair):
    _assert_fast_path_agrees(*pair)
