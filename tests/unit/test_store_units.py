"""Store.unit(): a write unit's reads hold until it commits (SQLite: BEGIN IMMEDIATE)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from daemon.store import Store

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def test_concurrent_write_units_never_lose_an_update(tmp_path: Path) -> None:
    """Two units each read a counter and write it plus one. A deferred transaction lets
    both read 0: one update is lost, or the second fails with "database is locked"
    when it tries to write after the other committed. Taken at the start, the write
    lock makes the second unit wait and read 1."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first, second = Store(url), Store(url)
    with first.unit() as u:
        u.set_state("counter", "0", NOW)
    first_read = threading.Event()
    errors: list[BaseException] = []

    def bump(store: Store, pause: bool) -> None:
        try:
            with store.unit() as u:
                value = int(u.get_state("counter") or "0")
                if pause:
                    first_read.set()
                    time.sleep(0.5)  # give the other unit the chance to read the same value
                u.set_state("counter", str(value + 1), NOW)
        except BaseException as exc:
            errors.append(exc)

    a = threading.Thread(target=bump, args=(first, True))
    a.start()
    assert first_read.wait(10)
    b = threading.Thread(target=bump, args=(second, False))
    b.start()
    a.join(20)
    b.join(20)
    with first.unit(rollback=True) as u:
        counter = u.get_state("counter")
    first.close()
    second.close()
    assert errors == []
    assert counter == "2"


def test_a_rollback_unit_reads_beside_a_writer(tmp_path: Path) -> None:
    """Reads (ops commands, dry runs) do not wait for the daemon's write lock."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    writer, reader = Store(url), Store(url)
    with writer.unit() as u:
        u.set_state("counter", "7", NOW)
    with writer.unit() as w:
        w.set_state("counter", "8", NOW)
        with reader.unit(rollback=True) as r:
            assert r.get_state("counter") == "7"  # the last committed state, at once
    writer.close()
    reader.close()
