"""Exact arithmetic with bounded cost, and the equations a worked solution writes.

Model output is untrusted input: ``<<2**2**2**2**2>>``, a 1,000-deep parenthesised expression or a
5,000-digit number must be rejected fast, never hang or crash a stage (and a crash on a saved shard would
make every resume fail on the same row). So expressions are read by a small hand-written parser (no
``ast``/``eval``, no recursion-limit surprises) with limits on length, nesting, digits and exponents, and
every failure is an :class:`ArithmeticError` the task check turns into a reject reason.

:func:`equations` finds what a solution claims to compute: GSM8K calculator steps ``<<a op b=c>>`` and
equations written inline (``16 + 16 = 22``, ``$3 x 2 = $6``, ``20% * 50 = 10``, ``2 hours * 3 = 6 hours``).
An inline equation counts only when its left side is a complete expression with at least one operator, so
prose such as ``Let x = 5`` or ``2x + 3 = 7`` is left alone rather than misread.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction

MAX_EXPR_CHARS = 200  # longer "expressions" are runaway output, not a calculation
MAX_DEPTH = 20  # nesting of parentheses and unary signs
MAX_DIGITS = 24  # digits in one number
MAX_EXPONENT = 12  # |n| in a ** n
MAX_BITS = 512  # numerator and denominator of every intermediate value


class ArithmeticCheckError(ArithmeticError):
    """An expression that cannot be evaluated (not arithmetic, unbalanced, division by zero)."""


class ArithmeticLimitError(ArithmeticCheckError):
    """An expression past the limits: runaway model output, never a real calculation."""


_TOKEN = re.compile(r"\s*(?:(\d[\d,]*(?:\.\d+)?|\.\d+)(%?)|(\*\*|//|\^|[-+*/x×÷()]))", re.IGNORECASE)


def _tokens(expr: str) -> list[tuple[str, object]]:
    if len(expr) > MAX_EXPR_CHARS:
        raise ArithmeticLimitError("expression too long")
    text = expr.replace("$", "").replace("\u2212", "-").replace("\u2013", "-").strip()
    out: list[tuple[str, object]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ArithmeticCheckError(f"unexpected {text[pos:pos + 10]!r}")
        pos = m.end()
        if m.group(1):
            digits = m.group(1).replace(",", "")
            if len(digits) - digits.count(".") > MAX_DIGITS:
                raise ArithmeticLimitError("number too long")
            value = _decimal(digits)
            out.append(("num", Fraction(value) / 100 if m.group(2) else value))
        else:
            op = {"x": "*", "X": "*", "×": "*", "÷": "/", "^": "**"}.get(m.group(3), m.group(3))
            out.append(("op", op))
    return out


def _decimal(digits: str) -> int | Fraction:
    """``"12.50"`` as 25/2, ``"12"`` as the int 12: whole numbers stay ints, so a calculation of whole numbers
    runs on Python ints (several times faster than on ``Fraction``) until a division or a decimal needs one."""
    whole, _, frac = digits.partition(".")
    return Fraction(int(whole + frac), 10 ** len(frac)) if frac else int(whole)


def _check_size(v: int | Fraction) -> int | Fraction:
    if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:
        raise ArithmeticLimitError("value too large")
    return v


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*; unary := ('-'|'+') unary | power;
    power := atom ('**' unary)?; atom := number | '(' expr ')'. Depth-limited, iterative where it can be.
    Values are ints or Fractions (exact either way); the two operations that could turn ints into a float, a
    division and a negative power, go through ``Fraction``."""

    def __init__(self, tokens):
        self.t, self.i, self.depth = tokens, 0, 0

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else ("end", None)

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ArithmeticLimitError("expression nested too deeply")

    def expr(self) -> int | Fraction:
        value = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            rhs = self.term()
            value = _check_size(value + rhs if op == "+" else value - rhs)
        return value

    def term(self) -> int | Fraction:
        value = self.unary()
        while self.peek() in (("op", "*"), ("op", "/"), ("op", "//")):
            op = self.take()[1]
            rhs = self.unary()
            if op != "*" and rhs == 0:
                raise ArithmeticCheckError("division by zero")
            value = _check_size(value * rhs if op == "*" else Fraction(value) / rhs if op == "/" else value // rhs)
        return value

    def unary(self) -> int | Fraction:
        if self.peek() in (("op", "-"), ("op", "+")):
            op = self.take()[1]
            self.enter()
            value = self.unary()
            self.depth -= 1
            return -value if op == "-" else value
        return self.power()

    def power(self) -> int | Fraction:
        base = self.atom()
        if self.peek() == ("op", "**"):
            self.take()
            self.enter()
            exp = self.unary()
            self.depth -= 1
            if exp.denominator != 1 or abs(exp) > MAX_EXPONENT:
                raise ArithmeticLimitError("exponent out of range")
            if base == 0 and exp < 0:
                raise ArithmeticCheckError("division by zero")
            return _check_size(Fraction(base) ** int(exp) if exp < 0 else base ** int(exp))
        return base

    def atom(self) -> int | Fraction:
        kind, value = self.take()
        if kind == "num":
            return value
        if (kind, value) == ("op", "("):
            self.enter()
            inner = self.expr()
            self.depth -= 1
            if self.take() != ("op", ")"):
                raise ArithmeticCheckError("unbalanced parentheses")
            return inner
        raise ArithmeticCheckError("expected a number")


@functools.lru_cache(maxsize=8192)
def evaluate(expr: str) -> Fraction:
    """Exact value of ``expr`` (numbers with commas, ``$`` and ``%``; ``+ - * x × / ÷ ** ^`` and parentheses).

    Raises :class:`ArithmeticCheckError` for anything else or anything past the limits. Cached: calculations
    recur (in two ``make run`` outputs, 896 solutions, 1,529 equations had 650 distinct left sides).
    """
    tokens = _tokens(expr)
    if not tokens:
        raise ArithmeticCheckError("empty expression")
    parser = _Parser(tokens)
    value = parser.expr()
    if parser.i != len(tokens):
        raise ArithmeticCheckError("trailing tokens")
    return Fraction(value)


@functools.lru_cache(maxsize=1024)  # holds() and result_of() read each right side; results repeat (small numbers)
def parse_number(text: str) -> Fraction | None:
    """The value of one written number (``$1,200.50``, ``-3``, ``40%`` → 0.4), or None."""
    try:
        tokens = _tokens(text)
    except ArithmeticCheckError:
        return None
    if len(tokens) == 2 and tokens[0] == ("op", "-") and tokens[1][0] == "num":
        return -Fraction(tokens[1][1])
    return Fraction(tokens[0][1]) if len(tokens) == 1 and tokens[0][0] == "num" else None


@dataclass(frozen=True)
class Equation:
    """One claimed computation: ``left`` evaluates to ``right`` (a number as written, or the expression that
    follows it, as in ``3 * 5 = 10 + 5``)."""

    left: str
    right: str
    source: str  # "step" (<<a=b>>) or "inline"
    right_expr: str = ""


STEP = re.compile(r"<<([^<>=]{0,300})=([^<>]{0,100})>>")
# One pass, no backtracking across tokens: a calculator step, a number ($, thousands commas, decimals, %),
# an operator, a parenthesis, "=", a word, space, anything else.
_LEX = re.compile(
    r"(?P<step><<[^<>=]{0,300}=[^<>]{0,100}>>)"
    r"|(?P<num>\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|\$?\.\d+%?)"
    r"|(?P<op>\*\*|//|[-+*/×÷^\u2013\u2212])|(?P<lp>\()|(?P<rp>\))|(?P<eq>=)"
    r"|(?P<word>[^\W\d_][^\W\d_'’]*)|(?P<sp>\s+)|(?P<other>.)"
)
_DASHES = {"\u2013": "-", "\u2212": "-"}


def _lex(line: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, start, end) for every token but spaces; ``x`` between numbers becomes ``*``."""
    toks = [(m.lastgroup, m.group(), m.start(), m.end()) for m in _LEX.finditer(line) if m.lastgroup != "sp"]
    out = []
    for i, (kind, text, a, b) in enumerate(toks):
        after_unit = i > 1 and toks[i - 1][0] == "word" and len(toks[i - 1][1]) > 1 and toks[i - 2][0] == "num"
        if kind == "word" and text in ("x", "X") and 0 < i < len(toks) - 1 \
                and (toks[i - 1][0] in ("num", "rp") or after_unit) and toks[i + 1][0] in ("num", "lp"):
            kind, text = "op", "*"
        out.append((kind, _DASHES.get(text, text), a, b))
    return out


def _unit_run(toks, j: int) -> tuple[int, int] | None:
    """The run of 1-3 words around token ``j`` when it is a unit after a number ("5 dinner rolls + ...",
    "$600/weekday * 5"), as (first, last) token indices; None when the words are prose."""
    a = b = j
    while a > 0 and toks[a - 1][0] == "word":
        a -= 1
    while b + 1 < len(toks) and toks[b + 1][0] == "word":
        b += 1
    if b - a > 2 or any(len(t[1]) < 2 for t in toks[a:b + 1]) or b + 1 >= len(toks):
        return None
    after = toks[b + 1]
    if after[0] not in ("op", "eq") or after[1] == "/":
        return None
    if a > 0 and toks[a - 1][0] == "num":
        return a, b
    if a > 1 and toks[a - 1][1] == "/" and toks[a - 2][0] == "num" and b == a:  # a rate: "$600/weekday"
        return a - 1, b
    return None


def _walk(toks, i: int, step: int) -> list[int]:
    """Token indices of the arithmetic expression that starts at ``i`` and runs in direction ``step``:
    numbers, operators, parentheses; unit words after a number are stepped over and left out."""
    kept: list[int] = []
    j = i
    while 0 <= j < len(toks):
        kind = toks[j][0]
        if kind in ("num", "op", "lp", "rp"):
            kept.append(j)
            j += step
            continue
        run = _unit_run(toks, j) if kind == "word" else None
        if run is None:
            break
        kept = [k for k in kept if not run[0] <= k <= run[1]]
        j = (run[0] if step < 0 else run[1]) + step
    return sorted(kept)


def _text(toks) -> str:
    """The expression the tokens spell; "1 1/2" (a mixed number) reads as (1 + 1/2)."""
    parts: list[str] = []
    i = 0
    while i < len(toks):
        if i + 3 < len(toks) and [t[0] for t in toks[i:i + 4]] == ["num", "num", "op", "num"] \
                and toks[i + 2][1] == "/":
            parts.append(f"({toks[i][1]} + {toks[i + 1][1]} / {toks[i + 3][1]})")
            i += 4
            continue
        parts.append(toks[i][1])
        i += 1
    return " ".join(parts)


def equations(solution: str) -> list[Equation]:
    """Every calculator step and inline equation in ``solution``, in order of appearance.

    Inline equations are read with the calculator annotations removed ("48/2 = <<48/2=24>>24" → "48/2 = 24").
    One linear pass per line; a line of runaway length is skipped.
    """
    found: list[Equation] = []
    for line in solution.split("\n"):
        if len(line) > 2000:
            continue
        toks = _lex(line)
        events: list[tuple[int, Equation]] = []
        for kind, text, a, _ in toks:
            if kind == "step":
                m = STEP.fullmatch(text)
                events.append((a, Equation(m.group(1).strip(), m.group(2).strip(), "step")))
        prose = [t for t in toks if t[0] != "step"]
        for k, (kind, _, a, _) in enumerate(prose):
            if kind == "eq":
                eq = _inline_at(prose, k)
                if eq:
                    events.append((a, eq))
        found.extend(e for _, e in sorted(events, key=lambda x: x[0]))
    return found


def _inline_at(toks, k: int) -> Equation | None:
    """The equation around the ``=`` at token ``k``, when both sides are plain enough to check."""
    left = [toks[i] for i in _walk(toks, k - 1, -1)]
    if not left or left[0][0] not in ("num", "lp") or not any(t[0] == "op" for t in left[1:]):
        return None  # "Let x = 5", "2x + 3 + 4 = 9", "Total = 12": nothing complete computed on the left
    if k + 1 >= len(toks) or toks[k + 1][0] != "num":
        return None
    right = toks[k + 1]
    if k + 2 < len(toks) and toks[k + 2][2] == right[3] and toks[k + 2][0] in ("word", "num"):
        return None  # "= 5A", "= 1.2Y": algebra, not a result
    right_expr = [toks[i] for i in _walk(toks, k + 1, 1)]
    return Equation(_text(left), right[1].strip(), "inline", _text(right_expr))


def holds(eq: Equation) -> bool:
    """Whether the equation is right. A result written with d decimals may be rounded to d decimals; a
    percentage on the right may be meant as a share (``1/4 = 25%``) or as the number of percent
    (``10/40*100 = 25%``); ``3 * 5 = 10 + 5`` holds by its whole right side. Raises
    :class:`ArithmeticCheckError` when the left side cannot be evaluated."""
    value = evaluate(eq.left)
    written = parse_number(eq.right)
    if written is None:
        written = evaluate(eq.right)
    candidates = [written]
    if eq.right.rstrip().endswith("%"):
        candidates.append(written * 100)
    decimals = len(eq.right.split(".")[1].rstrip("%")) if "." in eq.right else 0
    tolerance = Fraction(1, 2 * 10**decimals) if decimals else Fraction(0)
    if any(abs(value - c) <= tolerance for c in candidates):
        return True
    if eq.right_expr and eq.right_expr != eq.right:
        try:
            return evaluate(eq.right_expr) == value
        except ArithmeticCheckError:
            return False
    return False


def result_of(eq: Equation) -> Fraction | None:
    """The number an equation's right side states."""
    return parse_number(eq.right)
