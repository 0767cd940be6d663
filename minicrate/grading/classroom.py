"""Grading a whole class: every submission in its own time- and memory-limited subprocess.

:func:`grade_class` grades every file (or sub-folder) of a folder as one
student.  Each student's code runs in a child process
(:mod:`minicrate.grading.sandbox`) that only imports the student's files and
runs every task's cases through the student's functions; the outputs come
back as plain arrays and are graded *here*, in the grader's own process, by
:func:`~minicrate.grading.engine.check` (``runs=``).  So a submission that
loops forever gets ``timeout`` for that task (the child is killed and a new
one grades the remaining tasks), one that calls ``os._exit`` gets ``crash``,
and one that patches ``minicrate.grading`` patches only its own child.

A result is a :class:`Row` of the long-format gradebook
``student,task,score,status,message``, status one of :data:`STATUSES`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from minicrate.grading.engine import check
from minicrate.grading.registry import all_tasks, get_task
from minicrate.grading.sandbox import read_frame
from minicrate.grading.types import CaseRun

STATUSES = ("ok", "wrong", "error", "timeout", "crash", "missing")
COLUMNS = ("student", "task", "score", "status", "message")
GRADABLE = (".py", ".ipynb", ".md")
_CHILD = "from minicrate.grading.sandbox import main; main()"


@dataclasses.dataclass
class Row:
    """One gradebook row; ``hints`` (the known mistakes named) and ``report`` (the full
    :class:`~minicrate.grading.types.CheckResult` text) are for the summary and ``--json``."""

    student: str
    task: str
    score: float
    status: str
    message: str = ""
    hints: list = dataclasses.field(default_factory=list)
    report: str = ""

    def csv_row(self):
        return [self.student, self.task, f"{self.score:.4f}", self.status, self.message]


def submissions(folder) -> list:
    """``(student, files)`` for every gradable file and every sub-folder of ``folder``, sorted."""
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder} is not a folder of submissions")
    out = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.startswith((".", "_")):
            continue
        if os.path.isdir(path):
            files = sorted(
                os.path.join(root, f)
                for root, _, names in os.walk(path)
                for f in names
                if f.endswith(GRADABLE) and not f.startswith(".")
            )
            out.append((entry, files))
        elif entry.endswith(GRADABLE):
            out.append((os.path.splitext(entry)[0], [path]))
    return out


def _one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def row_of(student, result) -> Row:
    """The gradebook row of a :class:`~minicrate.grading.types.CheckResult`."""
    if result.status == "passed":
        return Row(student, result.task, 1.0, "ok", "", [], str(result))
    if result.status == "not implemented":
        return Row(student, result.task, 0.0, "missing", _one_line(result.note), [], str(result))
    failing = [p for p in result.properties if not p.passed]
    hints = [h for p in failing for h in p.hints]
    if result.status == "error" or len(result.properties) == 1:
        status = "error"
    else:
        status = "wrong"
    if failing:
        first = failing[0]
        message = first.message.splitlines()[0] if first.message else first.name
        if first.hints:
            message += f" | hint: {first.hints[0]}"
    else:
        message = result.note
    return Row(student, result.task, round(result.score, 4), status, _one_line(message), hints,
               str(result))


def _decode_runs(header, arrays) -> list:
    """The child's runs as :class:`CaseRun` s, every field checked (it is untrusted data)."""
    runs = []
    for i, r in enumerate(header.get("runs") or []):
        if not isinstance(r, dict):
            raise ValueError("malformed run")
        names = r.get("outputs")
        outputs = None
        if names is not None:
            outputs = {str(k): np.asarray(arrays[f"a{i}_{j}"], dtype=np.float64)
                       for j, k in enumerate(names)}
        dtypes = {str(k): (np.dtype(v).name if v else None)
                  for k, v in dict(r.get("dtypes") or {}).items()}
        err, ni = r.get("error"), r.get("not_implemented")
        runs.append(CaseRun(outputs, dtypes, None if err is None else str(err),
                            None if ni is None else str(ni)))
    return runs


