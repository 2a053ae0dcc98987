"""Answer forms that mean the same value, made one before rewards/math.py compares them.

Models (and datasets) write one answer in many ways that math-verify does not all accept: Unicode math
(`−5`, `2√3`, `π`, `½`, `°`), digit groups with spaces (`10 000`, `10\\,000`), whole answers wrapped in
`\\text{}`/`\\textbf{}`/`\\mathrm{}`, and units: a currency sign, degrees, a `\\text{ cm}` or plain unit
words after a number (`18 dollars`, `72 clips`). `canonical_unicode` rewrites the first kinds into
LaTeX; `split_unit` takes a unit off the value, so that `18 dollars` is compared as `18`.

No false positives by construction: a unit is only taken off when what is left is a complete value, never
words that change the value (`5 thousand`, `2 pi`, `3 squared`, `half`, `or`, `and`, `not`), and when
both answers carry a unit the units must agree (`5 cm` is not `5 m`; rewards/math.py scores that 0).
"""

from __future__ import annotations

import re

from rewards._exact import as_number, cache_short

_UNICODE = {"−": "-", "π": "\\pi ", "∞": "\\infty ", "×": "\\times ", "·": "\\cdot ", "°": "^\\circ", "≤": "\\le ",
            "≥": "\\ge ", "½": "\\frac{1}{2}", "¼": "\\frac{1}{4}", "¾": "\\frac{3}{4}", "⅓": "\\frac{1}{3}",
            "⅔": "\\frac{2}{3}", "\u2009": " ", "\u202f": " ", "\u00a0": " "}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_ROOT = re.compile(r"√\s*(\d+(?:\.\d+)?|[a-zA-Z]|\{[^{}]*\}|\([^()]*\))")
# digit groups split by spaces or LaTeX spacing: `10 000`, `10\,000`, `1\ 234\ 567` (groups of exactly three)
_SPACED_THOUSANDS = re.compile(r"(?<![\d.,])(\d{1,3})((?:(?:\\[,;: ]|~|\s)+\d{3})+)(?![\d])")
_SPACING = re.compile(r"\\[,;: !]|~|\s")
_WRAPPED = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf|mbox|textit|mathit)\s*\{([^{}]*)\}$")
_TEXT_ANSWER = re.compile(r"\(?([A-Za-z][A-Za-z '-]*?)\)?")


@cache_short()
def canonical_unicode(s: str) -> str:
    """Unicode math as LaTeX, digit groups joined, a whole-answer `\\text{...}` wrapper removed."""
    if not s.isascii():
        s = _ROOT.sub(lambda m: "\\sqrt{" + m.group(1).strip("{}()") + "}", s)
        s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s).strip()
    if " " in s or "\\" in s or "~" in s:
        s = _SPACED_THOUSANDS.sub(lambda m: m.group(1) + _SPACING.sub("", m.group(2)), s)
    m = _WRAPPED.match(s)
    if m and re.search(r"\d", m.group(1)):  # `\text{5 apples}`; a wrapped word stays a word (text_answer)
        s = m.group(1).strip()
    return s


@cache_short()
def text_answer(s: str) -> str | None:
    """A word answer (`\text{Monday}`, `(C)`, `\textbf{(B)}`, `yes`) as compared: wrappers and the choice
    parentheses removed, words of two letters or more in lower case; None for anything else. math-verify
    would read `Monday` as the product M·o·n·d·a·y (so `odd` = `dod`) and `No` ≠ `no`."""
    for _ in range(3):
        m = _WRAPPED.match(s.strip())
        if not m:
            break
        s = m.group(1)
    m = _TEXT_ANSWER.fullmatch(s.strip())
    if not m:
        return None
    words = " ".join(m.group(1).split())
    return words if len(words) == 1 else words.lower()


# Words after a number that change its value or make it something else: never taken as a unit.
_NOT_UNITS = frozenset("""thousand thousands million millions billion billions trillion hundred hundreds dozen dozens
half halves third thirds quarter quarters fourth fourths fifth fifths sixth sixths tenth tenths hundredth hundredths
thousandth thousandths squared cubed factorial pi or and to not no less more than times plus minus over divided by
of per each out root roots sqrt percentile""".split())
_SPACE = r"(?:\s|\\[,;: !]|~)*"
_TEXT_UNIT = re.compile(r"^(.*?[^\s\\,;:~])" + _SPACE + r"\\(?:text|mbox|mathrm|textrm|rm)\s*\{[\s~]*([a-zA-Z][a-zA-Z .~]*?)\s*\}((?:\^\{?[23]\}?)?)$")
_WORD_UNIT = re.compile(r"^(.*?[\d}])" + _SPACE + r"([a-zA-Z]{2,}(?:\s+[a-zA-Z]{2,}){0,2})((?:\^\{?[23]\}?)?)$")
_DEGREES = re.compile(r"^(.*?)" + _SPACE + r"\^\s*\{?\s*\\circ\s*\}?(?:" + _SPACE + r"(?:\\text\{\s*[CF]\s*\}|[CF]))?$")
_CURRENCY = re.compile(r"^(?:\\\$|\\text\{\s*\\\$\s*\}|\$)" + _SPACE)
_CANON_UNIT = {"$": "dollar", "dollars": "dollar", "usd": "dollar", "degrees": "degree", "deg": "degree", "inches": "inch",
               "cents": "cent", "feet": "foot", "ft": "foot", "percent": "percent", "%": "percent"}


def _unit_name(words: str) -> str:
    w = " ".join(words.lower().replace("~", " ").split())
    if w in _CANON_UNIT:
        return _CANON_UNIT[w]
    return " ".join(x[:-1] if len(x) > 3 and x.endswith("s") and not x.endswith("ss") else x for x in w.split())


def _is_value(s: str) -> bool:
    """A value worth comparing on its own: a number (also `1,000`) or LaTeX math with no words left in it."""
    if as_number(s) is not None or re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        return True
    return bool(s) and not re.search(r"[a-zA-Z]{2,}", re.sub(r"\\[a-zA-Z]+", "", s)) and s[-1] not in "+-*/=^_({[,"


@cache_short()
def split_unit(s: str) -> tuple[str, str]:
    """(value, unit) of a normalised answer; unit "" when it has none. `\\$18.00` -> ("18.00", "dollar"),
    `90^\\circ` -> ("90", "degree"), `5 \\text{ cm}^2` -> ("5", "cm^2"), `72 clips` -> ("72", "clip")."""
    value, unit = s.strip(), ""
    m = _CURRENCY.match(value)
    if m and _is_value(value[m.end():].strip()):
        return value[m.end():].strip(), "dollar"
    m = _DEGREES.match(value)
    if m and _is_value(m.group(1).strip()):
        return m.group(1).strip(), "degree"
    for pat in (_TEXT_UNIT, _WORD_UNIT):
        m = pat.match(value)
        if m:
            words = m.group(2).strip()
            if any(w.lower() in _NOT_UNITS for w in words.replace("~", " ").split()) or not words:
                return value, ""
            rest = m.group(1).strip()
            c = _CURRENCY.match(rest)  # `\$5 \text{ each}`: the currency sign names the unit
            if c:
                rest, words = rest[c.end():].strip(), "dollar"
            if _is_value(rest):
                unit = _unit_name(words) + (m.group(3).replace("{", "").replace("}", "") if m.group(3) else "")
                return rest, unit
            return value, ""
    return value, unit
