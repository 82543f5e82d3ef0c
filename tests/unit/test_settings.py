"""parse_size and the Settings / Route checks (relay/settings.py)."""

from __future__ import annotations

import pytest

from relay.settings import Route, Settings, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("123", 123),
        (123, 123),
        ("1k", 1024),
        ("1K", 1024),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("2M", 2 * 1024**2),
        ("2MiB", 2 * 1024**2),
        ("3G", 3 * 1024**3),
        ("3GiB", 3 * 1024**3),
        ("10GiB", 10 * 1024**3),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("1GB", 1000**3),
        ("512k", 512 * 1024),
        ("1.5KiB", 1536),
        (" 10 MiB ", 10 * 1024**2),
        ("7b", 7),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "12XB", "MiB", "-1", -1, "1e3", "0x10", "ten", "1 2", "1.2.3k", "1KiBs", "1Ki", "k1"]
)
def test_bad_sizes_raise_value_error(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_bool_is_not_a_size() -> None:
    with pytest.raises(ValueError):
        parse_size(True)


def test_route_checks() -> None:
    assert Route().prefix == "/upload/" and Route().methods == ("POST", "PUT", "PATCH")
    Route(prefix="/x/", upstream="https://example.com:8443/base")
    with pytest.raises(ValueError):
        Route(prefix="upload/")
    with pytest.raises(ValueError):
        Route(prefix="/_relay/x/")
    for bad in ("ftp://x", "x", "http://", "//host"):
        with pytest.raises(ValueError):
            Route(upstream=bad)


def test_settings_checks() -> None:
    settings = Settings()
    assert settings.digest and settings.token is None and settings.routes[0].limits.max_body_size == 10 * 1024**3
    with pytest.raises(ValueError):
        Settings(routes=())
    with pytest.raises(ValueError):
        Settings(upstream_timeout=0)
    with pytest.raises(ValueError):
        Settings(upstream_connect_timeout=-1)
    with pytest.raises(ValueError):
        Settings(max_concurrent_uploads=0)
    with pytest.raises(ValueError):
        Settings(routes=(Route(prefix="/a/"), Route(prefix="/a/")))
    with pytest.raises(TypeError):
        Settings(None)  # type: ignore[misc]  # keyword-only


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.token = "x"  # type: ignore[misc]
