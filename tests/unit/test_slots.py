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


async def test_an_idle_holder_gives_its_slot_to_a_waiter():
    """A holder nobody needs (its readers gone) is asked for its slot when someone
    waits, once per waiter; busy holders are not; the slot passes on only when the
    idle holder has let go."""
    slots = Slots(2)
    idle = {"a": False, "b": False}
    leave = {name: trio.Event() for name in ("a", "b", "c", "d")}
    preempted: list[str] = []
    order: list[str] = []

    async def holder(name: str) -> None:
        def preempt() -> None:
            preempted.append(name)
            leave[name].set()

        async with slots.hold(lambda: True, idle=lambda: idle.get(name, False), preempt=preempt):
            order.append(name)
            await leave[name].wait()
            await trio.sleep(0.01)  # letting go takes a moment (closing the connection)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder, "a")
        nursery.start_soon(holder, "b")
        await trio.testing.wait_all_tasks_blocked()
        idle["a"] = True
        slots.reclaim()  # nobody waits: nothing to give up
        assert preempted == []
        nursery.start_soon(holder, "c")
        await trio.testing.wait_all_tasks_blocked()
        assert preempted == ["a"] and order == ["a", "b"]  # not before a has let go
        await trio.sleep(0.02)
        assert order == ["a", "b", "c"] and slots.in_use == 2
        nursery.start_soon(holder, "d")
        await trio.testing.wait_all_tasks_blocked()
        assert preempted == ["a"] and slots.queued == 1  # b and c are busy
        idle["b"] = True
        slots.reclaim()  # what a holder that has just become idle does
        assert preempted == ["a", "b"]
        await trio.sleep(0.02)
        assert order == ["a", "b", "c", "d"]
        leave["c"].set()
        leave["d"].set()
    assert slots.free == 2 and slots.preempted == 2


async def test_one_preemption_per_waiter():
    slots = Slots(2)
    leave = [trio.Event() for _ in range(3)]
    preempted: list[int] = []

    async def holder(i: int) -> None:
        def preempt() -> None:
            preempted.append(i)
            leave[i].set()

        async with slots.hold(lambda: False, idle=lambda: i < 2, preempt=preempt):
            await leave[i].wait()
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder, 0)
        nursery.start_soon(holder, 1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(holder, 2)
        await trio.testing.wait_all_tasks_blocked()
        slots.reclaim()  # again, while the slot is on its way: still one
        assert len(preempted) == 1
        leave[2].set()
    assert slots.free == 2
