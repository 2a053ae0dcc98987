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
   `0.5` for `50\\%` is an answer on the wrong scale and scores 0 (math-verify alone accepts it). Then the
   forms of rewards/_forms.py: Unicode math as LaTeX, spaced digit groups joined, a unit (currency, degrees,
   `\\text{ cm}`, `18 dollars`) taken off the value (two different units score 0), word answers
   (`\\text{Monday}`, `(C)`) compared as text.
3. **Fast path** (rewards/_exact.py): identical normalised strings (gold known parseable) → 1; plain
   numbers (integer, decimal, `a/b`, `\\frac{a}{b}`) and a small LaTeX grammar evaluated exactly
   (`\\sqrt`, `\\pi`, letters, `\\frac`, intervals, sets, `x = value`): equal → 1, clearly different (far beyond
   math-verify's float rounding) → 0. Near-misses and math-verify's known quirks go to math-verify, so the
   fast path never changes math-verify's verdict (tests/unit/test_rewards_math.py, tests/unit/test_rewards_fuzz.py
   and benchmarks/rewards.py check this). Verdicts of the slow path are memoised per (gold, answer):
   completions in a GRPO group often repeat an answer string; normalisation, number parsing and gold
   checks are cached per short string, so plain-number answers (the built-in arithmetic task) score at
   ~10^5 completions/s in-process (benchmarks/rewards.py, section "short").
4. **math-verify** in persistent child processes (rewards/_math_worker.py; started in the background when
   the reward is built) with its SIGALRM timeouts
   off; the deadline is enforced by killing the process, so it works in any thread and inside Ray
   actors, and `9999999!` costs at most `timeout_s`. The gold is parsed as `$gold$` (bare strings like
   `1-1/e` otherwise parse as `1`), and a gold that yields no sympy expression is unparseable → None.

Scores: 1.0 / 0.0; None when the gold cannot be parsed; `timeout_score` (0.0) when verification ran out
of time (the completion did not demonstrate equality within budget).
Factorials are exact in rewards/_exact.py, so math-verify's `\\frac{1}{2004!}` = `\\frac{1}{2006!}` (float
rounding) scores 0 here. Recall and false positives on tests/data/math_answer_pairs.jsonl: benchmarks/rewards.py.
"""

from __future__ import annotations

import os
import re
from typing import Any

# The exact evaluator lives in rewards/_exact.py; its public names stay importable from here.
from rewards._exact import as_number, cache_short, exact_value, exact_verdict, fast_verdict
from rewards._forms import canonical_unicode, split_unit, text_answer
from rewards._math_worker import MathVerifyWorker, call_all
from rewards.base import completion_text, register

__all__ = ["MathVerifyWorker", "as_number", "exact_value", "exact_verdict", "extract_answers", "fast_verdict",
           "make_math_accuracy", "math_accuracy", "normalise", "score_one"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
# "the (final) answer is x" ending its line; x may sit in $...$ or $$...$$ with spaces inside ("$ 42 $").
_THE_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*\${0,2}\s*([^\n$]*?[^\s.$])\s*\.?\s*\${0,2}\s*\.?\s*$", re.I | re.M)
# A line "Answer <math>" (also "**Final answer:** <math>"): only a delimited span that ends the line, as in
# math-verify's own cases: $..$ and \(..\) on one line (an escaped \$ inside is text), $$..$$ and \[..\] on several.
_ANSWER_LINE = re.compile(
    r"^[ \t*#>]*(?:final[ \t]+)?answer[ \t*]*:?[ \t*]*"
    r"(?:\$\$([^$]+?)\$\$|(?<!\\)\$((?:\\\$|[^\n$])+?)(?<!\\)\$|\\\(([^\n]+?)\\\)|\\\[([\s\S]+?)\\\])"
    r"[ \t*]*\.?[ \t]*$", re.I | re.M)
_HASHES = re.compile(r"####\s*([^\n]+)")
_LAST_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?(?:/\d+)?")


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _boxed_all(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}`, braces balanced."""
    out, i = [], 0
    while True:
        m = _BOXED.search(text, i)
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
        for pat in (_HASHES, _THE_ANSWER_IS, _ANSWER_LINE):
            hits = pat.findall(region)
            if hits:
                last = hits[-1]  # _ANSWER_LINE: one group per delimiter, the matched one is non-empty
                found = [(last if isinstance(last, str) else "".join(last)).strip()]
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
# LaTeX digit grouping, `11,\! 111` or `14{,}916` (MATH writes golds so): a thousands separator only before
# a group of exactly three digits. Plain `1, 111` stays: that may be a list of two numbers.
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!|\{,\})\s*(?=\d{3}(?!\d))")


