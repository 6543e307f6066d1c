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

import functools
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


def blind(normalized: str) -> str:
    """Numbers masked: a test question with its numbers changed is still that test question."""
    return DIGITS.sub("0", normalized)


def gram_keys(words: list[str], n: int = NGRAM) -> set[int]:
    """Hashes of the word n-grams of ``words`` (none when there are fewer than ``n``)."""
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


def ngram_keys(text: str, n: int = NGRAM) -> set[int]:
    """Hashes of the normalized word n-grams of ``text`` (none when it is shorter than ``n`` words)."""
    return gram_keys(normalize(text).split(), n)


def shingles_of(normalized: str, n: int = 3) -> list[bytes]:
    """The distinct word ``n``-gram shingles of a normalized text (the text itself when it is shorter)."""
    words = normalized.split()
    if len(words) < n:
        return [" ".join(words).encode()]
    return list({" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)})


def shingles(text: str, n: int = 3) -> list[bytes]:
    return shingles_of(normalize(text), n)


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
        return self.hits_normalized(normalize(text))

    def hits_normalized(self, normalized: str) -> bool:
        return normalized in self.whole or not self.grams.isdisjoint(gram_keys(normalized.split(), self.n))


MINHASH_SCHEME = "affine32"  # what MinHasher reproduces; pinned, so a new library default cannot change it
MERSENNE_61 = np.uint64((1 << 61) - 1)
SHINGLES_PER_PASS = 1 << 15
"""Shingles hashed and permuted in one numpy pass: 32K x 64 permutations x 4 bytes is 8 MB, however many texts."""


class MinHasher:
    """datasketch's ``MinHash`` (scheme ``affine32``: SHA-1 32-bit shingle hashes, MurmurHash3's finalizer,
    affine permutations) computed for many texts in one numpy pass: the same signatures as one ``MinHash``
    object per text (unit-tested against the library), at a fraction of the cost per row, since the
    filter computes two signatures for every generated row."""

    def __init__(self, num_perm: int, seed: int = 1):
        ds = require("datasketch", "MinHash signatures", package="datasketch[bloom]")
        template = ds.MinHash(num_perm=num_perm, seed=seed, scheme=MINHASH_SCHEME)
        self.num_perm, self.seed = num_perm, seed
        self.a, self.b = (np.asarray(p, dtype=np.uint32) for p in template.permutations)
        self._hash = functools.lru_cache(maxsize=1 << 16)(ds.hashfunc.sha1_hash32)  # shingles recur across rows

    def signatures(self, shingle_lists: list[list[bytes]]) -> np.ndarray:
        """One row of ``num_perm`` uint32 minima per list of shingles (each list non-empty). Lists go through in
        chunks of about :data:`SHINGLES_PER_PASS` shingles, so memory stays bounded for any number of texts."""
        if any(not sh for sh in shingle_lists):
            raise ValueError("every text needs at least one shingle (shingles_of gives an empty text one)")
        out, chunk, size = [], [], 0
        for sh in shingle_lists:
            chunk.append(sh)
            size += len(sh)
            if size >= SHINGLES_PER_PASS:
                out.append(self._pass(chunk))
                chunk, size = [], 0
        if chunk or not out:
            out.append(self._pass(chunk))
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _pass(self, shingle_lists: list[list[bytes]]) -> np.ndarray:
        if not shingle_lists:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        h = self._hash
        hv = np.fromiter((h(s) for sh in shingle_lists for s in sh), dtype=np.uint32)
        hv ^= hv >> np.uint32(16)
        hv *= np.uint32(0x85EBCA6B)
        hv ^= hv >> np.uint32(13)
        hv *= np.uint32(0xC2B2AE35)
        hv ^= hv >> np.uint32(16)
        starts = np.cumsum([0] + [len(sh) for sh in shingle_lists[:-1]])
        return np.minimum.reduceat(hv[:, None] * self.a + self.b, starts, axis=0)


def band_key_matrix(sigs: np.ndarray, b: int, r: int) -> list[list[int]]:
    """Each signature's key per LSH band, as ``MinHashLSHBloom`` computes it (the band's hash values summed in
    uint64, modulo 2**61 - 1)."""
    n = sigs.shape[0]
    sums = sigs[:, : b * r].astype(np.uint64).reshape(n, b, r).sum(axis=2, dtype=np.uint64)
    return (sums % MERSENNE_61).tolist()


class Decontaminator:
    """Eval questions a generated question must not repeat: shared 13-grams, or number-blind word 3-gram
    Jaccard at or above ``threshold`` (MinHash LSH for candidates, exact Jaccard to confirm). Candidates are the
    questions that share a whole band of the signature, over the bands ``MinHashLSH`` picks for the threshold:
    the candidates its ``query`` returns."""

    def __init__(self, questions: list[str], threshold: float, num_perm: int = 64, seed: int = 1):
        ds = require("datasketch", "decontamination", package="datasketch[bloom]")
        self.threshold = threshold
        self.hasher = MinHasher(num_perm, seed)
        lsh = ds.MinHashLSH(threshold=threshold, num_perm=num_perm)  # the library picks the bands for threshold
        self.b, self.r = lsh.b, lsh.r
        self.ngrams = NgramIndex(questions)
        self.sets = [set(shingles_of(blind(normalize(q)))) for q in questions]
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.b)]
        for i, keys in enumerate(self._bands(self.hasher.signatures([list(s) for s in self.sets]))):
            for bucket, k in zip(self.buckets, keys, strict=True):
                bucket.setdefault(k, []).append(i)

    def _bands(self, sigs: np.ndarray) -> list[list[bytes]]:
        """Each signature's bands, as bytes: equal exactly when the bands are equal."""
        bands = np.ascontiguousarray(sigs[:, : self.b * self.r]).view(np.dtype((np.void, sigs.itemsize * self.r)))
        return bands.reshape(sigs.shape[0], self.b).tolist()

    def contaminated(self, text: str) -> bool:
        return self.contaminated_normalized([normalize(text)])[0]

    def contaminated_normalized(self, norms: list[str]) -> list[bool]:
        """For each normalized text, whether it repeats an eval question; one vectorized MinHash pass for all."""
        out = [self.ngrams.hits_normalized(n) for n in norms]
        todo = [i for i, hit in enumerate(out) if not hit]
        sets = [set(shingles_of(blind(norms[i]))) for i in todo]
        sigs = self.hasher.signatures([list(s) for s in sets])
        for i, sh, keys in zip(todo, sets, self._bands(sigs), strict=True):
            candidates = {q for bucket, k in zip(self.buckets, keys, strict=True) for q in bucket.get(k, ())}
            out[i] = any(len(sh & self.sets[q]) / len(sh | self.sets[q]) >= self.threshold for q in candidates)
        return out


