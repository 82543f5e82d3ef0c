"""Who may use `/_relay/`: the admin bearer token, or the dashboard's session cookie.

A browser's EventSource cannot send `Authorization`, so the dashboard (`/_relay/ui/`) logs in once with the
token and gets a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/_relay/`). Everything is compared in constant
time.

Rules:
1. The cookie is `<issued>.<mac>`: its issue time (milliseconds since the epoch) and an HMAC, keyed by the token,
   of a fixed label and that time; never the token itself. A leaked cookie is not the token, and changing the
   token ends every session.
2. A session lasts at most SESSION_MAX_AGE from its issue time, whoever holds the cookie (the browser is also
   told to drop it then). A cookie issued more than CLOCK_SKEW in the future is refused too.
3. Logging out (`end_sessions`) ends, in this process, every session issued up to that moment: a cookie copied
   before the logout no longer works here. It is kept in memory only: another relay process (`--workers`,
   several relays behind one address) or this one after a restart still accepts such a cookie until its
   SESSION_MAX_AGE runs out (or the token changes).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["SESSION_COOKIE", "SESSION_MAX_AGE", "admin_refusal", "end_sessions", "session_value"]

SESSION_COOKIE = "relay_admin"
# A working day: a dashboard left open overnight asks for the token again, and a copied cookie is worth at most
# this long even where no logout reached (Rule 3).
SESSION_MAX_AGE = 12 * 3600
CLOCK_SKEW = 300  # seconds: relays' clocks may differ a little; a cookie from further ahead was not issued by one
_LABEL = b"upload-relay dashboard session v2\n"
# Per admin token (keyed by an HMAC of it, not the token): sessions issued at or before this time (ms) ended.
_ended: dict[str, int] = {}


def session_value(admin_token: str, now: float | None = None) -> str:
    """A new session cookie's value for `admin_token`, issued `now` (Rule 1)."""
    issued = str(int((time.time() if now is None else now) * 1000))
    return f"{issued}.{_mac(admin_token, issued)}"


def end_sessions(admin_token: str, now: float | None = None) -> None:
    """Logout: every session of `admin_token` issued up to `now` is refused from here on, in this process."""
    _ended[_mac(admin_token, "ended")] = int((time.time() if now is None else now) * 1000)


def admin_refusal(
    admin_token: str | None, authorization: str | None, cookies: Mapping[str, str], now: float | None = None
) -> str | None:
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
        if _session_is_valid(admin_token, session, time.time() if now is None else now):
            return None
        return "invalid or expired dashboard session; log in again"
    return "an admin bearer token is required"


def _session_is_valid(admin_token: str, session: str, now: float) -> bool:
    issued, _, mac = session.partition(".")
    if not (issued.isascii() and issued.isdigit()) or len(issued) > 16:  # a sane number of ASCII digits
        return False
    if not hmac.compare_digest(mac.encode(), _mac(admin_token, issued).encode()):
        return False
    age = now - int(issued) / 1000
    if not -CLOCK_SKEW <= age <= SESSION_MAX_AGE:
        return False
    return int(issued) > _ended.get(_mac(admin_token, "ended"), -1)


def _mac(admin_token: str, text: str) -> str:
    return hmac.new(admin_token.encode(), _LABEL + text.encode(), hashlib.sha256).hexdigest()
