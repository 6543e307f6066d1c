"""Stage 6, filter: task check, exact and near-duplicate removal; every row kept with a reason.

Reads ``id, instruction, response, error``; adds ``valid`` and ``reject_reason`` (``parse``, the adapter's
reason such as ``no_final_answer`` or ``wrong_calculation``, ``exact_duplicate``, ``near_duplicate``, or
``copies_seed``). Near duplicates are found with MinHash LSH (datasketch) over word 3-gram shingles: one
pass, near-linear in the number of rows. Seeds are indexed first, so copies of a seed are dropped too.
"""

from __future__ import annotations

import hashlib
import re

from psi_ray.errors import require
from psi_ray.stages import require_columns

WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def shingles(text: str, n: int = 3) -> set[bytes]:
    words = normalize(text).split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


class NearDuplicateIndex:
    """MinHash LSH over instructions: ``seen(key, text)`` says whether a near-identical text came before."""

    def __init__(self, threshold: float, num_perm: int, seed: int = 1):
        ds = require("datasketch", "near-duplicate filtering")
        self._ds, self.num_perm, self.seed = ds, num_perm, seed
        self.lsh = ds.MinHashLSH(threshold=threshold, num_perm=num_perm)

    def signature(self, text: str):
        m = self._ds.MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch(list(shingles(text)))
        return m

    def query_insert(self, key: str, text: str) -> list[str]:
        sig = self.signature(text)
        hits = self.lsh.query(sig)
        if not hits:
            self.lsh.insert(key, sig)
        return hits


def apply_filters(rows: list[dict], adapter, seeds: list[dict], threshold: float, num_perm: int) -> list[dict]:
    """Rows in, rows out (same order), each with ``valid`` and ``reject_reason``."""
    require_columns("filter", rows, ["id", "instruction", "response", "error"])
    index = NearDuplicateIndex(threshold, num_perm)
    exact: set[str] = set()
    for s in seeds:
        exact.add(hashlib.sha1(normalize(s["instruction"]).encode()).hexdigest())
        index.query_insert(f"seed:{s['seed_id']}", s["instruction"])
    out = []
    for r in rows:
        reason = None
        if r["error"]:
            reason = r["error"].split(":")[0] if r["error"].startswith(("parse", "engine")) else r["error"]
        else:
            reason = adapter.check(r["instruction"], r["response"])
        if reason is None:
            digest = hashlib.sha1(normalize(r["instruction"]).encode()).hexdigest()
            if digest in exact:
                reason = "exact_duplicate"
            else:
                exact.add(digest)
                hits = index.query_insert(r["id"], r["instruction"])
                if hits:
                    reason = "copies_seed" if any(h.startswith("seed:") for h in hits) else "near_duplicate"
        out.append({**r, "valid": reason is None, "reject_reason": reason})
    return out