class Deduper:
    """Exact (hash of normalized text) and near (MinHash LSH) duplicate detection in bounded memory."""

    def __init__(self, threshold: float, num_perm: int, capacity: int, seed: int = 1, seed_capacity: int = 10_000):
        ds = require("datasketch", "near-duplicate filtering", package="datasketch[bloom]")
        bloom = require("pybloomfilter", "near-duplicate filtering", package="datasketch[bloom]")
        self.hasher = MinHasher(num_perm, seed)
        capacity = max(capacity, 1000)
        self.exact = bloom.BloomFilter(capacity, 1e-7)
        seed_capacity = max(seed_capacity, 1000)  # sized for the seeds, so a large seed set keeps its error rate
        self.seed_exact = bloom.BloomFilter(seed_capacity, 1e-7)
        self.seed_ngrams = NgramIndex([])
        with warnings.catch_warnings():  # in memory on purpose: the index lives for one pass only
            warnings.filterwarnings("ignore", message="Creating LSHBloom index without save directory")
            self.near = ds.MinHashLSHBloom(threshold=threshold, num_perm=num_perm, n=capacity, fp=1e-6)
            self.seed_near = ds.MinHashLSHBloom(threshold=threshold, num_perm=num_perm, n=seed_capacity, fp=1e-6)

    def band_keys_many(self, norms: list[str]) -> list[list[int]]:
        """The LSH index's key of each band of each normalized text's MinHash, computed where the row is
        checked, so the in-order pass only looks keys up."""
        sigs = self.hasher.signatures([shingles_of(n) for n in norms])
        return band_key_matrix(sigs, self.near.b, self.near.r)

    @staticmethod
    def _key(normalized: str) -> int:
        return int.from_bytes(hashlib.blake2b(normalized.encode(), digest_size=8).digest(), "little") >> 1

    def add_seeds(self, texts: list[str]) -> None:
        norms = [normalize(t) for t in texts]
        for norm, bands in zip(norms, self.band_keys_many(norms), strict=True):
            self.seed_exact.add(self._key(norm))
            _lsh_add(self.seed_near, bands)
        self.seed_ngrams = NgramIndex(texts)

    def keys(self, text: str) -> tuple[str | None, int, list[int]]:
        return self.keys_normalized([normalize(text)])[0]

    def keys_normalized(self, norms: list[str]) -> list[tuple[str | None, int, list[int]]]:
        """What needs no other generated row, per normalized text: ``copies_seed`` or None, then the text's exact
        key and band keys for :meth:`remember`. Safe to run on copies of this object in parallel."""
        out = []
        for norm, bands in zip(norms, self.band_keys_many(norms), strict=True):
            key = self._key(norm)
            seed = key in self.seed_exact or _lsh_has(self.seed_near, bands) or self.seed_ngrams.hits_normalized(norm)
            out.append(("copies_seed" if seed else None, key, bands))
        return out

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


