"""Which settings hold secrets, and dumps with their values masked (``config.json``, the dataset card, logs).

A key counts as secret by its words (``api_key``, ``hf_token``, ``apiKey``, ``DB_PASSWORD``); a key that names
*where* a secret lives (``api_key_env``, ``token_path``) does not, so users can still see which variable a job
reads.
"""

from __future__ import annotations

import re

_SECRET_WORDS = {"token", "password", "passwd", "passphrase", "secret", "apikey", "credential", "credentials",
                 "auth", "authorization", "cookie", "privatekey"}
_SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key"), ("session", "key")}
_NAMES_A_PLACE = {"env", "var", "path", "file", "dir", "mode", "type"}  # api_key_env names a variable


def looks_secret(key: str) -> bool:
    """Whether a setting named ``key`` holds a secret: ``api_key``, ``hf_token``, ``apiKey``, ``DB_PASSWORD``,
    but not ``max_tokens``, ``tokenizer`` or ``api_key_env`` (which names the variable the key is in)."""
    words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower())
    if not words or words[-1] in _NAMES_A_PLACE:
        return False
    pairs = zip(words, words[1:], strict=False)
    return any(w in _SECRET_WORDS for w in words) or any(p in _SECRET_PAIRS for p in pairs)


def redact(data):
    """A copy of ``data`` (dicts, lists, scalars) with the values of secret-looking keys masked."""
    if isinstance(data, dict):
        return {k: ("***" if looks_secret(k) and v not in (None, "") else redact(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data
