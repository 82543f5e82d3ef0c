from __future__ import annotations

import pytest

from relay.core.progress import ProgressPolicy, ProgressTicker


def ticks(ticker: ProgressTicker, steps: list[tuple[int, float]], total: int | None) -> list[float]:
    return [now for nbytes, now in steps if ticker.due(nbytes, total, now)]


def test_first_chunk_ticks() -> None:
    assert ProgressTicker().due(1, None, 5.0)


def test_never_more_often_than_min_interval() -> None:
    ticker = ProgressTicker(ProgressPolicy(percent_step=1.0))
    # Every chunk crosses a percent step, but they arrive every 10 ms.
    steps = [(i * 10, i * 0.01) for i in range(1, 101)]
    times = ticks(ticker, steps, total=1000)
    assert all(b - a >= 0.1 - 1e-9 for a, b in zip(times, times[1:], strict=False))
    assert len(times) == 10


def test_at_least_once_per_max_interval_while_bytes_flow() -> None:
    ticker = ProgressTicker(ProgressPolicy(percent_step=None))
    steps = [(i, i * 0.05) for i in range(1, 101)]  # 5 s of chunks, no total
    times = ticks(ticker, steps, total=None)
    assert times[0] == 0.05
    assert all(b - a <= 1.0 + 0.05 + 1e-9 for a, b in zip(times, times[1:], strict=False))
    assert len(times) == 5


def test_idle_upload_makes_no_ticks_until_a_chunk_arrives() -> None:
    ticker = ProgressTicker()
    assert ticker.due(1, None, 0.0)
    assert ticker.due(2, None, 30.0)


def test_percent_steps_of_a_declared_total() -> None:
    ticker = ProgressTicker(ProgressPolicy(percent_step=10.0))
    total = 1000
    assert ticker.due(1, total, 0.0)
    assert not ticker.due(50, total, 0.5)  # still in the first 10 %
    assert ticker.due(100, total, 0.6)  # crossed 10 %
    assert not ticker.due(150, total, 0.8)
    assert not ticker.due(350, total, 0.65 + 0.0)  # crossed, but within min_interval of the last tick
    assert ticker.due(360, total, 0.75)  # the skipped step is reported now


def test_no_percent_ticks_without_total_or_step() -> None:
    for policy, total in ((ProgressPolicy(), None), (ProgressPolicy(), 0), (ProgressPolicy(percent_step=None), 100)):
        ticker = ProgressTicker(policy)
        assert ticker.due(1, total, 0.0)
        assert not ticker.due(99, total, 0.5)


def test_bytes_beyond_the_declared_total_do_not_tick_forever() -> None:
    ticker = ProgressTicker()
    assert ticker.due(200, 100, 0.0)
    assert not ticker.due(300, 100, 0.5)


@pytest.mark.parametrize("kwargs", [{"min_interval": -1}, {"min_interval": 2, "max_interval": 1}, {"percent_step": 0}])
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ProgressPolicy(**kwargs)
