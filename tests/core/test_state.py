from __future__ import annotations

import itertools

import pytest

from relay.core.state import (
    COMPLETED,
    FAILED,
    FORWARDING,
    RECEIVING,
    REJECTED,
    STATES,
    TERMINAL_STATES,
    IllegalTransition,
    transition,
)

LEGAL = {
    (None, RECEIVING),
    (None, REJECTED),
    (RECEIVING, COMPLETED),
    (RECEIVING, FAILED),
    (RECEIVING, FORWARDING),  # Rule 4: a resumable upload with every byte in
    (FORWARDING, COMPLETED),
    (FORWARDING, FAILED),
}


@pytest.mark.parametrize("old,new", list(itertools.product([None, *sorted(STATES)], sorted(STATES))))
def test_table(old: str | None, new: str) -> None:
    if (old, new) in LEGAL:
        assert transition(old, new) == new
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(old, new)
        assert isinstance(info.value, ValueError)
        assert (info.value.old, info.value.new) == (old, new)


def test_terminal_states_have_no_moves() -> None:
    assert TERMINAL_STATES == {COMPLETED, FAILED, REJECTED}
    for state in TERMINAL_STATES:
        for new in STATES:
            with pytest.raises(IllegalTransition):
                transition(state, new)


def test_unknown_states_are_illegal() -> None:
    with pytest.raises(IllegalTransition):
        transition(None, "bogus")
    with pytest.raises(IllegalTransition):
        transition("bogus", FAILED)
