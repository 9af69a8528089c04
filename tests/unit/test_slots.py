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
    asked = {name: trio.Event() for name in ("a", "b", "c", "d")}
    let_go = {name: trio.Event() for name in ("a", "b", "c", "d")}  # connection closed
    preempted: list[str] = []
    order: list[str] = []

    async def holder(name: str) -> None:
        def preempt() -> None:
            preempted.append(name)
            asked[name].set()

        async with slots.hold(lambda: True, idle=lambda: idle.get(name, False), preempt=preempt):
            order.append(name)
            await asked[name].wait()
            await let_go[name].wait()

    async with trio.open_nursery() as nursery:
        for name in ("a", "b"):
            nursery.start_soon(holder, name)
            await trio.testing.wait_all_tasks_blocked()
        idle["a"] = True
        slots.reclaim()  # nobody waits: nothing to give up
        assert preempted == []
        nursery.start_soon(holder, "c")
        await trio.testing.wait_all_tasks_blocked()
        assert preempted == ["a"] and order == ["a", "b"]  # not before a has let go
        let_go["a"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b", "c"] and slots.in_use == 2
        nursery.start_soon(holder, "d")
        await trio.testing.wait_all_tasks_blocked()
        assert preempted == ["a"] and slots.queued == 1  # b and c are busy
        idle["b"] = True
        slots.reclaim()  # what a holder that has just become idle does
        assert preempted == ["a", "b"]
        let_go["b"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b", "c", "d"]
        for name in ("c", "d"):
            asked[name].set()
            let_go[name].set()
    assert slots.free == 2 and slots.preempted == 2



async def test_only_urgent_waiters_preempt_and_once_each():
    slots = Slots(2)
    asked = [trio.Event() for _ in range(3)]
    let_go = trio.Event()
    urgent = [False, False, False]

    async def holder(i: int) -> None:
        async with slots.hold(lambda: urgent[i], idle=lambda: i < 2, preempt=asked[i].set):
            await asked[i].wait()
            await let_go.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder, 0)
        nursery.start_soon(holder, 1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(holder, 2)  # a background transfer: idle holders keep lingering
        await trio.testing.wait_all_tasks_blocked()
        assert slots.queued == 1 and slots.preempted == 0
        urgent[2] = True  # someone opened it
        slots.reclaim()
        slots.reclaim()  # again, while the slot is on its way: still one
        assert sum(a.is_set() for a in asked) == 1 and slots.preempted == 1
        for event in asked:
            event.set()
        let_go.set()
    assert slots.free == 2
