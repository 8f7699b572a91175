"""Download links: a short-lived URL for one artifact, so a browser can save a large zip
straight to disk (its own download manager, streaming) without the API key in a URL and
without buffering the file in the tab.

A link is `<key id>.<expiry, unix seconds>.<HMAC-SHA256>`, signed with the stored sha256 of
the key that asked for it. Nothing new is stored: every API process that can read the key
row can check a link, revoking the key kills its links, and a link names one artifact only
(the MAC covers the artifact id), so it cannot be replayed against another file or route.
The same idea as an S3 presigned URL: https://docs.aws.amazon.com/AmazonS3/latest/userguide/ShareObjectPreSignedURL.html
"""

from __future__ import annotations

import hashlib
import hmac
import time

from sqlalchemy.orm import Session

from app.tables import ApiKey

QUERY_PARAM = "link"


def _mac(key: ApiKey, artifact_id: str, expires: int) -> str:
    message = f"histosynth.download/1|{artifact_id}|{expires}".encode()
    return hmac.new(bytes.fromhex(key.secret_sha256), message, hashlib.sha256).hexdigest()


def make_link(key: ApiKey, artifact_id: str, ttl_seconds: int, now: float | None = None) -> tuple[str, int]:
    """The link token for `artifact_id` asked for by `key`, and its expiry (unix seconds)."""
    expires = int(now if now is not None else time.time()) + ttl_seconds
    return f"{key.id}.{expires}.{_mac(key, artifact_id, expires)}", expires


def check_link(session: Session, token: str, artifact_id: str, now: float | None = None) -> ApiKey | None:
    """The key that made `token` for this artifact, if the link is intact, unexpired and its
    key not revoked; else None (the caller answers 401, saying no more than that)."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[0]) > 64:
        return None
    key_id, expires_text, mac = parts
    expires = int(expires_text)
    if expires < (now if now is not None else time.time()):
        return None
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return None
    return key if hmac.compare_digest(mac, _mac(key, artifact_id, expires)) else None
