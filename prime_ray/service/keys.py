"""API keys: `prk_<key id>_<secret>`, stored as a salted sha256 digest of the secret, never in clear.

The key id travels inside the key, so a request costs one primary-key lookup and one constant-time
comparison. A revoked key stays in the table (with `revoked_at`) so its id is never reused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from prime_ray.service.db import ApiKeyRow, retry_transient, retry_window, utcnow

PREFIX = "prk"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    read_only: bool


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def create_key(sessions: sessionmaker, name: str = "", read_only: bool = False) -> tuple[ApiKeyRow, str]:
    """Store a new key; return its row and the key itself (shown once, not recoverable later)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_hex(24)
    salt = secrets.token_hex(16)
    row = ApiKeyRow(id=key_id, name=name or key_id, salt=salt, digest=_digest(salt, secret), read_only=read_only)
    with sessions.begin() as session:
        session.add(row)
    return row, f"{PREFIX}_{key_id}_{secret}"


def verify_key(sessions: sessionmaker, presented: str) -> ApiKey | None:
    """The key's identity if `presented` is a live key, else None."""
    parts = presented.split("_")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    _, key_id, secret = parts
    if "\x00" in key_id:  # Postgres refuses NUL in a string; no key id has one
        return None

    def read() -> ApiKeyRow | None:
        with sessions() as session:
            return session.get(ApiKeyRow, key_id)

    row = retry_transient(read, retry_window(sessions))  # every request reads it: ride out a lost connection
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.digest, _digest(row.salt, secret)):
        return None
    return ApiKey(id=row.id, name=row.name, read_only=row.read_only)


def revoke_key(sessions: sessionmaker, key_id: str) -> bool:
    """Revoke a key; False if there is no live key with that id."""
    with sessions.begin() as session:
        row = session.get(ApiKeyRow, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
    return True


def list_keys(sessions: sessionmaker) -> list[ApiKeyRow]:
    with sessions() as session:
        return list(session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)))


def has_live_key(sessions: sessionmaker, read_write: bool = True) -> bool:
    query = select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None))
    if read_write:
        query = query.where(ApiKeyRow.read_only.is_(False))
    with sessions() as session:
        return session.scalars(query.limit(1)).first() is not None


def key_by_id(sessions: sessionmaker, key_id: str) -> ApiKey | None:
    """The live key with this id (for a console session, which holds the id, never the key), else None."""
    with sessions() as session:
        row = session.get(ApiKeyRow, key_id)
    if row is None or row.revoked_at is not None:
        return None
    return ApiKey(id=row.id, name=row.name, read_only=row.read_only)
