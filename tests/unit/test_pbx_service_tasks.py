"""No failure of a PBX's background task ends the mount: each real task of a
PbxService, made to fail once, is logged, counted in status and metrics, and runs
again."""

from __future__ import annotations

import trio

from recfs.service import pbx_service
from recfs.service.config import build_options
from recfs.service.metrics import Metrics
from recfs.service.pbx_service import PbxService
from recfs.service.supervise import Supervisor
from recfs.vfs.core import Owner

TASKS = {"session", "back-fill", "tree", "report sources", "cache upkeep", "prefetch"}


def failing_once(real, calls: dict[str, int], name: str):
    async def task(*args, **kwargs) -> None:
        calls[name] = calls.get(name, 0) + 1
        if calls[name] == 1:
            raise RuntimeError(f"{name} broke")
        await real(*args, **kwargs)
    return task


async def test_every_background_task_survives_its_failure(tmp_path, monkeypatch):
    password = tmp_path / "password"
    password.write_text("secret\n")
    password.chmod(0o600)
    # A PBX nobody answers for: the session keeper just keeps trying.
    opts = build_options("https://127.0.0.1:9", str(tmp_path / "mnt"), {
        "password_file": str(password), "state_dir": str(tmp_path / "state"),
        "cache_dir": str(tmp_path / "cache"), "prefetch": "all", "cache_size": "10M",
    }, environ={})
    mount_tasks = Supervisor()
    metrics = Metrics(mount_tasks)
    svc = PbxService(opts, "", 8260, Owner(0, 0), metrics.observers, mount_tasks)
    metrics.watch(svc.status)
    svc.tasks.first_pause = 0.01
    calls: dict[str, int] = {}
    monkeypatch.setattr(pbx_service, "keep_session",
                        failing_once(pbx_service.keep_session, calls, "session"))
    monkeypatch.setattr(pbx_service, "_follow_source_address",
                        failing_once(pbx_service._follow_source_address, calls, "report sources"))
    monkeypatch.setattr(svc.backfill, "run", failing_once(svc.backfill.run, calls, "back-fill"))
    monkeypatch.setattr(svc.watch, "follow", failing_once(svc.watch.follow, calls, "tree"))
    monkeypatch.setattr(svc.cache, "reconcile",
                        failing_once(svc.cache.reconcile, calls, "cache upkeep"))
    monkeypatch.setattr(pbx_service.PrefetchAll, "run",
                        failing_once(pbx_service.PrefetchAll.run, calls, "prefetch"))
    try:
        async with trio.open_nursery() as nursery:
            await svc.start(nursery)
            svc.run_in(nursery)
            with trio.fail_after(5):
                while len([n for n in calls.values() if n >= 2]) < len(TASKS):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert set(calls) == TASKS
        failures = svc.status.snapshot()["task_failures"]
        assert set(failures) == TASKS
        assert all(f["failures"] == 1 for f in failures.values())
        assert failures["back-fill"]["last_error"] == "RuntimeError: back-fill broke"
        scraped = {s.labels["task"]: s.value for family in metrics.registry.collect()
                   for s in family.samples if s.name.startswith("recfs_task_failures")}
        assert scraped == {task: 1.0 for task in TASKS}
    finally:
        svc.close()
