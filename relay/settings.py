"""One frozen settings object, sizes in bytes and times in seconds.

The CLI (relay/cli.py) turns flags, `RELAY_*` environment variables and the TOML config file into these;
nothing below parses human input except `parse_size`, which the CLI and the config loader share.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from relay.core.limits import Limits
from relay.core.progress import ProgressPolicy
from relay.urls import http_url_problem
from relay.webhooks.endpoints import WebhookEndpoint

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_FILES",
    "DEFAULT_METHODS",
    "DEFAULT_PREFIX",
    "DEFAULT_REDIS_PREFIX",
    "DEFAULT_RESUMABLE_EXPIRY",
    "DEFAULT_RESUMABLE_MAX_INCOMPLETE",
    "DEFAULT_RESUMABLE_PREFIX",
    "DEFAULT_SPOOL",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_WORKERS",
    "RESUMABLE_FORWARDS",
    "Route",
    "Settings",
    "parse_size",
    "relay_version",
]

DEFAULT_PREFIX = "/upload/"
DEFAULT_METHODS = ("POST", "PUT", "PATCH")
DEFAULT_MAX_BODY_SIZE = 10 * 1024**3
DEFAULT_MAX_FILES = 100
DEFAULT_UPSTREAM_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_REGISTRY_SIZE = 1000
DEFAULT_REGISTRY_TTL = 3600.0
DEFAULT_CLIENT_IDLE_TIMEOUT = 60.0
DEFAULT_MIN_RATE_GRACE = 10.0
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_RESUMABLE_PREFIX = "/resumable/"
DEFAULT_SPOOL = "./spool"
DEFAULT_RESUMABLE_EXPIRY = 86400.0
DEFAULT_RESUMABLE_MAX_INCOMPLETE = 1000
RESUMABLE_FORWARDS = ("multipart", "raw")
DEFAULT_REDIS_PREFIX = "relay:"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MAX_WORKERS = 128

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3, "t": 1024**4, "tib": 1024**4,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def relay_version() -> str:
    """The installed `upload-relay` distribution's version; the package's constant when run from a bare tree."""
    try:
        return metadata.version("upload-relay")
    except metadata.PackageNotFoundError:
        from relay import __version__

        return __version__


def parse_size(text: str | int) -> int:
    """`10MiB`, `1GB`, `512k`, `123` -> bytes. `k`/`KiB`/`M`/`G` are binary, `KB`/`MB`/`GB` decimal."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 512k, 10MiB, 1GB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[unit])


def _check_upstream(url: str) -> None:
    """Checked here so that a bad upstream URL is a usage error (one line, exit 2), not a failure at start-up."""
    problem = http_url_problem(url)
    if problem is not None:
        raise ValueError(f"upstream must be an http:// or https:// URL with a host: {url!r} ({problem})")


