"""Issue 23, item 1: make-student checks everything before it touches the destination.

It never deletes the exercises, nor (without --force) a file it did not write, and a
failure on the way leaves the previous handout as it was.
"""

import os

import pytest

from minicrate.cli import main
from minicrate.grading import student as ms

NOTEBOOK = '''---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  name: python3
---

# Tiny

```{code-cell} python
def double(x):
    """Task 1.1: double x."""
    ### BEGIN SOLUTION
    return 2 * x
    ### END SOLUTION
```
'''


@pytest.fixture
def exercises(tmp_path):
    pytest.importorskip("jupytext")
    src = tmp_path / "exercises"
    src.mkdir()
    (src / "tiny.md").write_text(NOTEBOOK)
    return src


def _snapshot(folder):
    return {os.path.relpath(os.path.join(root, f), folder): open(os.path.join(root, f), "rb").read()
            for root, _, files in os.walk(folder) for f in files}


def test_an_empty_source_leaves_the_previous_handout_and_the_instructors_files(tmp_path, exercises,
                                                                               capsys):
    dist = tmp_path / "dist"
    assert ms.make_student(str(exercises), str(dist)) == ["tiny"]
    (dist / "notes.txt").write_text("the instructor's")
    before = _snapshot(dist)
    empty = tmp_path / "empty_src"
    empty.mkdir()
    assert main(["make-student", str(empty), str(dist)]) == 1
    err = capsys.readouterr().err.strip()
    assert "no MyST exercise notebooks" in err and err.count("\n") == 0
    assert main(["make-student", str(tmp_path / "missing"), str(dist), "--force"]) == 1
    assert "no exercises folder" in capsys.readouterr().err
    assert _snapshot(dist) == before


def test_a_source_inside_the_destination_is_refused_even_with_force(tmp_path, exercises):
    dist2 = tmp_path / "dist2"
    ms.make_student(str(exercises), str(dist2))
    mine = dist2 / "my_exercises"
    mine.mkdir()
    (mine / "tiny.md").write_text(NOTEBOOK.replace("# Tiny", "# Tiny, edited by the instructor"))
    before = _snapshot(dist2)
    for force in (False, True):
        with pytest.raises(ValueError, match="contains the exercises folder"):
            ms.make_student(str(mine), str(dist2), force=force)
    assert _snapshot(dist2) == before
    with pytest.raises(ValueError, match="outside the exercises folder"):
        ms.make_student(str(exercises), str(exercises / "out"), force=True)


def test_the_current_folder_is_never_replaced(tmp_path, exercises, monkeypatch):
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    with pytest.raises(ValueError, match="contains the current folder"):
        ms.make_student(str(exercises), str(tmp_path / "work"), force=True)
    assert here.is_dir()


@pytest.mark.parametrize("change", ["added file", "edited file", "folder"])
def test_files_it_did_not_write_are_refused_unless_force(tmp_path, exercises, change):
    dist = tmp_path / "dist"
    ms.make_student(str(exercises), str(dist))
    if change == "added file":
        (dist / "solutions.py").write_text("keep me")
        named = "solutions.py"
    elif change == "edited file":
        (dist / "README.md").write_text("my own introduction")
        named = "README.md (edited)"
    else:
        (dist / "data").mkdir()
        named = "data" + os.sep
    before = _snapshot(dist)
    with pytest.raises(ValueError, match="not written by make-student") as info:
        ms.make_student(str(exercises), str(dist))
    assert named in str(info.value) and "--force" in str(info.value)
    assert _snapshot(dist) == before
    ms.make_student(str(exercises), str(dist), force=True)
    assert sorted(os.listdir(dist)) == sorted(["tiny.md", "tiny.ipynb", "README.md", ms.MARKER_FILE])


def test_its_own_files_and_caches_are_replaced_without_asking(tmp_path, exercises):
    dist = tmp_path / "dist"
    ms.make_student(str(exercises), str(dist))
    (dist / ".ipynb_checkpoints").mkdir()
    (exercises / "second.md").write_text(NOTEBOOK.replace("double", "triple"))
    assert ms.make_student(str(exercises), str(dist)) == ["second", "tiny"]
    (exercises / "second.md").unlink()
    assert ms.make_student(str(exercises), str(dist)) == ["tiny"]  # second.* was its own: gone
    assert not (dist / "second.ipynb").exists() and not (dist / ".ipynb_checkpoints").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(dist).st_mode & 0o777 == 0o777 & ~umask  # not a temporary folder's 0700


def test_a_marker_of_the_older_version_still_counts_its_twins_as_its_own(tmp_path, exercises):
    dist = tmp_path / "dist"
    ms.make_student(str(exercises), str(dist))
    (dist / ms.MARKER_FILE).write_text("written by `python -m minicrate make-student`; safe to delete\n")
    ms.make_student(str(exercises), str(dist))
    (dist / ms.MARKER_FILE).write_text("written by `python -m minicrate make-student`; safe to delete\n")
    (dist / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        ms.make_student(str(exercises), str(dist))


def test_a_failure_while_writing_leaves_the_previous_handout(tmp_path, exercises, monkeypatch):
    import jupytext

    dist = tmp_path / "dist"
    ms.make_student(str(exercises), str(dist))
    before = _snapshot(dist)
    calls = []
    real = jupytext.write

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(jupytext, "write", failing)
    with pytest.raises(OSError, match="No space left"):
        ms.make_student(str(exercises), str(dist))
    assert _snapshot(dist) == before
    assert sorted(os.listdir(tmp_path)) == ["dist", "exercises"]  # no temporary folder left