@cache_short()  # the same answer strings recur within a group and across steps
def normalise(s: str) -> str:
    s = canonical_unicode(s.strip().strip("$").strip())
    s = _LATEX_THOUSANDS.sub("", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\!", "")
    s = _SQRT_PAREN.sub(r"\\sqrt{\1}", s)
    s = s.strip().rstrip(".").strip()
    return s


# -- scoring ------------------------------------------------------------------------------------------
_POOL_SIZE = max(1, min(int(os.environ.get("RAYZERO_MATH_WORKERS", "2")), os.cpu_count() or 1))
_WORKERS = [MathVerifyWorker() for _ in range(_POOL_SIZE)]  # processes start lazily, on first use
_VERDICTS: dict[tuple[str, str], float | None] = {}  # math-verify is deterministic: memoise its verdicts
_GOLD_OK: dict[tuple[str, float], bool] = {}


@cache_short()
def _gold_known_ok(gold: str) -> bool:
    """Golds math-verify certainly parses to a sympy expression (tests check the grammar's)."""
    return as_number(gold) is not None or exact_value(gold) is not None


@cache_short()  # called per completion: a gold is scored once per sample of its group
def _gold_ok_here(g: str) -> bool:
    """A gold decided without asking math-verify whether it parses: a number or grammar value once its unit
    is off, or a word answer (compared as text)."""
    value, _, text = _parts(g)
    return text is not None or _gold_known_ok(value)


def _gold(gold: Any) -> str:
    return _gold_text(str(gold if gold is not None else ""))


@cache_short()  # a gold is scored once per sample of its group
def _gold_text(gold: str) -> str:
    g = normalise(gold)
    boxed = _boxed_all(g)  # golds stored as "\boxed{...}" (MATH solutions)
    return normalise(boxed[-1]) if boxed else g


@cache_short()
def _parts(s: str) -> tuple[str, str, str | None]:
    """(value, unit, word answer) of a normalised answer (rewards/_forms.py)."""
    value, unit = split_unit(s)
    return value, unit, text_answer(s)


def _decide(g: str, answers: list[str]) -> float | tuple[str, str] | None:
    """The verdict for a parseable gold, or the (gold, pred) pair math-verify must decide."""
    if len(answers) != 1:
        return 0.0  # no answer, or a hedge between several
    pred = answers[0]
    if pred == g:
        return 1.0  # same string, same parse: math-verify's verdict for a parseable gold is equality
    gn, pn = as_number(g), as_number(pred)
    if gn is None or pn is None:  # two plain numbers (the common case) have no unit or word to take off
        (g, g_unit, g_text), (pred, p_unit, p_text) = _parts(g), _parts(pred)
        if g_text is not None and p_text is not None:
            return 1.0 if g_text == p_text else 0.0  # two word answers (`\text{Monday}`, `(C)`)
        if g_unit and p_unit and g_unit != p_unit:
            return 0.0  # `5 cm` is not `5 m`; one side without a unit compares the values
        if pred == g:
            return 1.0
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
    unknown = sorted({v for g, _ in items if g and not _gold_ok_here(g) and ((v := _parts(g)[0]), timeout_s) not in _GOLD_OK})
    for g, resp in zip(unknown, call_all(_WORKERS, [{"gold": g} for g in unknown], timeout_s)):
        if len(_GOLD_OK) >= 100_000:
            _GOLD_OK.clear()
        _GOLD_OK[(g, timeout_s)] = bool(resp and resp.get("gold_ok"))
    out: list = []
    for g, text in items:
        ok = bool(g) and (_gold_ok_here(g) or _GOLD_OK.get((_parts(g)[0], timeout_s), False))
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
    """Factory: `last_number` falls back to the last number when no answer is marked (off by default).
    The math-verify workers start here, in the background: a training run builds its rewards before it
    loads models, so their start-up is hidden instead of stalling the first step with an odd answer."""
    for w in _WORKERS:
        w.prestart()

    def fn(completions, answer, **kw):
        return math_accuracy(completions, answer, last_number=last_number, timeout_s=timeout_s, timeout_score=timeout_score)

    fn.__doc__ = math_accuracy.__doc__
    return fn
