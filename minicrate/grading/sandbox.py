"""The sandboxed side of class grading: a child process that runs one student's functions.

:mod:`minicrate.grading.classroom` starts ``python -c "from minicrate.grading.sandbox
import main; main()"`` once per student (again after a timeout or a crash),
writes the job as JSON on its stdin and reads the answers from a pipe whose
file descriptor the job names.  The child

1. limits its address space (``resource.setrlimit(RLIMIT_AS)``),
2. imports the student's files (:func:`~minicrate.grading.files.load_student_module`),
3. for every task: builds the same seeded cases as the grader and runs the
   student's function on each (:func:`~minicrate.grading.engine.run_cases`),
   and sends back only what came out: per case the float64 outputs, the
   dtypes really returned, or the error.

Nothing is compared here: the parent grades the returned arrays against the
reference, so a submission that patches the grader only patches this child.
The wire format is plain data, never a pickle: frames of a 4-byte big-endian
length and a payload, a JSON header, then (when there are arrays) an ``.npz``
the parent loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys

import numpy as np

MAX_FRAME = 1 << 28
"""Largest frame the parent accepts (256 MiB)."""


def write_frame(pipe, payload: bytes):
    pipe.write(struct.pack(">I", len(payload)) + payload)
    pipe.flush()


def read_frame(pipe):
    """One frame's payload, or ``None`` at the end of the stream (or a malformed frame)."""
    head = pipe.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        return None
    data = pipe.read(n)
    return data if len(data) == n else None


def send(pipe, header: dict, arrays=None):
    """A JSON header, then the arrays as an ``.npz`` frame when ``header["arrays"]`` is true."""
    header = dict(header, arrays=bool(arrays))
    write_frame(pipe, json.dumps(header).encode())
    if arrays:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_frame(pipe, buf.getvalue())


def encode_runs(runs):
    """:class:`~minicrate.grading.types.CaseRun` s as JSON-ready dicts and a name -> array dict."""
    out, arrays = [], {}
    for i, run in enumerate(runs):
        names = list(run.outputs or {})
        for j, name in enumerate(names):
            arrays[f"a{i}_{j}"] = np.asarray(run.outputs[name], dtype=np.float64)
        out.append(
            {
                "outputs": names if run.outputs is not None else None,
                "dtypes": {k: run.dtypes.get(k) for k in names},
                "error": run.error,
                "not_implemented": run.not_implemented,
            }
        )
    return out, arrays


def _limit_memory(megabytes):
    if not megabytes:
        return
    try:
        import resource

        limit = int(megabytes) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform: run without
        pass


def _pick_module(task, modules, notebook_tasks):
    """The student's module that defines ``task``'s function (its own notebook's first)."""
    owning = [m for path, m in modules if task.id in notebook_tasks.get(path, ())]
    for module in owning + [m for _, m in modules]:
        if callable(getattr(module, task.function, None)):
            return module
    return None


def main():
    job = json.loads(sys.stdin.read())
    pipe = os.fdopen(int(job["fd"]), "wb")
    _limit_memory(job.get("memory_mb"))
    # Imported only now, under the memory limit, so the limit covers the whole child.
    from minicrate.grading.cases import make_cases
    from minicrate.grading.compare import format_exception
    from minicrate.grading.engine import run_cases
    from minicrate.grading.files import load_student_module, tasks_of_notebook
    from minicrate.grading.registry import all_tasks, get_task

    modules, errors = [], []
    for path in job["files"]:
        try:
            modules.append((path, load_student_module(path)))
        except BaseException as err:  # noqa: BLE001 -- a student file may raise anything
            errors.append(f"could not import {os.path.basename(path)}: {format_exception(err)}")
    notebook_tasks = {path: tasks_of_notebook(path) for path in job["files"]}
    tasks = job.get("tasks")
    if not tasks:
        tasks = [t for path in job["files"] for t in notebook_tasks[path]]
    if not tasks:
        tasks = [t.id for t in all_tasks().values()
                 if any(callable(getattr(m, t.function, None)) for _, m in modules)]
    tasks = list(dict.fromkeys(tasks))
    send(pipe, {"kind": "loaded", "tasks": tasks, "errors": errors, "imported": len(modules)})
    options = {k: job[k] for k in ("seed", "examples", "backend") if job.get(k) is not None}
    for task_id in tasks:
        task = get_task(task_id)
        module = _pick_module(task, modules, notebook_tasks)
        if module is None:
            send(pipe, {"kind": "task", "task": task_id, "missing": True})
            continue
        fn = getattr(module, task.function)
        forward = getattr(module, task.forward_name, None) if task.forward_name else None
        cases = make_cases(task, **options)
        runs, arrays = encode_runs(run_cases(task, fn, cases, forward))
        send(pipe, {"kind": "task", "task": task_id, "missing": False, "runs": runs}, arrays)
    pipe.close()
