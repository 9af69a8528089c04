"""Download slots: never more than N at once; a waiting transfer someone reads goes
before waiting background ones, even if its priority changed while it waited."""

from __future__ import annotations

import trio
import trio.testing

from recfs.content.slots import Slots


async def test_never_more_than_count_and_urgent_first():
    slots = Slots(2)
    order: list[str] = []
    running = peak = 0
    urgency = {"bg1": False, "bg2": False, "bg3": False, "reader": False, "bg4": False}
    gates = {name: trio.Event() for name in urgency}

    async def transfer(name: str) -> None:
        nonlocal running, peak
        async with slots.hold(lambda: urgency[name]):
            order.append(name)
            running += 1
            peak = max(peak, running)
            await gates[name].wait()
            running -= 1

    async with trio.open_nursery() as nursery:
        for name in urgency:
            nursery.start_soon(transfer, name)
            await trio.testing.wait_all_tasks_blocked()
        assert order == ["bg1", "bg2"] and slots.queued == 3
        urgency["reader"] = True  # someone opened it while it waited
        gates["bg1"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["bg1", "bg2", "reader"]
        for name in ("bg2", "reader", "bg3", "bg4"):
            gates[name].set()
    assert order[:3] == ["bg1", "bg2", "reader"] and sorted(order[3:]) == ["bg3", "bg4"]
    assert peak == 2 and slots.free == 2


async def test_a_cancelled_waiter_gives_nothing_away():
    slots = Slots(1)
    async with trio.open_nursery() as nursery:
        hold = trio.Event()

        async def first():
            async with slots.hold(lambda: False):
                await hold.wait()

        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):
            async with slots.hold(lambda: True):
                raise AssertionError("got a slot that was taken")
        assert slots.queued == 0
        hold.set()
    assert slots.free == 1