class Child:
    """One sandboxed child process and a thread turning its pipe into messages."""

    def __init__(self, files, tasks, options, memory_mb):
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.workdir = tempfile.mkdtemp(prefix="minicrate-sandbox-")  # what the code writes
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(write_fd,), env=env, start_new_session=True,
            cwd=self.workdir,
        )
        os.close(write_fd)
        job = dict(options, files=list(files), tasks=list(tasks or []), fd=write_fd,
                   memory_mb=memory_mb)
        try:
            self.proc.stdin.write(json.dumps(job).encode())
            self.proc.stdin.close()
        except OSError:
            pass
        self.messages = queue.Queue()
        self.pipe = os.fdopen(read_fd, "rb")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                data = read_frame(self.pipe)
                if data is None:
                    break
                header, arrays = json.loads(data), {}
                if header.get("arrays"):
                    blob = read_frame(self.pipe)
                    if blob is None:
                        break
                    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                        arrays = {k: npz[k] for k in npz.files}
                self.messages.put((header, arrays))
        except Exception:  # a malformed stream ends like a crash
            pass
        self.messages.put(None)

    def next(self, timeout):
        """The next ``(header, arrays)``; ``"timeout"``; or ``None`` when the child is gone."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return "timeout"

    def exit_note(self):
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the process stopped answering"
        if code < 0:
            return f"the process was killed by signal {-code} (out of memory, or a crash)"
        return f"the process exited with status {code} before finishing this task"

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()
        self.pipe.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def grade_student(student, files, tasks=None, *, timeout=60.0, memory_mb=4096, seed=None,
                  examples=None, backend="numpy", on_row=None) -> list:
    """Grade one student's files, each task within ``timeout`` seconds of wall clock.

    ``tasks`` default to the tasks of the notebooks the files are named after,
    else every task whose function the files define (as ``minicrate grade``).
    """
    options = {"seed": seed, "examples": examples, "backend": backend}
    rows = []

    def emit(row):
        rows.append(row)
        if on_row is not None:
            on_row(row)

    if not files:
        for t in tasks or ():
            emit(Row(student, t, 0.0, "missing", "no .py, .ipynb or .md file in the submission"))
        return rows
    remaining = list(tasks) if tasks else None
    while remaining is None or remaining:
        child = Child(files, remaining, options, memory_mb)
        try:
            loaded = child.next(timeout)
            if not isinstance(loaded, tuple):
                why = (f"importing the submission took more than {timeout:g} s"
                       if loaded == "timeout" else f"importing the submission failed: {child.exit_note()}")
                status = "timeout" if loaded == "timeout" else "crash"
                for t in remaining or ["import"]:
                    emit(Row(student, t, 0.0, status, why))
                return rows
            header = loaded[0]
            known = all_tasks()
            todo = [str(t) for t in header.get("tasks") or [] if str(t) in known]
            if remaining is None:
                remaining = todo
                if not todo:
                    note = "; ".join(header.get("errors") or []) or "defines none of the task functions"
                    emit(Row(student, "import", 0.0, "error", _one_line(note)))
                    return rows
            import_note = "; ".join(header.get("errors") or [])
            while remaining:
                task_id = remaining[0]
                msg = child.next(timeout)
                if msg == "timeout":
                    emit(Row(student, task_id, 0.0, "timeout",
                             f"took more than {timeout:g} s (an endless loop?); stopped"))
                    remaining.pop(0)
                    break
                if msg is None:
                    emit(Row(student, task_id, 0.0, "crash", child.exit_note()))
                    remaining.pop(0)
                    break
                remaining.pop(0)
                emit(_grade_answer(student, task_id, msg, options, import_note))
        finally:
            child.kill()
    return rows


def _grade_answer(student, task_id, msg, options, import_note):
    header, arrays = msg
    task = get_task(task_id)
    if header.get("task") != task_id:
        return Row(student, task_id, 0.0, "crash", "the sandbox answered for another task")
    if header.get("missing"):
        note = f"no function named {task.function}" + (f" ({import_note})" if import_note else "")
        return Row(student, task_id, 0.0, "missing", _one_line(note))
    try:
        runs = _decode_runs(header, arrays)
    except Exception as err:
        return Row(student, task_id, 0.0, "crash", f"the sandbox's answer was malformed: {err}")
    opts = {k: v for k, v in options.items() if v is not None}
    result = check(task, None, runs=runs, name=task.function, **opts)
    return row_of(student, result)


def grade_class(folder, tasks=None, *, timeout=60.0, jobs=1, memory_mb=4096, seed=None,
                examples=None, backend="numpy", on_row=None) -> list:
    """Grade every submission of ``folder`` (see :func:`submissions`), ``jobs`` at a time.

    ``on_row(row)`` is called (from one thread at a time) as each task finishes.
    Returns every :class:`Row`, students in folder order.
    """
    for t in tasks or ():
        get_task(t)  # an unknown task fails before anything runs
    lock = threading.Lock()

    def locked(row):
        if on_row is not None:
            with lock:
                on_row(row)

    def one(item):
        student, files = item
        return grade_student(student, files, tasks, timeout=timeout, memory_mb=memory_mb,
                             seed=seed, examples=examples, backend=backend, on_row=locked)

    items = submissions(folder)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        return [row for rows in pool.map(one, items) for row in rows]


class CsvGradebook:
    """The long-format gradebook, written and flushed one row at a time."""

    def __init__(self, path):
        self.fh = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.fh)
        self.writer.writerow(COLUMNS)
        self.fh.flush()

    def __call__(self, row):
        self.writer.writerow(row.csv_row())
        self.fh.flush()

    def close(self):
        self.fh.close()


def summarize(rows, top=3) -> dict:
    """Per task: students, mean score, how many of each status, the most common mistakes."""
    by_task = collections.defaultdict(list)
    for r in rows:
        by_task[r.task].append(r)
    out = {}
    for task, rs in by_task.items():
        named = collections.Counter(h for r in rs for h in dict.fromkeys(r.hints))
        if not named:
            named = collections.Counter(r.message.split(":")[0] for r in rs if r.status == "wrong")
        out[task] = {
            "students": len(rs),
            "mean_score": round(sum(r.score for r in rs) / len(rs), 4),
            "statuses": dict(collections.Counter(r.status for r in rs)),
            "common_mistakes": [[m, c] for m, c in named.most_common(top)],
        }
    return out


def to_json(rows) -> dict:
    """The rows (with their full reports) and the summary, JSON-ready."""
    return {"rows": [dataclasses.asdict(r) for r in rows], "summary": summarize(rows),
            "generated": time.strftime("%Y-%m-%dT%H:%M:%S")}