def _check_finite(settings: object) -> None:
    """Every number of the settings is a finite one: NaN passes `<= 0` checks and click's FloatRange, and then
    breaks timers at run time (a reviewer's finding: every upload a 500)."""
    for name in settings.__dataclass_fields__:  # type: ignore[attr-defined]
        value = getattr(settings, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, not {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Requests under `prefix` (raw path, case-sensitive) go to `upstream` + the same raw target.

    `upstream=None` means the embedded sample upstream; the CLI fills in its address once it listens.
    `resumable*`: whether the route takes tus / IETF resumable uploads, and how a finished one goes upstream
    (`multipart` with the file in the form field `resumable_field`, or the `raw` bytes as the body).
    """

    prefix: str = DEFAULT_PREFIX
    upstream: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    limits: Limits = field(
        default_factory=lambda: Limits(max_body_size=DEFAULT_MAX_BODY_SIZE, max_files=DEFAULT_MAX_FILES)
    )
    resumable: bool = True
    resumable_forward: str = "multipart"
    resumable_field: str = "file"

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/"):
            raise ValueError(f"route prefix must start with '/': {self.prefix!r}")
        if self.prefix == "/_relay" or self.prefix.startswith("/_relay/"):
            raise ValueError("route prefix must not be under /_relay/")
        if self.upstream is not None:
            _check_upstream(self.upstream)
        if self.resumable_forward not in RESUMABLE_FORWARDS:
            raise ValueError(f"resumable_forward must be 'multipart' or 'raw', not {self.resumable_forward!r}")
        if not self.resumable_field:
            raise ValueError("resumable_field must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the relay app needs; built by the CLI or directly by tests and embedding code."""

    routes: tuple[Route, ...] = (Route(),)
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    upstream_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    digest: bool = True
    token: str | None = None
    tokens: tuple[str, ...] = ()  # more accepted relay tokens (--token-file)
    admin_token: str | None = None
    forward_authorization: bool = False
    trust_forwarded: bool = False
    max_concurrent_uploads: int | None = None
    max_uploads_per_client: int | None = None
    client_idle_timeout: float | None = DEFAULT_CLIENT_IDLE_TIMEOUT
    client_min_rate: int | None = None  # bytes per second, averaged, checked after the grace period
    client_min_rate_grace: float = DEFAULT_MIN_RATE_GRACE
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    cors_origins: tuple[str, ...] = ()
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    progress: ProgressPolicy = field(default_factory=ProgressPolicy)
    registry_size: int = DEFAULT_REGISTRY_SIZE
    registry_ttl: float = DEFAULT_REGISTRY_TTL
    store: Path = Path("received")
    upstream_ca: str | None = None  # PEM file: verify HTTPS upstreams against it instead of the system CAs
    resumable_prefix: str = DEFAULT_RESUMABLE_PREFIX
    spool: str = DEFAULT_SPOOL  # a directory, or s3://BUCKET/PREFIX
    s3_endpoint: str | None = None  # the S3-compatible server of an s3:// spool (None: AWS)
    resumable_expiry: float = DEFAULT_RESUMABLE_EXPIRY
    resumable_max_incomplete: int = DEFAULT_RESUMABLE_MAX_INCOMPLETE
    ssl_certfile: str | None = None  # TLS termination: both or neither, checked by the CLI at start-up
    ssl_keyfile: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    health_checks_upstream: bool = False  # /_relay/health answers 503 when no upstream is reachable
    redis: str | None = None  # --redis URL: registry, events and caps shared with other relays (relay/state/)
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    webhooks: tuple[WebhookEndpoint, ...] = ()  # --webhook / [[webhooks]]: signed POSTs when uploads end
    workers: int = 1  # --workers: relay processes on one port under a supervisor (relay/workers.py)

    def __post_init__(self) -> None:
        if not self.routes:
            raise ValueError("at least one route is needed")
        _check_finite(self)
        if self.upstream_timeout <= 0 or self.upstream_connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_concurrent_uploads is not None and self.max_concurrent_uploads < 1:
            raise ValueError("--max-concurrent-uploads must be at least 1")
        if self.max_uploads_per_client is not None and self.max_uploads_per_client < 1:
            raise ValueError("--max-uploads-per-client must be at least 1")
        for origin in self.cors_origins:
            if origin == "*" or not re.match(r"^https?://[^/]+$", origin):
                raise ValueError(f"--cors-origin takes an exact origin like https://app.example, not {origin!r}")
        prefixes = [route.prefix for route in self.routes]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("two routes have the same prefix")
        self._check_resumable()
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
        if self.redis is not None and not self.redis.startswith(REDIS_SCHEMES):
            raise ValueError("--redis takes a redis://, rediss:// or unix:// URL")
        if not self.redis_prefix:
            raise ValueError("--redis-prefix must not be empty")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}")
        if self.workers > 1 and self.redis is None:
            # Each worker is a relay of its own: without a shared state each would keep its own uploads and caps.
            raise ValueError("--workers above 1 needs --redis (the workers share uploads, events and caps there)")

    def _check_resumable(self) -> None:
        prefix = self.resumable_prefix
        if not (prefix.startswith("/") and prefix.endswith("/")):
            raise ValueError(f"--resumable-prefix must start and end with '/': {prefix!r}")
        # One being a string prefix of the other would make a path ambiguous between the two.
        for other in ["/_relay/", *(route.prefix for route in self.routes)]:
            if prefix.startswith(other) or other.startswith(prefix):
                raise ValueError(f"--resumable-prefix {prefix} overlaps {other}")
        if not self.spool:
            raise ValueError("--spool must not be empty")
        if self.resumable_expiry <= 0:
            raise ValueError("--resumable-expiry must be positive")
        if self.resumable_max_incomplete < 1:
            raise ValueError("--resumable-max-incomplete must be at least 1")

    @property
    def accepted_tokens(self) -> tuple[str, ...]:
        return ((self.token,) if self.token else ()) + self.tokens
