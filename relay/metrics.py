"""Prometheus metrics, one CollectorRegistry per app so several apps (tests) never share counters."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from relay.settings import relay_version

__all__ = ["CONTENT_TYPE", "RelayMetrics", "status_class"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SIZE_BUCKETS = tuple(float(2**power) for power in range(10, 41, 2))  # 1 KiB .. 1 TiB
_DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.uploads = Counter("relay_uploads", "Uploads by outcome", ["outcome"], registry=self.registry)
        self.bytes_received = Counter("relay_bytes_received", "Request-body bytes received", registry=self.registry)
        self.bytes_forwarded = Counter(
            "relay_bytes_forwarded", "Request-body bytes handed to the upstream", registry=self.registry
        )
        self.bytes_drained = Counter(
            "relay_bytes_drained", "Body bytes read and discarded after a rejection", registry=self.registry
        )
        self.in_flight = Gauge("relay_uploads_in_flight", "Uploads being received", registry=self.registry)
        self.duration = Histogram(
            "relay_upload_duration_seconds",
            "Upload duration, first header to last byte",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.size = Histogram(
            "relay_upload_size_bytes", "Request-body bytes per upload", buckets=_SIZE_BUCKETS, registry=self.registry
        )
        self.rejections = Counter(
            "relay_rejections", "Errors answered by the relay, by code", ["code"], registry=self.registry
        )
        self.upstream_responses = Counter(
            "relay_upstream_responses",
            "Upstream answers to relayed uploads, by status class",
            ["status_class"],
            registry=self.registry,
        )
        # Resumable uploads: created, append, completed, expired, terminated; bytes that went into the spool.
        self.resumable = Counter(
            "relay_resumable_uploads", "Resumable upload events by kind", ["event"], registry=self.registry
        )
        self.bytes_spooled = Counter(
            "relay_resumable_bytes_spooled", "Bytes written to the spool by appends", registry=self.registry
        )
        self.build_info = Gauge(
            "relay_build_info",
            "Always 1; labels: the relay and Python versions",
            ["version", "python"],
            registry=self.registry,
        )
        self.build_info.labels(version=relay_version(), python=platform.python_version()).set(1)

    def finished(self, outcome: str, seconds: float, size: int, *, upstream_status: int | None = None) -> None:
        """An upload ended; a completed one is also counted by the class of the upstream's status, since a
        `completed` upload may still be one the upstream answered 500 to."""
        self.uploads.labels(outcome=outcome).inc()
        if upstream_status is not None:
            self.upstream_responses.labels(status_class=status_class(upstream_status)).inc()
        self.duration.observe(seconds)
        self.size.observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def status_class(status: int) -> str:
    """200 -> "2xx"; anything outside 100-599 is "other"."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"
