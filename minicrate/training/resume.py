"""Reading a run's state back from its checkpoint for ``resume``, every entry checked.

A checkpoint's ``extra`` holds what :func:`minicrate.training.loop.fit` needs to continue:
``train_config`` (the recipe), ``optimizer`` (its state), ``step`` (older epoch-based
checkpoints: ``position.step``), ``position`` (epoch and batch of that step, for tasks
that count in epochs), ``running`` (the statistics of the evaluation period so far),
``history`` and ``wall_time_s``.  A checkpoint that was crafted, damaged or written by
something else may lack any of them or hold something else there; :func:`restore`
checks each before anything is used and raises :class:`CheckpointError` naming the
file and the entry, never a ``KeyError`` from deep inside the loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from minicrate.core.checkpoint import CheckpointError
from minicrate.core.validate import describe as _describe
from minicrate.training.rundir import check_resumable


def entry(extra, name, source, kinds, meaning, label=None):
    """``extra[name]`` if it is one of ``kinds``; else a :class:`CheckpointError` naming
    the file and the entry (``label``, default ``name``; ``meaning`` says what it holds)."""
    label = label or name
    if not isinstance(extra, Mapping) or name not in extra:
        raise CheckpointError(f"{source}: the checkpoint lacks the entry {label!r} ({meaning}); it was "
                              "not written by minicrate's training loop, or it is damaged")
    value = extra[name]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        kind = "a number" if float in kinds else " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise CheckpointError(f"{source}: entry {label!r} ({meaning}) must be {kind}, got "
                              f"{describe(value)}")
    return value


_KIND_NAMES = {dict: "a dict", list: "a list", int: "an integer", float: "a number"}


def describe(value, limit=80):
    """:func:`minicrate.core.validate.describe`, cut to ``limit`` characters."""
    text = _describe(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value, name, source, *, integer=False):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        what = "an integer >= 0" if integer else "a finite number >= 0"
        raise CheckpointError(f"{source}: entry {name!r} must be {what}, got {describe(value)}")
    return value


def saved_step(extra, source, task):
    """The step a checkpoint stopped at, checked against its ``position`` and the run's length."""
    if isinstance(extra, Mapping) and "step" in extra:
        step = _number(extra["step"], "step", source, integer=True)
    else:
        position = entry(extra, "position", source, dict,
                         "the step reached; entry 'step' in newer checkpoints")
        step = _number(position.get("step"), "position.step", source, integer=True)
    if step > task.total_steps:
        raise CheckpointError(f"{source}: entry 'step' is {step}, past the end of this run "
                              f"({task.total_steps} steps); raise the run's length to continue it")
    if "position" in extra and hasattr(task, "position"):
        position = entry(extra, "position", source, dict, "the epoch and batch of the step")
        epoch, batch = task.position(step)
        expected = {"epoch": epoch, "batch": batch, "step": step}
        if {k: position.get(k) for k in expected} != expected:
            raise CheckpointError(
                f"{source}: entry 'position' is {dict(position)!r}, but step {step} is {expected!r} "
                f"({task.steps_per_epoch} batches per epoch)")
    return step


def _check_optimizer_state(state, params, step, source, optimizer):
    buffers = entry(state, "buffers", source, dict, "the optimiser's buffers",
                    label="optimizer.buffers")
    t = _number(state.get("t"), "optimizer.t", source, integer=True)
    if t != step:
        raise CheckpointError(f"{source}: entry 'optimizer' has taken {t} steps, but the checkpoint "
                              f"is at step {step}")
    for flat, value in buffers.items():
        name, _, key = str(flat).partition("/")
        where = f"optimizer.buffers[{flat!r}]"
        if key not in params:
            raise CheckpointError(f"{source}: entry {where} is for a parameter the model does not have")
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            raise CheckpointError(f"{source}: entry {where} must be an array, got {describe(value)}")
        if tuple(value.shape) != tuple(params[key].shape):
            raise CheckpointError(f"{source}: entry {where} has shape {tuple(value.shape)}, but its "
                                  f"parameter has {tuple(params[key].shape)}")
        value = np.asarray(value)
        if value.dtype.kind != "f":
            raise CheckpointError(f"{source}: entry {where} must be a floating array, got {describe(value)}")
        if not np.isfinite(value).all():
            raise CheckpointError(f"{source}: entry {where} holds NaN or inf")
    if t > 0:  # after a step every parameter has each of the optimiser's buffers
        missing = [f"{name}/{key}" for name in optimizer.BUFFERS for key in params
                   if f"{name}/{key}" not in buffers]
        if missing:
            raise CheckpointError(f"{source}: entry 'optimizer' lacks the buffers {missing[:5]}")


def restore(run, extra, source):
    """Check every entry ``fit`` reads from a checkpoint's ``extra`` and put it into ``run``
    (a :class:`minicrate.training.loop` run: ``task``, ``params``, ``optimizer``, ``step``,
    ``running``, ``history``, ``wall_before``); ``run.params`` already holds the checked
    parameters.  Raises :class:`CheckpointError` naming ``source`` and the entry."""
    task = run.task
    saved_recipe = entry(extra, "train_config", source, dict, "the training recipe")
    check_resumable(saved_recipe, task.config_dict(), task.resume_free, source,
                    getattr(task, "recipe_defaults", None))
    step = saved_step(extra, source, task)
    state = entry(extra, "optimizer", source, dict, "the optimiser's state")
    _check_optimizer_state(state, run.params, step, source, run.optimizer)
    running = entry(extra, "running", source, dict, "the running statistics")
    expected = task.new_running()
    if set(running) != set(expected):
        raise CheckpointError(f"{source}: entry 'running' has the keys {sorted(running)}, expected "
                              f"{sorted(expected)}")
    for k, v in running.items():
        _number(v, f"running.{k}", source, integer=isinstance(expected[k], int))
    history = entry(extra, "history", source, list, "the evaluations so far")
    for i, h in enumerate(history):
        if not isinstance(h, Mapping):
            raise CheckpointError(f"{source}: entry 'history[{i}]' must be a dict, got {describe(h)}")
    wall = _number(entry(extra, "wall_time_s", source, (int, float), "the run's wall time in seconds"),
                   "wall_time_s", source)
    try:
        run.optimizer.load_state_dict(state, like=run.params)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{source}: entry 'optimizer' cannot be restored ({err})") from None
    run.step, run.running, run.history, run.wall_before = step, dict(running), list(history), float(wall)
