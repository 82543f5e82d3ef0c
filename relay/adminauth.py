"""Who may use `/_relay/`: the admin bearer token, or the dashboard's session cookie.

A browser's EventSource cannot send `Authorization`, so the dashboard (`/_relay/ui/`) logs in once with the
token and gets a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/_relay/`). The cookie holds an HMAC of the token
under a fixed label, never the token itself: a leaked cookie is not the token, and changing the token ends every
session. Everything is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["SESSION_COOKIE", "admin_refusal", "session_value"]

SESSION_COOKIE = "relay_admin"
_LABEL = b"upload-relay dashboard session v1"


def session_value(admin_token: str) -> str:
    """The session cookie's value for `admin_token`."""
    return hmac.new(admin_token.encode(), _LABEL, hashlib.sha256).hexdigest()


def admin_refusal(admin_token: str | None, authorization: str | None, cookies: Mapping[str, str]) -> str | None:
    """None when the request may use the admin endpoints; else why not, for the 401's message."""
    if admin_token is None:
        return None
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        if hmac.compare_digest(credential.strip().encode(), admin_token.encode()):
            return None
        return "invalid admin token"
    session = cookies.get(SESSION_COOKIE)
    if session:
        if hmac.compare_digest(session.encode(), session_value(admin_token).encode()):
            return None
        return "invalid or expired dashboard session; log in again"
    return "an admin bearer token is required"
