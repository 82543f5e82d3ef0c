"""The TOML config file of relay-server, and errors that say where a bad value came from.

Theory of operation: `--config FILE` is an eager click option. Its callback (`load_config`) reads the file,
checks the [server] keys and hands them to click as the context's `default_map`, so click converts and
validates them like flags (precedence flags > environment > config file > defaults stays click's own). The
[[routes]] tables are kept in `ctx.meta` and turned into `Route`s by `routes_from_tables`, which checks every
key itself and names the file, the table and the key in each message:

    relay.toml: [[routes]] #1 (/upload/): max_files: not a whole number: 'x'

`SourcedOption` does the same for flags whose value came from the environment or the [server] table: click
would name the flag (`'--max-body-size'`) even when the user never typed it.

The files the configuration names (token file, CA file, TLS certificate and key, the embedded upstream's store)
are checked here at start-up, each failure one sentence naming the flag: a bad file must be exit 2 at once,
not a traceback or a 502 per upload later.
"""

from __future__ import annotations

import ssl
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from relay.core.limits import Limits
from relay.settings import DEFAULT_METHODS, RESUMABLE_FORWARDS, Route, parse_size

__all__ = [
    "SERVER_KEYS",
    "SourcedOption",
    "check_ca",
    "check_store",
    "check_tls",
    "load_config",
    "read_tokens",
    "routes_from_tables",
]

SERVER_KEYS = {
    "host", "port", "upstream", "store", "route", "max_body_size", "max_file_size", "max_files",
    "upstream_timeout", "upstream_connect_timeout", "digest", "admin_token", "token", "forward_authorization",
    "trust_forwarded", "max_concurrent_uploads", "token_file", "max_uploads_per_client", "client_idle_timeout",
    "client_min_rate", "cors_origin", "drain_timeout", "client_min_rate_grace", "header_timeout", "upstream_ca",
    "resumable_prefix", "spool", "resumable_expiry", "resumable_max_incomplete", "ssl_certfile", "ssl_keyfile",
    "log_level", "log_format", "health_checks_upstream", "s3_endpoint", "redis", "redis_prefix", "webhook_secret",
    "workers",
}  # fmt: skip
_ROUTE_KEYS = {
    "prefix", "upstream", "methods", "max_body_size", "max_file_size", "max_files", "resumable",
    "resumable_forward", "resumable_field",
}  # fmt: skip
_META_PATH = "config_path"
_META_ROUTES = "routes"


class SourcedOption(click.Option):
    """A click option whose errors name where its value came from: RELAY_X, the config file, or the flag."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        hint = super().get_error_hint(ctx)
        if ctx is None or self.name is None:
            return hint
        source = ctx.get_parameter_source(self.name)
        if source is ParameterSource.ENVIRONMENT:
            return f"{ctx.auto_envvar_prefix}_{self.name.upper()} (from the environment)"
        if source is ParameterSource.DEFAULT_MAP and _META_PATH in ctx.meta:
            return f"{ctx.meta[_META_PATH]}: [server] {self.name}"
        return hint


def load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read the TOML file: [server] becomes click's default_map, [[routes]] is kept for later."""
    if not value:
        return value
    try:
        data = tomllib.loads(Path(value).read_text())
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}", ctx, param) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{value} is not valid TOML: {exc}", ctx, param) from exc
    server = data.get("server", {})
    routes = data.get("routes", [])
    if not isinstance(server, dict) or not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise click.BadParameter(f"{value}: [server] must be a table and [[routes]] an array of tables", ctx, param)
    unknown = set(server) - SERVER_KEYS
    if unknown:
        raise click.BadParameter(f"unknown [server] keys in {value}: {', '.join(sorted(unknown))}", ctx, param)
    ctx.default_map = {**(ctx.default_map or {}), **server}
    ctx.meta[_META_ROUTES] = routes
    ctx.meta[_META_PATH] = value
    return value


