"""The audit log: entries chain by hash; edits, deletions and a cut-off tail are each found."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_store import audit, open_store


@pytest.fixture()
def store(tmp_path: Path):
    with open_store(tmp_path / "gateway.db") as s:
        for i in range(5):
            audit.record(s.db, actor="admin", action="meter.edit", target=f"meter m{i}", detail={"poll_s": i}, now=1000.0 + i)
        yield s


def test_entries_chain_and_verify(store) -> None:
    result = audit.verify(store.db)
    assert result.ok and result.checked == 5
    newest = audit.entries(store.db, limit=2)
    assert [e.id for e in newest] == [5, 4]
    assert newest[0].prev_hash == newest[1].hash
    assert newest[0].detail == {"poll_s": 4}
    assert [e.id for e in audit.entries(store.db, action_prefix="meter")] == [5, 4, 3, 2, 1]
    assert audit.entries(store.db, action_prefix="login") == []


def test_an_edited_entry_is_found(store) -> None:
    store.db.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 3")
    store.db.conn.commit()
    assert audit.verify(store.db).problems == ("entry 3 (meter.edit by mallory): content does not match its hash (edited)",)


def test_a_deleted_entry_is_found(store) -> None:
    store.db.execute("DELETE FROM audit_log WHERE id = 2")
    store.db.conn.commit()
    assert audit.verify(store.db).problems == (
        "entries 2..2 are missing (deleted)",
        "entry 3: does not follow the entry before it (an entry before it was deleted or edited)",
    )


def test_a_cut_off_tail_is_found(store) -> None:
    store.db.execute("DELETE FROM audit_log WHERE id >= 4")
    store.db.conn.commit()
    assert audit.verify(store.db).problems == (
        "the log ends at entry 3 but entry 5 was written last (entries at the end were deleted or edited)",)


def test_a_record_rolls_back_with_the_change_it_audits(store) -> None:
    with pytest.raises(RuntimeError):
        with store.db.atomic():
            audit.record(store.db, actor="admin", action="user.add", target="user bob")
            raise RuntimeError("the change failed")
    assert audit.verify(store.db).ok and audit.entries(store.db, limit=1)[0].id == 5
