"""Body bytes read before a client closed its connection, handed to the app ahead of `http.disconnect`.

uvicorn's `receive()` answers `http.disconnect` as soon as the connection is gone and leaves what the request
cycle's `body` holds unread. relay/protocol.py's protocol wraps each cycle's `receive` in `KeptBodyReceive`, and on
`connection_lost` marks the current cycle `cut_short` when it still holds something the app has not had.

Rules:
1. Bytes read before the close reach the app, as an `http.request`, before the `http.disconnect`: an append keeps
   what its client delivered (the contract), even when the head and the first bytes came in one packet and the
   close right after, while the resumable endpoint was still looking up its upload.
2. `more_body` is the cycle's own: True while part of the body is missing (the request then ends with
   `http.disconnect`, as before: a plain upload cut short is still a failed upload, an append keeps its part), and
   False when the whole body was read before the close. Such a request is complete and is handled as one (only
   its answer has nowhere to go): a resumable append that brought the last byte completes the upload and forwards
   it. A body that ended with nothing left unread (an empty one, a chunked one's last chunk) still gets that last
   message. Handed on as a broken append, either left the upload `receiving` with every byte in, which HEAD
   reports as done to a client that then never sends the completing request again.
3. Only a cycle the peer closed: `relay.abort` and the forced quit mark the cycle disconnected first, and get
   nothing. A framing error in the body (a bad chunk size, trailers over the limit) counts as the peer's close:
   relay/protocol.py answers it, ends the cycle and marks it `cut_short`, so the bytes before the error are handed on.
   The wrapper wraps rather than subclasses the cycle: relay/tuning.py may have swapped uvicorn's cycle
   class for its no-copy one, whose `body` is a list of chunks.
"""

from __future__ import annotations

from typing import cast

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from relay.types import Message

__all__ = ["KeptBodyReceive"]


class KeptBodyReceive:
    """The `receive` of one request cycle: uvicorn's, plus the rules in the module docstring."""

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle
        self.receive = cycle.receive
        self.cut_short = False
        self.ended = False  # the app has had the body's last message (`more_body` False)

    async def __call__(self) -> Message:
        message = cast(Message, await self.receive())
        cycle = self.cycle
        if message["type"] == "http.request":
            self.ended = self.ended or not message.get("more_body", False)
            return message
        if not self.cut_short or self.ended or not (cycle.body or not cycle.more_body):
            return message
        # As uvicorn's receive() takes a body (bytes() of the no-copy buffer's single chunk is that chunk). A body
        # that ended with nothing left unread (an empty one, a chunked one's last chunk) still gets its last message.
        body = bytes(cycle.body)
        cycle.body = bytearray()
        self.ended = not cycle.more_body
        return {"type": "http.request", "body": body, "more_body": bool(cycle.more_body)}
