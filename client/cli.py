"""relay-upload: the command line. Arguments, exit codes, and one-line errors on stderr.

Click runs with standalone_mode=False so that every error, click's own included, is rendered here as a single
`relay-upload: error: ...` line: no usage block, no traceback. Exit codes: 0 ok, 1 HTTP error or sha256
mismatch, 2 bad arguments or files, 3 network, 130 Ctrl-C (one line, and with --json still one object per request:
status null, error "interrupted"). A --header that cannot be sent (a name that is not a token, a
control character in the value) is a bad argument; a non-ASCII value goes as UTF-8 bytes, as curl sends it.

This module is the arguments: the two click commands (upload, bench), their checks, and `run`. How the requests
run is client/cli_runs.py (plain and resumable uploads); what is printed, client/cli_output.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console

from client.bench import DEFAULT_BENCH_PATH, parse_size, run_bench
from client.cli_output import PROG, fail, print_bench, print_interrupted, report_outcomes
from client.cli_runs import resumable_all, upload_all
from client.errors import ArgumentError, UploadError
from client.progress import UploadView
from client.results import UploadResult
from client.resumable import DEFAULT_RESUMABLE_RETRIES, ResumableOptions
from client.resumable_wire import metadata_header
from client.sources import LocalFile, check_files
from client.target import DEFAULT_RELAY, build_url, check_events_id, resolve_bench, resolve_target
from client.upload import DEFAULT_FIELD
from client.version import version

__all__ = ["main", "run"]

UPLOAD_EXAMPLES = """\b
Examples:
  relay-upload photo.jpg --to /upload/photos
  relay-upload photo.jpg --to http://relay.example:8000/upload/photos
  relay-upload a.bin b.bin --to /upload/batch --form album=2026 --query tag=x
  relay-upload photos/ --recursive --each -j 4 --to /upload/photos
  tar c dir | relay-upload - --to /upload/backups/dir.tar
  relay-upload big.iso --raw --method PUT --to /upload/isos/big.iso --events
  relay-upload *.log --each -j 4 --to /upload/logs --json
  relay-upload big.iso --resumable --chunk-size 64MiB --to /upload/isos
  relay-upload bench --size 1GiB --direct http://127.0.0.1:8001

\b
A file named "bench" is given as ./bench. Exit codes: 0 ok, 1 HTTP error or
sha256 mismatch, 2 bad arguments or file, 3 connection or network error.
"""

BENCH_EXAMPLES = """\b
Examples:
  relay-upload bench --size 256MiB
  relay-upload bench --size 1GiB --runs 5 --direct http://127.0.0.1:8001
  relay-upload bench --size 100MB --multipart --concurrency 4 --json
