"""Presses the server did not hear, kept on the board's disk across restarts and power cuts."""

from __future__ import annotations

from pathlib import Path

from intercom.kept_presses import KeptPresses
from intercom_protocol.door import MissedPress


def test_kept_presses_come_back_in_order_with_their_pictures_and_go_once_reported(tmp_path: Path) -> None:
    kept = KeptPresses(tmp_path / "presses")
    first, second = MissedPress(1_700_000_000.123, b"\xff\xd8\xffjpeg"), MissedPress(1_700_000_060.5, None)
    kept.save([first, second])
    assert sorted(p.name for p in (tmp_path / "presses").iterdir()) == ["press-1700000000123.json",
                                                                      "press-1700000060500.json"]
    assert KeptPresses(tmp_path / "presses").load() == [first, second]  # a new run reads them back
    kept.save([second])  # the first was reported
    assert KeptPresses(tmp_path / "presses").load() == [second]
    assert kept.last_error is None


def test_a_damaged_file_is_left_for_the_installer_and_the_rest_still_load(tmp_path: Path, caplog) -> None:
    kept = KeptPresses(tmp_path)
    kept.save([MissedPress(10.0, None)])
    (tmp_path / "press-5000.json").write_text('{"pressed_at": ')  # cut short (not by us: we rename whole files)
    assert kept.load() == [MissedPress(10.0, None)]
    assert "cannot read the kept press" in caplog.text and (tmp_path / "press-5000.json").exists()


def test_a_state_dir_that_is_a_file_is_said_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    kept = KeptPresses(tmp_path / "file" / "presses")
    kept.save([MissedPress(10.0, None)])
    assert kept.last_error is not None and kept.last_error.startswith(f"cannot write kept presses in {tmp_path}")
    assert kept.load() == []
