"""relay/resumable/forward.py AnswerTranslator: what of the upstream's answer reaches the client when, and what is
kept for the replay of a completion.

A completion's answer body is held back until it has ended and `on_end` has recorded it (so a client that has it
can have it again); an early answer (the upstream answered before the file was complete) streams at once: holding
it made the client wait out the lingering drain, 2 s (a reviewer's measurement: body at 2.50 s instead of 0.50 s).
"""

from __future__ import annotations

import asyncio
from typing import Any

from relay.resumable.forward import AnswerTranslator

Message = dict[str, Any]


def run(hold: bool, bodies: list[bytes], cap: int = 100) -> tuple[list[Message], list[str], AnswerTranslator]:
    """Feed a start and `bodies` (the last one ends the answer); the messages sent, in order, interleaved with
    `on_end` calls (recorded as "kept")."""
    sent: list[Message] = []
    log: list[str] = []

    async def send(message: Message) -> None:
        sent.append(message)
        log.append(message["type"].rsplit(".", 1)[1] + ":" + repr(message.get("body", b"")))

    async def on_start(status: int, headers: list[tuple[bytes, bytes]]) -> tuple[int, list[tuple[bytes, bytes]], bool]:
        return status, headers, True

    async def on_end(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        log.append(f"kept:{body!r}")

    translator = AnswerTranslator(send, on_start, cap=cap, on_end=on_end, hold=lambda: hold)

    async def main() -> None:
        await translator({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"t/p")]})
        for index, body in enumerate(bodies):
            more = index < len(bodies) - 1
            await translator({"type": "http.response.body", "body": body, "more_body": more})

    asyncio.run(main())
    return sent, log, translator


def test_a_completions_answer_is_held_until_kept() -> None:
    _, log, translator = run(True, [b"ab", b"cd", b""])
    assert log == ["start:b''", "kept:b'abcd'", "body:b'abcd'"]
    assert translator.passed == ([(b"content-type", b"t/p")], b"abcd")


def test_an_early_answer_streams_at_once_and_is_still_noted() -> None:
    _, log, translator = run(False, [b"ab", b"cd", b""])
    assert log == ["start:b''", "body:b'ab'", "body:b'cd'", "body:b''"]  # no kept: _end_answered keeps it
    assert translator.passed == ([(b"content-type", b"t/p")], b"abcd")


def test_a_body_over_the_cap_goes_out_as_it_passes_it_and_is_not_kept() -> None:
    sent, log, translator = run(True, [b"x" * 60, b"y" * 60, b"z", b""], cap=100)
    assert b"".join(message["body"] for message in sent[1:]) == b"x" * 60 + b"y" * 60 + b"z"
    assert log[1] == "body:" + repr(b"x" * 60 + b"y" * 60)  # what was held goes out once past the cap
    assert not any(entry.startswith("kept") for entry in log)
    assert translator.passed == ([(b"content-type", b"t/p")], None)


def test_an_answer_whose_end_never_came_is_whole_by_its_content_length() -> None:
    """The early answer's end may never reach the translator (the client, which had it all, left during the
    lingering drain): its Content-Length tells whether what came is the whole body."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def on_start(status: int, headers: list[tuple[bytes, bytes]]) -> tuple[int, list[tuple[bytes, bytes]], bool]:
        return status, headers, True

    async def main(length: bytes) -> AnswerTranslator:
        translator = AnswerTranslator(send, on_start, cap=100, hold=lambda: False)
        await translator({"type": "http.response.start", "status": 503, "headers": [(b"content-length", length)]})
        await translator({"type": "http.response.body", "body": b"no", "more_body": True})
        return translator

    assert asyncio.run(main(b"2")).complete() == ([(b"content-length", b"2")], b"no")
    assert asyncio.run(main(b"5")).complete() is None  # cut short: nothing to replay
