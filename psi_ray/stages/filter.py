"""Stage 6, filter: task check, answer agreement, decontamination, seed copies, duplicates; rows kept with
a reason.

Reads ``id, instruction, response, error`` (and ``verified`` when the verify stage ran); adds ``valid`` and
``reject_reason``, checked in this order: ``parse`` / ``engine``; the adapter's content check (GSM8K:
``wrong_equation``, ``answer_mismatch``, ``bad_calculation``, ...); ``unverified`` (self-consistency
disagreed); ``contaminated`` (the question shares a 13-gram with an eval question, or its number-blind word
3-gram Jaccard with one reaches ``filter.decontaminate_threshold``, the GPT-3 / lm-eval convention plus a
paraphrase guard); ``copies_seed`` (same or near the same as a seed, or sharing a 13-gram with one: a seed
with a sentence appended is still a copy); ``exact_duplicate``; ``near_duplicate``. Near duplicates: MinHash
over word 3-gram shingles into datasketch's ``MinHashLSHBloom`` (bands kept as Bloom filters sized for the
expected row count), so one pass is near-linear in time and fixed in memory however many rows stream
through. Rows stream part by part; nothing holds the whole table.
"""

from __future__ import annotations

import hashlib
import re
import warnings

import numpy as np

from psi_ray.errors import require
from psi_ray.stages import require_columns

WORD = re.compile(r"\w+")
DIGITS = re.compile(r"\d+")
NGRAM = 13  # the GPT-3 / lm-eval decontamination n-gram
REASONS = ("parse", "engine", "unverified", "contaminated", "copies_seed", "exact_duplicate", "near_duplicate")


def normalize(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def ngram_keys(text: str, n: int = NGRAM) -> set[int]:
    """Hashes of the normalized word n-grams of ``text`` (none when it is shorter than ``n`` words)."""
    words = normalize(text).split()
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


class NgramIndex:
    """The 13-grams of a fixed set of texts (seeds, eval questions), with exact normalized texts for the
    ones too short to have a 13-gram."""

    def __init__(self, texts: list[str], n: int = NGRAM):
        self.n, self.grams, self.whole = n, set(), set()
        for t in texts:
            keys = ngram_keys(t, n)
            self.grams |= keys
            if not keys:
                self.whole.add(normalize(t))

    def hits(self, text: str) -> bool:
        return normalize(text) in self.whole or not self.grams.isdisjoint(ngram_keys(text, self.n))


class Decontaminator:
    """Eval questions a generated question must not repeat: shared 13-grams, or number-blind word 3-gram
    Jaccard at or above ``threshold`` (MinHash LSH for candidates, exact Jaccard to confirm)."""

    def __init__(self, questions: list[str], threshold: float, num_perm: int = 64, seed: int = 1):
        ds = require("datasketch", "decontamination", package="datasketch[bloom]")
        self._ds, self.num_perm, self.seed, self.threshold = ds, num_perm, seed, threshold
        template = ds.MinHash(num_perm=num_perm, seed=seed)
        self._perms, self._scheme = template.permutations, template.scheme
        self.ngrams = NgramIndex(questions)
        self.lsh = ds.MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sets: list[set[bytes]] = []
        for i, q in enumerate(questions):
            sh = set(shingles(self.blind(q)))
            self.sets.append(sh)
            self.lsh.insert(i, self._sig(sh))

    @staticmethod
    def blind(text: str) -> str:
        """Numbers masked: a test question with its numbers changed is still that test question."""
        return DIGITS.sub("0", text)

    def _sig(self, sh):
        m = self._ds.MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self._perms,
                             scheme=self._scheme)
        m.update_batch(list(sh))
        return m

    def contaminated(self, text: str) -> bool:
        if self.ngrams.hits(text):
            return True
        sh = set(shingles(self.blind(text)))
        for i in self.lsh.query(self._sig(sh)):
            other = self.sets[i]
            if len(sh & other) / len(sh | other) >= self.threshold:
                return True
        return False


