"""A folder the app will write is made, or refused up front in a sentence naming the setting to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from catdog_model.atomic import writable_folder
from catdog_model.errors import ServiceError


def test_a_missing_folder_is_made_with_its_parents_and_left_empty(tmp_path):
    writable_folder(tmp_path / "a" / "b", "CATDOG_DATA_DIR")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []


def test_a_file_where_the_folder_belongs_is_refused_naming_the_setting(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ServiceError, match=r"^CATDOG_DATA_DIR \(.*taken/data\) cannot be written: Not a directory\. "
                                           r"Point CATDOG_DATA_DIR at a folder this user can write\.$"):
        writable_folder(tmp_path / "taken" / "data", "CATDOG_DATA_DIR")
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys, where nobody can create a file")
def test_a_folder_that_exists_but_takes_no_files_is_refused_too():
    # An existing folder is not enough: the check writes in it (root included: /sys takes no new file).
    with pytest.raises(ServiceError, match=r"^CATDOG_DATA_DIR \(/sys\) cannot be written"):
        writable_folder(Path("/sys"), "CATDOG_DATA_DIR")
