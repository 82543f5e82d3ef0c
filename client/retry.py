"""When a failed request may be sent again, and after how long.

Two kinds of failure are retried, up to `--retries` times:

* 429 Too Many Requests: the relay refused from the headers, before reading the body, and says with
  `Retry-After` (seconds, or an HTTP-date: RFC 9110 section 10.2.3) when to come back. The wait is capped, so
  a far-off date cannot park the client for hours; without the header the wait is one second.
* A connection failure before the first body byte was handed over (refused, reset, timed out while
  connecting, a kept-alive connection the server had closed): nothing reached anyone, so sending again
  cannot duplicate an upload.

Anything else is final: a failure after the body started may have reached the upstream complete (a lost
answer is not a lost upload), and an HTTP error other than 429 is the server's verdict. A body that cannot be
read twice (standard input once its first byte was read) is never retried.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

from client.errors import NetworkError, UploadError
from client.events import describe_http_error

__all__ = ["MAX_RETRY_AFTER", "RetryDecision", "after_answer", "after_failure", "backoff", "parse_retry_after"]

# The longest Retry-After we honour; a larger value waits this long.
MAX_RETRY_AFTER = 60.0
# The wait after a 429 that gave no (usable) Retry-After.
DEFAULT_RETRY_AFTER = 1.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP-date, clamped to [0, MAX_RETRY_AFTER]."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:  # HTTP-dates are GMT; a date without a zone is read as such
            return DEFAULT_RETRY_AFTER
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff(attempt: int) -> float:
    """The wait before retry number `attempt + 1` after a connection failure: 0.2 s doubling, at most 2 s."""
    return float(min(0.2 * 2**attempt, 2.0))


@dataclass(frozen=True)
class RetryDecision:
    """Why a request is sent again and after how long; shown to the user while waiting."""

    delay: float
    reason: str


def after_failure(exc: UploadError, attempt: int, replayable: bool) -> RetryDecision | None:
    """Retry a connection failure only when no body byte went: otherwise the upload may have arrived."""
    if isinstance(exc, NetworkError) and exc.before_body and replayable:
        return RetryDecision(backoff(attempt), str(exc))
    return None


def after_answer(status: int | None, retry_after: str | None, response: Any, replayable: bool) -> RetryDecision | None:
    """Retry a 429: decided from the headers, before the body was read, so sending again duplicates nothing."""
    if status == 429 and replayable:
        return RetryDecision(parse_retry_after(retry_after), describe_http_error(429, response))
    return None