def shingles(text: str, n: int = 3) -> list[bytes]:
    words = normalize(text).split()
    if len(words) < n:
        return [" ".join(words).encode()]
    return list({" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)})


class Deduper:
    """Exact (hash of normalized text) and near (MinHash LSH) duplicate detection in bounded memory."""

    def __init__(self, threshold: float, num_perm: int, capacity: int, seed: int = 1, seed_capacity: int = 10_000):
        ds = require("datasketch", "near-duplicate filtering", package="datasketch[bloom]")
        bloom = require("pybloomfilter", "near-duplicate filtering", package="datasketch[bloom]")
        self._ds, self.num_perm, self.seed = ds, num_perm, seed
        template = ds.MinHash(num_perm=num_perm, seed=seed)
        self._perms, self._scheme = template.permutations, template.scheme  # shared: building them is costly
        capacity = max(capacity, 1000)
        self.exact = bloom.BloomFilter(capacity, 1e-7)
        seed_capacity = max(seed_capacity, 1000)  # sized for the seeds, so a large seed set keeps its error rate
        self.seed_exact = bloom.BloomFilter(seed_capacity, 1e-7)
        self.seed_ngrams = NgramIndex([])
        with warnings.catch_warnings():  # in memory on purpose: the index lives for one pass only
            warnings.filterwarnings("ignore", message="Creating LSHBloom index without save directory")
            self.near = ds.MinHashLSHBloom(threshold=threshold, num_perm=num_perm, n=capacity, fp=1e-6)
            self.seed_near = ds.MinHashLSHBloom(threshold=threshold, num_perm=num_perm, n=seed_capacity, fp=1e-6)

    def signature(self, text: str):
        m = self._ds.MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self._perms,
                               scheme=self._scheme)
        m.update_batch(shingles(text))
        return m

    def band_keys(self, sig) -> list[int]:
        """The LSH index's key of each band of ``sig``, as ``MinHashLSHBloom`` computes it (the band's hash
        values summed in uint64, modulo 2**61 - 1): computed once per row, where the row is checked, so the
        in-order pass only looks keys up."""
        b, r = self.near.b, self.near.r
        sums = sig.hashvalues[: b * r].astype(np.uint64).reshape(b, r).sum(axis=1, dtype=np.uint64)
        return [int(k) for k in sums % MERSENNE_61]

    @staticmethod
    def _key(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(normalize(text).encode(), digest_size=8).digest(), "little") >> 1

    def add_seeds(self, texts: list[str]) -> None:
        for text in texts:
            self.seed_exact.add(self._key(text))
            _lsh_add(self.seed_near, self.band_keys(self.signature(text)))
        self.seed_ngrams = NgramIndex(texts)

    def keys(self, text: str) -> tuple[str | None, int, list[int]]:
        """What needs no other generated row: ``copies_seed`` or None, then the row's exact key and band keys
        for :meth:`remember`. Safe to run on copies of this object in parallel."""
        key, bands = self._key(text), self.band_keys(self.signature(text))
        if key in self.seed_exact or _lsh_has(self.seed_near, bands) or self.seed_ngrams.hits(text):
            return "copies_seed", key, bands
        return None, key, bands

    def remember(self, key: int, bands: list[int]) -> str | None:
        """The in-order part: the duplicate reason for a row with these keys, or None (and then it is
        remembered, so a later copy is the duplicate)."""
        if key in self.exact:
            return "exact_duplicate"
        if _lsh_has(self.near, bands):
            return "near_duplicate"
        self.exact.add(key)
        _lsh_add(self.near, bands)
        return None

    def check(self, text: str) -> str | None:
        """The duplicate reason for ``text``, or None (and then it is remembered)."""
        seed, key, bands = self.keys(text)
        return seed or self.remember(key, bands)


MERSENNE_61 = np.uint64((1 << 61) - 1)


def _lsh_has(lsh, bands: list[int]) -> bool:
    """Whether any band key is in ``lsh`` (a ``MinHashLSHBloom``): its ``query`` without re-hashing."""
    return any(k in t.bloom_filter for k, t in zip(bands, lsh.hashtables, strict=True))


def _lsh_add(lsh, bands: list[int]) -> None:
    """``lsh.insert`` from band keys already computed."""
    for k, t in zip(bands, lsh.hashtables, strict=True):
        t.bloom_filter.add(k)


def row_check(row: dict, adapter, dedup: Deduper, decontam: Decontaminator | None = None) \
        -> tuple[str | None, int, list[int]]:
    """Every check that needs only the row itself, in the filter's order: (reason or None, exact key, band
    keys). Runs in parallel; :meth:`Deduper.remember` then decides duplicates in row order."""
    if row["error"]:
        return row["error"].split(":")[0], 0, []
    reason = adapter.check(row["instruction"], row["response"])
    if reason:
        return reason, 0, []
    if row.get("verified") is False:
        return "unverified", 0, []
    if decontam is not None and decontam.contaminated(row["instruction"]):
        return "contaminated", 0, []
    return dedup.keys(row["instruction"])


def reject_reason(row: dict, adapter, dedup: Deduper, decontam: Decontaminator | None = None) -> str | None:
    reason, key, bands = row_check(row, adapter, dedup, decontam)
    return reason or dedup.remember(key, bands)


def apply_filters(rows: list[dict], adapter, dedup: Deduper, decontam: Decontaminator | None = None) -> list[dict]:
    """Rows in, rows out (same order), each with ``valid`` and ``reject_reason``."""
    require_columns("filter", rows, ["id", "instruction", "response", "error"])
    out = []
    for r in rows:
        reason = reject_reason(r, adapter, dedup, decontam)
        out.append({**r, "valid": reason is None, "reject_reason": reason})
    return out


def make_deduper(seeds: list[dict], threshold: float, num_perm: int, capacity: int) -> Deduper:
    dedup = Deduper(threshold, num_perm, capacity, seed_capacity=len(seeds))
    dedup.add_seeds([s["instruction"] for s in seeds])
    return dedup
