"""Principle hygiene: the checks that turn a model's bad principle into a rejected row with a reason.

Pure functions shared by stage 2 (low-level principles, and principles loaded from a file) and stage 4
(high-level summaries). A rejected principle keeps its row with ``valid=False`` and a ``reject_reason``; it
is never dropped silently, so a manifest can count what was rejected and why. The reasons, in the order they
are checked (the first that applies wins):

- ``too_short``: under :data:`MIN_CHARS` characters.
- ``too_long``: over :data:`MAX_CHARS` characters.
- ``echoes_prompt``: copies the prompt's own instruction back.
- ``repetition``: a degenerate, looping generation.
- ``numbered_stub``: a step label ("The ninth step: ...", "Step 3:") instead of a principle.

:func:`mark_near_duplicates` is separate because it compares principles with each other, not one with a rule.
"""

from __future__ import annotations

import re

MIN_CHARS = 20
"""Shorter than this is a fragment ("Read twice.", "Check units.") that guides no generation."""
MAX_CHARS = 200
"""The prompts ask for one short sentence; a longer one is a run-on or several principles glued together."""
ECHO_NGRAM = 6
"""Sharing this many consecutive normalized words with the prompt means the model copied the prompt."""
ECHO_CONTAINED = 0.8
"""... or this share of the text's word pairs (bigrams) occurs in the prompt: a lightly edited echo."""
ECHO_MIN_WORDS = 4
"""The bigram test needs at least this many words; shorter texts have too few pairs to judge."""
REPEAT_RUN = 3
"""A word this many times in a row ("classic classic classic") is a generation stuck in a loop."""
REPEAT_NGRAM = 3
"""A word n-gram of this size occurring twice is a repeated phrase: a loop that alternates words."""
MIN_DISTINCT_RATIO = 0.5
"""Fewer distinct words than this share of all words (in a text of :data:`DISTINCT_MIN_WORDS`+ words)."""
DISTINCT_MIN_WORDS = 8
"""Below this many words the distinct-word ratio says little (short sentences repeat "the" legitimately)."""
NEAR_DUPLICATE = 0.8
"""Word-bigram Jaccard similarity at or above which a principle repeats an earlier one."""
SHINGLE = 2
"""Word-shingle size for near-duplicates: principles are ~10 words, so 3-shingles would be too brittle."""

REASONS = ("too_short", "too_long", "echoes_prompt", "repetition", "numbered_stub")

_ORDINALS = ("first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth"
             "|last|final|next|\\d+(?:st|nd|rd|th)")
_NUMBERS = "\\d+|one|two|three|four|five|six|seven|eight|nine|ten"
_LABELS = "step|principle|rule|tip|stage|point"
STUB = re.compile(
    rf"^\W*(?:the\s+)?(?:(?:{_ORDINALS})\s+(?:{_LABELS})\b|(?:{_LABELS})\s*#?\s*(?:{_NUMBERS})\b)", re.I)
"""An ordinal or numbered label at the start: "The ninth step:", "First step", "Step 3:", "Principle 2"."""
LABEL_ONLY = re.compile(r":[\s*_]*$")
"""Ending in a colon: a heading ("Understanding the problem:") whose content, if any, was on other lines."""


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: punctuation, case and markdown do not hide a match."""
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def echoes(text: str, prompt: str) -> bool:
    """Whether ``text`` copies ``prompt``: a shared run of :data:`ECHO_NGRAM` words, or mostly its word pairs.

    Models under a "write principles" instruction sometimes restate the instruction itself ("Write 3 to 5
    general principles that someone should follow ..."), which reads like a principle but says nothing about
    the task. Pass the prompt's own instruction text, not the examples or principles it quotes: a principle
    that shares a generic phrase with a worked solution ("to find the total number of") is not an echo, and
    a summary may legitimately repeat one of the principles it merges.
    """
    tw, pw = words(text), words(prompt)
    if not tw or not pw:
        return False
    if len(tw) >= ECHO_NGRAM and set(ngrams(tw, ECHO_NGRAM)) & set(ngrams(pw, ECHO_NGRAM)):
        return True
    if len(tw) < ECHO_MIN_WORDS:
        return False
    pairs, prompt_pairs = ngrams(tw, 2), set(ngrams(pw, 2))
    return sum(p in prompt_pairs for p in pairs) >= ECHO_CONTAINED * len(pairs)


def repeats(text: str) -> bool:
    """Whether ``text`` loops: a word repeated in a row, a repeated word 3-gram, or few distinct words.

    Sampling from a small or badly prompted model degenerates into loops ("a classic classic classic
    classic"); each test catches one shape of loop that the others miss.
    """
    w = words(text)
    run = 1
    for a, b in zip(w, w[1:], strict=False):
        run = run + 1 if a == b else 1
        if run >= REPEAT_RUN:
            return True
    grams = ngrams(w, REPEAT_NGRAM)
    if len(set(grams)) < len(grams):
        return True
    return len(w) >= DISTINCT_MIN_WORDS and len(set(w)) < MIN_DISTINCT_RATIO * len(w)


def is_stub(text: str) -> bool:
    """Whether ``text`` is a numbered step label rather than a principle.

    Asked for principles, a model sometimes narrates a solution instead ("The first step: ...", "The ninth
    step: Use the example step by step"): steps of one solution, not rules for new problems. A line that is
    only a heading ("Key idea:") is a label whose content, if any, was on other lines.
    """
    t = text.strip()
    return bool(STUB.match(t) or LABEL_ONLY.search(t))


def reject_reason(text: str, prompt: str = "", *, min_chars: int = MIN_CHARS,
                  max_chars: int = MAX_CHARS) -> str | None:
    """Why ``text`` is not a usable principle (one of :data:`REASONS`), or None when it is.

    ``prompt`` is the instruction the model was given (empty: no echo check, as for a user's own file).
    """
    t = (text or "").strip()
    if len(t) < min_chars:
        return "too_short"
    if len(t) > max_chars:
        return "too_long"
    if prompt and echoes(t, prompt):
        return "echoes_prompt"
    if repeats(t):
        return "repetition"
    if is_stub(t):
        return "numbered_stub"
    return None


def _shingles(text: str) -> set[tuple[str, ...]]:
    w = words(text)
    return set(ngrams(w, SHINGLE)) if len(w) >= SHINGLE else {tuple(w)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def mark_near_duplicates(texts: list[str], threshold: float = NEAR_DUPLICATE) -> list[int | None]:
    """For each text, the index of the earlier kept text it nearly repeats (word-shingle Jaccard), or None.

    Several subsets of the same task make M_L write the same principle again in slightly different words;
    copies add nothing to clustering but weight their cluster. The first occurrence stays, later ones point
    to it. Quadratic in the number of texts, which is fine for principles (dozens).
    """
    sh = [_shingles(t) for t in texts]
    out: list[int | None] = []
    for i, s in enumerate(sh):
        out.append(next((j for j in range(i) if out[j] is None and jaccard(s, sh[j]) >= threshold), None))
    return out