"""


# RFC 9110 5.1 and 5.5: a field name is a token; a value must not hold CR, LF or NUL, and the other controls
# (all but HTAB) are refused too, as h11 and the relay's httptools would refuse them after a connection was made.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_pairs(values: Sequence[str]) -> list[tuple[str, str]]:
    """--header 'K: V' pairs that can be sent: a bad one is a usage error here, not a traceback or a network error."""
    pairs = _pairs(values, ":", "--header")
    for name, value in pairs:
        if not _TOKEN.fullmatch(name):
            raise ArgumentError(f"--header {name!r}: a header name is letters, digits and !#$%&'*+-.^_`|~ only")
        if _CONTROL.search(value):
            raise ArgumentError(f"--header {name!r}: its value holds a control character ({value!r})")
    return pairs


def _wire_headers(pairs: list[tuple[str, str]]) -> list[tuple[str, bytes]]:
    """Values as UTF-8 bytes, as curl sends them: httpx encodes a str header value as ASCII and raises on
    anything else. (The resumable client needs no such step: httpx.Headers' item assignment encodes UTF-8.)"""
    return [(name, value.encode("utf-8")) for name, value in pairs]


def _pairs(values: Sequence[str], sep: str, option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, found, rest = value.partition(sep)
        if not found or not key.strip():
            shape = "'K: V'" if sep == ":" else "k=v"
            raise ArgumentError(f"{option} expects {shape}, got {value!r}")
        pairs.append((key.strip(), rest.strip()) if sep == ":" else (key, rest))
    return pairs


@click.command(
    name=PROG,
    epilog=UPLOAD_EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("files", nargs=-1, required=True, metavar="FILE|DIR|-...")
@click.option(
    "--to", "to", required=True, metavar="PATH|URL", help="Path on the relay (/upload/photos), or a full URL."
)
@click.option("--relay", metavar="URL", help=f"Relay base URL.  [default: {DEFAULT_RELAY}]")
@click.option("-r", "--recursive", is_flag=True, help="Upload the files under each DIR given.")
@click.option("--field", default=DEFAULT_FIELD, show_default=True, metavar="NAME", help="Multipart field for files.")
@click.option("--form", multiple=True, metavar="k=v", help="Extra multipart form field (repeatable).")
@click.option("--query", multiple=True, metavar="k=v", help="Query parameter appended to the URL (repeatable).")
@click.option("--header", multiple=True, metavar="'K: V'", help="Header for the upload request (repeatable).")
@click.option("--raw", is_flag=True, help="Send the file itself as the body (one file per request).")
@click.option(
    "--method",
    type=click.Choice(["POST", "PUT", "PATCH"], case_sensitive=False),
    default="POST",
    show_default=True,
)
@click.option("--each", is_flag=True, help="One request per file instead of one multipart request.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Concurrent requests.")
@click.option("--events", is_flag=True, help="Follow the relay's events and check each part's sha256.")
@click.option(
    "--token", envvar="RELAY_TOKEN", show_envvar=True, metavar="TOKEN", help="Bearer token for the relay's --token."
)
@click.option(
    "--admin-token", envvar="RELAY_ADMIN_TOKEN", show_envvar=True, metavar="TOKEN", help="Bearer token for /_relay/."
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=None,
    help="Retries after a 429 (waiting its Retry-After) or a connection failure before the first body byte; "
    f"with --resumable, failures in a row before giving up.  [default: 0; {DEFAULT_RESUMABLE_RETRIES} resumable]",
)
@click.option("--resumable", is_flag=True, help="Each file as a resumable upload: retried, and resumed when run again.")
@click.option(
    "--chunk-size",
    metavar="SIZE",
    help="With --resumable: bytes per append (64MiB, 1GB...).  [default: the rest of the file]",
)
@click.option(
    "--protocol",
    type=click.Choice(["tus", "ietf"], case_sensitive=False),
    default=None,
    help="With --resumable: tus 1.0.0, or the IETF draft (interop version 8).  [default: tus]",
)
@click.option(
    "--digest",
    is_flag=True,
    help="Send Repr-Digest: sha-256 (one extra read first; with --resumable also Upload-Checksum per append).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (one line per request).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display and no summary table.")
@click.version_option(version(), "--version", prog_name=PROG, message="%(prog)s %(version)s")
def upload_command(
    files: tuple[str, ...],
    to: str,
    relay: str | None,
    recursive: bool,
    field: str,
    form: tuple[str, ...],
    query: tuple[str, ...],
    header: tuple[str, ...],
    raw: bool,
    method: str,
    each: bool,
    jobs: int,
    events: bool,
    token: str | None,
    admin_token: str | None,
    retries: int | None,
    resumable: bool,
    chunk_size: str | None,
    protocol: str | None,
    digest: bool,
    as_json: bool,
    quiet: bool,
) -> int:
    """Stream FILE... to the upload relay (multipart by default), with progress and sha256.

    A DIR needs --recursive; "-" sends standard input as one raw, chunked body.
    """
    local = check_files(files, recursive=recursive)
    _check_stdin(local)
    if raw and not each and len(local) != 1:
        raise ArgumentError("--raw sends exactly one file (use --each for several)")
    if resumable:
        _check_resumable(local, raw=raw, events=events, method=method, field=field)
    elif chunk_size is not None or protocol is not None:
        raise ArgumentError("--chunk-size and --protocol go with --resumable")
    elif digest and any(f.is_stdin for f in local):
        raise ArgumentError("--digest reads the file before sending it: standard input cannot be read twice")
    # Resolved here, once: a --to URL that contradicts --relay is a usage error before anything is sent.
    relay, to = resolve_target(to, relay)
    header_pairs = _header_pairs(header)
    if events:
        check_events_id(header_pairs)
    form_pairs = _pairs(form, "=", "--form")
    query_pairs = _pairs(query, "=", "--query")
    err = Console(stderr=True)
    show_progress = err.is_terminal and not quiet and not as_json
    view = UploadView(err, events=events) if show_progress else None
    if resumable:
        metadata_header("", "", form_pairs)  # a --form key tus metadata cannot carry fails here, before anything
        auth = [("Authorization", f"Bearer {token}")] if token else []
        settings = ResumableOptions(
            relay=relay,
            url=build_url(relay, to, query_pairs),
            headers=[(k, v) for k, v in header_pairs if not (token and k.lower() == "authorization")] + auth,
            form=form_pairs,
            protocol=(protocol or "tus").lower(),
            chunk_size=_chunk_size(chunk_size),
            digest=digest,
            retries=DEFAULT_RESUMABLE_RETRIES if retries is None else retries,
        )
        interrupted: dict[int, UploadResult] = {}
        try:
            plain = not quiet and not as_json
            run_all = resumable_all(local, settings, jobs=jobs, view=view, plain=plain, interrupted=interrupted)
            outcomes = asyncio.run(run_all)
        except KeyboardInterrupt:
            if as_json:
                print_interrupted([[f] for f in local], interrupted, protocol=settings.protocol)
            # The uploads stay on the relay and in the resume store: the same command goes on from there.
            command = shlex.join([PROG, *(click.get_current_context().obj or [])])
            fail(f"interrupted; the upload can be resumed: run the same command again: {command}")
            return 130
        return report_outcomes(outcomes, as_json=as_json, quiet=quiet)
    options: dict[str, Any] = {
        "relay": relay,
        "field": field,
        "form": form_pairs,
        "query": query_pairs,
        "headers": _wire_headers(header_pairs),
        "raw": raw,
        "method": method.upper(),
        "events": events,
        "admin_token": admin_token,
        "token": token,
        "retries": retries or 0,
    }
    interrupted = {}
    try:
        outcomes = asyncio.run(
            upload_all(local, to, options, each=each, jobs=jobs, view=view, digest=digest, interrupted=interrupted)
        )
    except KeyboardInterrupt:
        # Caught here, not left to click: click would print an empty line before its Abort.
        if as_json:
            print_interrupted([[f] for f in local] if each else [local], interrupted)
        fail("interrupted")
        return 130
    return report_outcomes(outcomes, as_json=as_json, quiet=quiet)


def _check_resumable(files: list[LocalFile], *, raw: bool, events: bool, method: str, field: str) -> None:
    """What a resumable upload cannot do: the relay's route decides how the finished file goes upstream."""
    if any(f.is_stdin for f in files):
        raise ArgumentError("'-' (standard input) cannot be sent as a resumable upload: it cannot be read again")
    if raw or field != DEFAULT_FIELD:
        raise ArgumentError("--raw and --field do not go with --resumable: the relay's route decides the framing")
    if events:
        raise ArgumentError("--events does not go with --resumable (the relay's X-Upload-Sha256 is checked instead)")
    if method.upper() != "POST":
        raise ArgumentError("--resumable creates uploads with POST: --method does not go with it")


def _chunk_size(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise ArgumentError(f"--chunk-size: {exc}") from None
    if size <= 0:
        raise ArgumentError("--chunk-size must be more than 0 bytes")
    return size


def _check_stdin(files: list[LocalFile]) -> None:
    if not any(f.is_stdin for f in files):
        return
    if len(files) != 1:
        raise ArgumentError("'-' (standard input) is sent alone, as one raw body")
    if sys.stdin is None or sys.stdin.isatty():
        raise ArgumentError("'-' reads standard input, which is a terminal: pipe or redirect the data in")


@click.command(
    name=f"{PROG} bench",
    epilog=BENCH_EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--relay", default=DEFAULT_RELAY, show_default=True, metavar="URL", help="Relay base URL.")
@click.option(
    "--token", envvar="RELAY_TOKEN", show_envvar=True, metavar="TOKEN", help="Bearer token for the relay's --token."
)
@click.option("--to", "to", default=DEFAULT_BENCH_PATH, show_default=True, metavar="PATH", help="Upload path.")
@click.option("--size", required=True, metavar="SIZE", help="Body size per upload: 10MiB, 1GB, 4096...")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per target.")
@click.option("--multipart", is_flag=True, help="Wrap the data in a multipart body (one file part).")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Uploads per run.")
@click.option("--direct", metavar="URL", help="Upstream base URL to compare with (same path).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def bench_command(
    relay: str,
    token: str | None,
    to: str,
    size: str,
    runs: int,
    multipart: bool,
    concurrency: int,
    direct: str | None,
    as_json: bool,
) -> int:
    """Measure upload throughput through the relay (and directly to the upstream with --direct).

    Every request carries `X-Relay-Sink-Discard: 1`: the sample upstream (relay-sink, embedded or not) counts
    and hashes the bytes but stores nothing, so benchmarks do not fill ./received.
    """
    try:
        nbytes = parse_size(size)
    except ValueError as exc:
        raise ArgumentError(f"--size: {exc}") from None
    relay, to, direct = resolve_bench(relay, to, direct)  # a malformed URL is a usage error before any run
    result = asyncio.run(
        run_bench(
            size=nbytes,
            relay=relay,
            to=to,
            runs=runs,
            multipart=multipart,
            concurrency=concurrency,
            direct=direct,
            token=token,
        )
    )
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    else:
        print_bench(Console(), result, concurrency)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default sys.argv[1:]) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # The first argument "bench" selects bench mode; a file of that name is given as ./bench.
    command, prog = (bench_command, f"{PROG} bench") if args[:1] == ["bench"] else (upload_command, PROG)
    if command is bench_command:
        args = args[1:]
    try:
        # `obj`: the arguments as given, for the "run the same command again" hint of an interrupted upload.
        code = command.main(args, prog_name=prog, standalone_mode=False, obj=list(args))
    except click.exceptions.Abort:
        fail("interrupted")
        return 130
    except click.ClickException as exc:
        fail(f"{exc.format_message()} (see {prog} --help)")
        return 2
    except UploadError as exc:
        fail(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    return code if isinstance(code, int) else 0


def main() -> None:
    """Console script entry point."""
    sys.exit(run())
