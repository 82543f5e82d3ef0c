"""The upload lifecycle, as a transition table.

States: `receiving`, `forwarding`, `completed`, `failed`, `rejected`. The relay records each upload's state
and asks `transition(old, new)` before every move.

Rule 1: a new upload (old state None) starts `receiving`, or is `rejected` when it is refused from its
        headers alone (size, auth, concurrency, a bad upload id or boundary), before any body byte is read.
Rule 2: `receiving` ends in exactly one of `completed` (upstream answered and the answer was relayed) or
        `failed` (a limit, a malformed body, a disconnect, an upstream error).
Rule 3: `completed`, `failed` and `rejected` are terminal: no move leaves them, not even to themselves.
Rule 4: a resumable upload is `receiving` from its creation and between its appends, then `forwarding` once
        every byte is in and until the upstream has answered (it stays there while forwarding is retried),
        then `completed`; it ends `failed` when it expires or is terminated, from `receiving` or `forwarding`.
Anything else raises IllegalTransition.
"""

from __future__ import annotations

__all__ = [
    "COMPLETED",
    "FAILED",
    "FORWARDING",
    "RECEIVING",
    "REJECTED",
    "STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "IllegalTransition",
    "transition",
]

RECEIVING = "receiving"
FORWARDING = "forwarding"
COMPLETED = "completed"
FAILED = "failed"
REJECTED = "rejected"

STATES = frozenset({RECEIVING, FORWARDING, COMPLETED, FAILED, REJECTED})
TERMINAL_STATES = frozenset({COMPLETED, FAILED, REJECTED})

TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({RECEIVING, REJECTED}),  # Rule 1
    RECEIVING: frozenset({COMPLETED, FAILED, FORWARDING}),  # Rules 2 and 4
    FORWARDING: frozenset({COMPLETED, FAILED}),  # Rule 4
    COMPLETED: frozenset(),  # Rule 3
    FAILED: frozenset(),
    REJECTED: frozenset(),
}


class IllegalTransition(ValueError):
    """A move the lifecycle table does not allow."""

    def __init__(self, old: str | None, new: str) -> None:
        self.old, self.new = old, new
        super().__init__(f"illegal upload state transition {old!r} -> {new!r}")


def transition(old: str | None, new: str) -> str:
    """Return `new` if the table allows `old -> new`; raise IllegalTransition otherwise."""
    allowed = TRANSITIONS.get(old)
    if allowed is None or new not in allowed:
        raise IllegalTransition(old, new)
    return new
