"""Reviewer password hashes: stdlib scrypt with a random salt, compared in constant time.

Stored form (the config's `web.reviewers[].password_hash`): ``scrypt$N$r$p$SALT$HASH`` with SALT and
HASH in unpadded URL-safe base64. Made by ``dicomnode web hash-password``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# OWASP's Password Storage Cheat Sheet lists N=2^17 r=8 p=1 and equivalents down to N=2^13 r=8
# p=10; this is one of them: 16 MiB (fine on a Jetson), about 5x the time of p=1 (some 300 ms).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 5
# A stored hash must cost at least this much (N*r*p, with N >= 2^13 and r >= 8): weaker ones,
# made by hand or by an older version, are refused when the config is loaded.
MIN_COST = 2**14 * 8 * 5
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD_LENGTH = 10


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r + 1024 * 1024, dklen=HASH_BYTES)  # fmt: skip


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a reviewer password needs at least {MIN_PASSWORD_LENGTH} characters")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, hash) of a stored hash; ValueError naming the expected form otherwise."""
    parts = stored.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
        if n < 2**10 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or len(digest) < 16:
            raise ValueError
    except ValueError:
        raise ValueError("password_hash is not of the form scrypt$N$r$p$salt$hash (make one with "
                         "`dicomnode web hash-password`)") from None
    if n < 2**13 or r < 8 or n * r * p < MIN_COST:
        raise ValueError(f"password_hash: scrypt N={n} r={r} p={p} is below the minimum cost "
                         f"(N={SCRYPT_N} r={SCRYPT_R} p={SCRYPT_P}, as OWASP advises); make a new "
                         "hash with `dicomnode web hash-password`")
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    n, r, p, salt, digest = parse_hash(stored)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p)[: len(digest)], digest)


# Computed once: a login for an unknown name costs the same as one for a known name.
_DUMMY_HASH: str | None = None


def dummy_verify(password: str) -> None:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password("x" * MIN_PASSWORD_LENGTH)
    verify_password(password, _DUMMY_HASH)
