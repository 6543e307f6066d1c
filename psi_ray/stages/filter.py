"""Stage 6, filter: task check, exact and near-duplicate removal; every row kept with a reason.

Reads ``id, instruction, response, error``; adds ``valid`` and ``reject_reason`` (``parse``, ``engine``, the
adapter's reason such as ``no_final_answer`` or ``wrong_calculation``, ``exact_duplicate``, ``near_duplicate``
or ``copies_seed``). Near duplicates: MinHash over word 3-gram shingles into datasketch's ``MinHashLSHBloom``
(LSH bands kept as Bloom filters sized for the expected row count), so one pass costs near-linear time and a
fixed amount of memory however many rows stream through. Seeds go into their own index first, so copies of a
seed are dropped too. Rows stream part by part; nothing holds the whole table.
"""

from __future__ import annotations

import hashlib
import re
import warnings

from psi_ray.errors import require
from psi_ray.stages import require_columns

WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def shingles(text: str, n: int = 3) -> list[bytes]:
    words = normalize(text).split()
    if len(words) < n:
        return [" ".join(words).encode()]
    return list({" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)})


class Deduper:
    """Exact (hash of normalized text) and near (MinHash LSH) duplicate detection in bounded memory."""

    def __init__(self, threshold: float, num_perm: int, capacity: int, seed: int = 1):
        ds = require("datasketch", "near-duplicate filtering", package="datasketch[bloom]")
        bloom = require("pybloomfilter", "near-duplicate filtering", package="datasketch[bloom]")
        self._ds, self.num_perm, self.seed = ds, num_perm, seed
        template = ds.MinHash(num_perm=num_perm, seed=seed)
        self._perms, self._scheme = template.permutations, template.scheme  # shared: building them is costly
        capacity = max(capacity, 1000)
        self.exact = bloom.BloomFilter(capacity, 1e-7)
        self.seed_exact = bloom.BloomFilter(10_000, 1e-7)
        with warnings.catch_warnings():  # in memory on purpose: the index lives for one pass only
            warnings.filterwarnings("ignore", message="Creating LSHBloom index without save directory")
            self.near = ds.MinHashLSHBloom(threshold=threshold, num_perm=num_perm, n=capacity, fp=1e-6)
            self.seed_near = ds.MinHashLSHBloom(threshold=threshold, num_perm=num_perm, n=10_000, fp=1e-6)

    def signature(self, text: str):
        m = self._ds.MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self._perms,
                               scheme=self._scheme)
        m.update_batch(shingles(text))
        return m

    @staticmethod
    def _key(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(normalize(text).encode(), digest_size=8).digest(), "little") >> 1

    def add_seed(self, text: str) -> None:
        self.seed_exact.add(self._key(text))
        self.seed_near.insert(self.signature(text))

    def check(self, text: str) -> str | None:
        """The duplicate reason for ``text``, or None (and then it is remembered)."""
        key, sig = self._key(text), self.signature(text)
        if key in self.seed_exact or self.seed_near.query(sig):
            return "copies_seed"
        if key in self.exact:
            return "exact_duplicate"
        if self.near.query(sig):
            return "near_duplicate"
        self.exact.add(key)
        self.near.insert(sig)
        return None


def reject_reason(row: dict, adapter, dedup: Deduper) -> str | None:
    if row["error"]:
        return row["error"].split(":")[0]
    return adapter.check(row["instruction"], row["response"]) or dedup.check(row["instruction"])


def apply_filters(rows: list[dict], adapter, dedup: Deduper) -> list[dict]:
    """Rows in, rows out (same order), each with ``valid`` and ``reject_reason``."""
    require_columns("filter", rows, ["id", "instruction", "response", "error"])
    out = []
    for r in rows:
        reason = reject_reason(r, adapter, dedup)
        out.append({**r, "valid": reason is None, "reject_reason": reason})
    return out


def make_deduper(seeds: list[dict], threshold: float, num_perm: int, capacity: int) -> Deduper:
    dedup = Deduper(threshold, num_perm, capacity)
    for s in seeds:
        dedup.add_seed(s["instruction"])
    return dedup
