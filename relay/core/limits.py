"""Size limits, as one value object, and the early refusal from a declared Content-Length."""

from __future__ import annotations

from dataclasses import dataclass

from relay.errors import BodyTooLarge

__all__ = ["Limits", "check_declared_length"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Inclusive limits in bytes (a body of exactly the limit passes); None means no limit."""

    max_body_size: int | None = None
    max_file_size: int | None = None
    max_files: int | None = None


def check_declared_length(content_length: int | None, limits: Limits) -> None:
    """Refuse a declared length over the body limit before a single body byte is read."""
    if content_length is not None and limits.max_body_size is not None and content_length > limits.max_body_size:
        raise BodyTooLarge(f"declared body of {content_length} bytes exceeds the limit of {limits.max_body_size}")