def routes_from_tables(ctx: click.Context, defaults: Limits) -> tuple[Route, ...]:
    """The [[routes]] of the config file, or () when there are none; ValueError names file, table and key."""
    tables: list[dict[str, Any]] = ctx.meta.get(_META_ROUTES, [])
    path = ctx.meta.get(_META_PATH, "config")
    routes = []
    for number, table in enumerate(tables, start=1):
        where = f"{path}: [[routes]] #{number}" + (f" ({table['prefix']})" if "prefix" in table else "")
        try:
            routes.append(_route(table, defaults))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(routes)


def _route(table: dict[str, Any], defaults: Limits) -> Route:
    unknown = set(table) - _ROUTE_KEYS
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    if "prefix" not in table:
        raise ValueError("a prefix is required")
    limits = Limits(
        max_body_size=_size(table, "max_body_size", defaults.max_body_size),
        max_file_size=_size(table, "max_file_size", defaults.max_file_size),
        max_files=_whole(table, "max_files", defaults.max_files),
    )
    methods = table.get("methods", list(DEFAULT_METHODS))
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) and m for m in methods):
        raise ValueError(f"methods: not a list of method names: {methods!r}")
    forward = _text(table, "resumable_forward", "multipart")
    if forward not in RESUMABLE_FORWARDS:
        raise ValueError(f"resumable_forward: must be 'multipart' or 'raw', not {forward!r}")
    resumable = table.get("resumable", True)
    if not isinstance(resumable, bool):
        raise ValueError(f"resumable: not true or false: {resumable!r}")
    upstream = table.get("upstream")
    if upstream is not None and not isinstance(upstream, str):
        raise ValueError(f"upstream: not a URL: {upstream!r}")
    return Route(
        prefix=_text(table, "prefix", ""),
        upstream=upstream,
        methods=tuple(method.upper() for method in methods),
        limits=limits,
        resumable=resumable,
        resumable_forward=forward,
        resumable_field=_text(table, "resumable_field", "file"),
    )


def _size(table: dict[str, Any], key: str, fallback: int | None) -> int | None:
    if key not in table:
        return fallback
    try:
        return parse_size(table[key]) or None
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _whole(table: dict[str, Any], key: str, fallback: int | None) -> int | None:
    if key not in table:
        return fallback
    value = table[key]
    # TOML has integers; a string of digits is accepted too, as the flag would take it.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key}: not a whole number: {value!r}")
    if value < 0:
        raise ValueError(f"{key}: must not be negative: {value}")
    return value or None


def _text(table: dict[str, Any], key: str, fallback: str) -> str:
    value = table.get(key, fallback)
    if not isinstance(value, str) or (key in table and not value):
        raise ValueError(f"{key}: not a non-empty string: {value!r}")
    return value


def check_ca(path: str | None) -> str | None:
    """Load the CA file once at start-up, so a wrong one is one line and exit 2, not a 502 per upload."""
    if not path:
        return None
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ValueError(f"--upstream-ca {path}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--upstream-ca {path} is not a PEM file of CA certificates: {exc}") from None
    return path


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Both or neither, and they must load as a server's certificate chain and its private key."""
    if not certfile and not keyfile:
        return
    if not certfile or not keyfile:
        given, missing = ("--ssl-certfile", "--ssl-keyfile") if certfile else ("--ssl-keyfile", "--ssl-certfile")
        raise ValueError(f"{given} needs {missing} too")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{flag} {path}: {exc.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: not a PEM certificate and its private key "
            f"({getattr(exc, 'reason', None) or exc})"
        ) from None


def check_store(store: Path) -> None:
    """The embedded upstream's store must be a directory we can create and write in."""
    try:
        (store / ".tmp").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=store / ".tmp"):
            pass
    except OSError as exc:
        raise ValueError(f"--store {store}: cannot create or write there: {exc.strerror or exc}") from None


def read_tokens(path: str | None) -> tuple[str, ...]:
    if not path:
        return ()
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ValueError(f"cannot read --token-file {path}: {reason}") from exc
    tokens = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise ValueError(f"--token-file {path} holds no token")
    return tokens
