"""A full disk is one line naming the file being written and what became of it (issue #25): a
first write leaves no file, a rewrite leaves the previous one; no claim about a file that never was."""

import errno
import tempfile

import pandas as pd
import pytest

from src.core.errors import UserError
from src.core.io_utils import write_csv, write_json


def _full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_on_a_first_write_names_the_file_and_says_it_was_not_created(tmp_path, monkeypatch):
    path = tmp_path / "fold0/history.csv"
    monkeypatch.setattr(pd.DataFrame, "to_csv", _full)
    with pytest.raises(UserError) as exc:
        write_csv(path, pd.DataFrame({"epoch": [0]}))
    msg = str(exc.value)
    assert msg.startswith(f"could not write {path}: no space left on its disk") and "\n" not in msg
    assert f"{path} was not created" in msg and "before this write" not in msg, msg
    assert not path.exists() and list(path.parent.iterdir()) == []  # no half-written temporary either


def test_a_full_disk_on_a_rewrite_says_the_file_keeps_its_previous_contents(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"epoch": 0})
    monkeypatch.setattr(pd.DataFrame, "to_csv", _full)
    monkeypatch.setattr(type(path), "write_text", _full)
    with pytest.raises(UserError) as exc:
        write_json(path, {"epoch": 1})
    assert f"{path} keeps its previous contents" in str(exc.value), exc.value
    monkeypatch.undo()
    assert path.read_text() == '{\n  "epoch": 0\n}\n'


def test_a_full_disk_before_the_temporary_file_exists_is_one_line_too(tmp_path, monkeypatch):
    """No room for even an empty file (or no inodes left): mkstemp itself fails."""
    path = tmp_path / "oof.parquet"
    monkeypatch.setattr(tempfile, "mkstemp", _full)
    with pytest.raises(UserError, match=rf"could not write {path}: no space left .*\({path} was not created"):
        write_csv(path, pd.DataFrame({"a": [1]}))
