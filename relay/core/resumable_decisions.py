"""Resumable uploads: one pure decision per kind of request, on the state machine of relay/core/resumable.py.

Sans-IO. The glue (relay/resumable/) parses a request with relay.core.resumable_headers, takes the upload's
current state, asks a `decide_*` function here what to do, does the I/O the `Decision` names (`action`),
records `decision.upload` (the next state) and writes `status`/`headers`/`body`.

Decisions, one per kind of request (protocol differences: docs/resumable-protocols.md):
    OPTIONS                      decide_options
    creation on a routed path    decide_create       -> respond 201 | append (after a 104 for the drafts) | forward
    HEAD                         decide_head
    PATCH (or overridden POST)   decide_append_begin -> append | forward (retry) | respond (error, replay)
    the append's body is over    decide_append_end   -> respond | forward | none (client gone) | delete
    the upstream answered        decide_forward_end  -> respond (tus 2xx) | upstream (its own answer)
    DELETE                       decide_delete
    errors from parsing          decide_error;  other methods: method_not_allowed

Where they live (this module gathers them, so the glue imports one name, `decide`):
    relay/core/resumable_replies.py      Decision, the headers and error answers; decide_options, decide_error,
                                         method_not_allowed
    relay/core/resumable_create.py       decide_create, decide_head, decide_delete
    relay/core/resumable_appends.py      decide_append_begin, decide_append_end
    relay/core/resumable_completion.py   decide_forward_end (and the replay of a completion)
"""

from __future__ import annotations

from relay.core.resumable_appends import decide_append_begin, decide_append_end
from relay.core.resumable_completion import decide_forward_end
from relay.core.resumable_create import decide_create, decide_delete, decide_head
from relay.core.resumable_replies import Decision, decide_error, decide_options, method_not_allowed

__all__ = [
    "Decision",
    "decide_append_begin",
    "decide_append_end",
    "decide_create",
    "decide_delete",
    "decide_error",
    "decide_forward_end",
    "decide_head",
    "decide_options",
    "method_not_allowed",
]
