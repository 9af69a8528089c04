"""Background tasks that fail are logged, counted and started again."""

from __future__ import annotations

import logging

import trio

from recfs.service.supervise import Supervisor


async def test_a_failing_task_is_restarted_with_growing_pauses(caplog):
    runs: list[float] = []

    async def flaky() -> None:
        runs.append(trio.current_time())
        if len(runs) < 4:
            raise ValueError(f"failure {len(runs)}")
        await trio.sleep_forever()

    supervisor = Supervisor("pbx1", first_pause=0.05, max_pause=0.1)
    with caplog.at_level(logging.ERROR, logger="recfs.service"):
        async with trio.open_nursery() as nursery:
            supervisor.start(nursery, "back-fill", flaky)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    assert len(runs) == 4
    pauses = [b - a for a, b in zip(runs, runs[1:])]
    assert 0.05 <= pauses[0] < pauses[1] and pauses[2] >= 0.1
    health = supervisor.health["back-fill"]
    assert health.failures == 3 and health.last_error == "ValueError: failure 3"
    assert supervisor.snapshot()["back-fill"]["failures"] == 3
    assert "background task pbx1: back-fill failed (ValueError: failure 1)" in caplog.text


async def test_cancellation_is_not_a_failure():
    supervisor = Supervisor()

    async def forever() -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        supervisor.start(nursery, "tree", forever)
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert supervisor.health["tree"].failures == 0 and supervisor.snapshot() == {}


async def test_a_task_that_ends_is_not_restarted():
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    supervisor = Supervisor(first_pause=0.01)
    async with trio.open_nursery() as nursery:
        supervisor.start(nursery, "cache upkeep", once)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert runs == 1
