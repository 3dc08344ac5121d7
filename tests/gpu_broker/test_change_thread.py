"""The cluster service's change thread: changes run in order on one thread, and callers hear of a change only once
what it did is saved; changes queued together share one save (group commit)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from notebookos.gpu_broker.cluster.service.changes import ChangeThread


class Recorder:
    """What ran and when the saves came, in order, as one list."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.threads: set[str] = set()
        self.fail_save = False

    def change(self, name: str) -> str:
        self.threads.add(threading.current_thread().name)
        self.log.append(name)
        return name.upper()

    def save(self) -> None:
        if self.fail_save:
            raise OSError("disk full")
        self.log.append("save")


async def _run(body):  # type: ignore[no-untyped-def]
    recorder = Recorder()
    changes = ChangeThread(asyncio.get_running_loop(), recorder.save)
    try:
        return await body(recorder, changes)
    finally:
        changes.shutdown()


def test_a_change_is_answered_after_its_save_and_changes_queued_together_share_one() -> None:
    async def body(recorder: Recorder, changes: ChangeThread) -> None:
        gate = threading.Event()
        # The first change holds the thread until three more have queued behind it.
        first = changes.submit(lambda: gate.wait(10) and recorder.change("a"))
        queued = [changes.submit(recorder.change, name) for name in ("b", "c", "d")]
        gate.set()
        assert await first == "A"
        assert await asyncio.gather(*queued) == ["B", "C", "D"]
        # b, c and d queued while a ran: they share one save (a had its own, unless all four were queued at once).
        assert recorder.log in (["a", "save", "b", "c", "d", "save"], ["a", "b", "c", "d", "save"])
        assert recorder.threads == {"cluster"}

    asyncio.run(_run(body))


def test_a_refused_change_fails_only_its_own_caller_and_what_it_changed_is_still_saved() -> None:
    async def body(recorder: Recorder, changes: ChangeThread) -> None:
        def refuse() -> None:
            recorder.log.append("half")
            raise ValueError("no such kernel")

        refused, fine = changes.submit(refuse), changes.submit(recorder.change, "ok")
        with pytest.raises(ValueError, match="no such kernel"):
            await refused
        assert await fine == "OK"
        assert recorder.log.index("save") > recorder.log.index("half")

    asyncio.run(_run(body))


def test_a_failed_save_fails_the_changes_it_would_have_kept() -> None:
    async def body(recorder: Recorder, changes: ChangeThread) -> None:
        recorder.fail_save = True
        with pytest.raises(OSError, match="disk full"):
            await changes.submit(recorder.change, "lost")
        recorder.fail_save = False
        assert await changes.submit(recorder.change, "kept") == "KEPT"

    asyncio.run(_run(body))


def test_shutdown_runs_what_is_queued_first() -> None:
    async def body(recorder: Recorder, changes: ChangeThread) -> None:
        pending = changes.submit(recorder.change, "last")
        changes.shutdown()
        assert await pending == "LAST"
        assert recorder.log == ["last", "save"]

    asyncio.run(_run(body))