def _lsh_has(lsh, bands: list[int]) -> bool:
    """Whether any band key is in ``lsh`` (a ``MinHashLSHBloom``): its ``query`` without re-hashing."""
    return any(k in t.bloom_filter for k, t in zip(bands, lsh.hashtables, strict=True))


def _lsh_add(lsh, bands: list[int]) -> None:
    """``lsh.insert`` from band keys already computed."""
    for k, t in zip(bands, lsh.hashtables, strict=True):
        t.bloom_filter.add(k)


def own_reason(row: dict, adapter) -> str | None:
    """The checks of one row that need neither other rows nor eval questions: engine or parse error, the
    adapter's content check, self-consistency."""
    if row["error"]:
        return row["error"].split(":")[0]
    reason = adapter.check(row["instruction"], row["response"])
    if reason:
        return reason
    return "unverified" if row.get("verified") is False else None


def check_rows(rows: list[dict], adapter, dedup: Deduper, decontam: Decontaminator | None = None) \
        -> list[tuple[str | None, int, list[int]]]:
    """Every check that needs only the row itself, in the filter's order, per row: (reason or None, exact key,
    band keys). Runs in parallel on parts of a table; :meth:`Deduper.remember` then decides duplicates in row
    order. The MinHash signatures of all rows still in the running are computed together (one numpy pass for
    decontamination, one for duplicates)."""
    out: list[tuple[str | None, int, list[int]]] = [(own_reason(r, adapter), 0, []) for r in rows]
    todo = [i for i, (reason, _, _) in enumerate(out) if reason is None]
    norm = {i: normalize(rows[i]["instruction"]) for i in todo}  # once, for both indexes
    if decontam is not None:
        flags = decontam.contaminated_normalized([norm[i] for i in todo])
        for i in (i for i, hit in zip(todo, flags, strict=True) if hit):
            out[i] = ("contaminated", 0, [])
        todo = [i for i, hit in zip(todo, flags, strict=True) if not hit]
    for i, keys in zip(todo, dedup.keys_normalized([norm[i] for i in todo]), strict=True):
        out[i] = keys
    return out


def apply_filters(rows: list[dict], adapter, dedup: Deduper, decontam: Decontaminator | None = None) -> list[dict]:
    """Rows in, rows out (same order), each with ``valid`` and ``reject_reason``."""
    require_columns("filter", rows, ["id", "instruction", "response", "error"])
    out = []
    for r, (reason, key, bands) in zip(rows, check_rows(rows, adapter, dedup, decontam), strict=True):
        reason = reason or dedup.remember(key, bands)
        out.append({**r, "valid": reason is None, "reject_reason": reason})
    return out


def make_deduper(seeds: list[dict], threshold: float, num_perm: int, capacity: int) -> Deduper:
    dedup = Deduper(threshold, num_perm, capacity, seed_capacity=len(seeds))
    dedup.add_seeds([s["instruction"] for s in seeds])
    return dedup
