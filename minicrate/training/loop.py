"""The one training loop, shared by every model (classifier, CRATE-MAE, language model).

:func:`fit` is step-based::

    for step s = start .. total_steps-1:
        batch   = task.batch(s)                      (a pure function of (seed, s))
        lr      = warmup_cosine(s)                   (warm-up capped at the run length)
        loss, g = task.loss_and_grads(params, batch) (hand-written backward, no autograd)
        stop if loss or ‖g‖ is not finite (the last good checkpoint stays)
        g       = clip_by_global_norm(g)             (optional)
        params  = optimizer.step(params, g, lr)
        task.after_step(params, s)                   (optional: the self-supervised teacher's EMA)
        every task.eval_every steps, at the end, and at the time limit:
            history entry (task.evaluate), log line, checkpoint.npz, metrics.json

An epoch task sets ``eval_every`` to its steps per epoch; the language model
evaluates every ``eval_every`` steps and may stop at ``time_limit_s``.  Because
every random choice is a function of the seed and the step, and the checkpoint
holds the parameters, the optimiser state and the step, ``resume=True`` continues
*bit for bit* -- after a clean stop, SIGINT/SIGTERM (checkpoint between two
steps, then :class:`TrainingInterrupted`) or a hard kill (restart from the last
checkpoint: at every evaluation and every ``checkpoint_every`` steps if set).

The run holds its directory (:class:`minicrate.training.rundir.RunDirectory`) from
start to end: locked against a second run, refused when it already holds a run
and neither ``resume`` nor ``overwrite`` is given, and written only after every
check passed (the checkpoint's entries: :func:`minicrate.training.resume.restore`).
Every file goes through :func:`minicrate.training.rundir.writing`: a full disk is
one :class:`~minicrate.training.rundir.RunWriteError` line, and no partial file stays.

A *task* supplies what differs between models (see ``minicrate.training.classifier``,
``.mae`` and ``.lm``):

* ``xp`` (the array backend); numbers: ``total_steps``, ``eval_every``,
  ``warmup_steps`` (before capping),
  ``resume_free`` (recipe fields that may change on resume), ``config_dict()``
  (the recipe as JSON), optionally ``recipe_defaults`` (field -> the value a checkpoint
  that predates the field ran with);
* ``init_params()``, ``make_optimizer(params)`` (its decay rule);
* ``batch(step)``, ``loss_and_grads(params, batch) -> (loss, grads, aux)``;
* ``new_running()``, ``accumulate(running, loss, batch, aux)`` (running statistics);
* ``evaluate(params, step=, lr=, running=, final=, period_s=, wall_s=)`` -> history
  entry, ``log_line(entry)``, ``metrics(status, message, history, step, wall_s)``,
  ``plot(history, path)``, ``where(step)``, ``bar_desc(step)``;
* ``save_checkpoint(path, params, extra)``, ``load_checkpoint(path) -> (params, extra)``,
  ``checkpoint_extra(step)``; ``finish(params, log)`` (after a completed run) and
  ``result(params, history, step, metrics, status)`` (the returned dict);
  optionally ``run_files()`` -> ``{name: text}``, more files for the run directory
  (the language model's ``vocab.json``), written once every check has passed, and
  ``after_step(params, step)``, called after each update with the updated parameters
  (the self-supervised task moves its teacher there; state it keeps must go into its
  checkpoint for ``resume`` to stay bit for bit).
"""

from __future__ import annotations

import math
import os
import time

from minicrate.core.backend import host_to, namespace
from minicrate.core.validate import check_int, finite_checks
from minicrate.training.optim import clip_by_global_norm, global_norm
from minicrate.training.resume import restore
from minicrate.training.rundir import (
    CHECKPOINT,
    CURVES,
    METRICS,
    RunDirectory,
    Signals,
    TrainingDiverged,
    TrainingInterrupted,
    progress_factory,
    write_json,
    write_text,
    writing,
)
from minicrate.training.schedule import warmup_cosine


class _Run:
    """The mutable state of one run: step, running statistics, history, wall clock."""

    def __init__(self, task, train_config, out_dir, log):
        self.task, self.tc, self.log = task, train_config, log
        self.ck_file = os.path.join(out_dir, CHECKPOINT)
        self.metrics_file = os.path.join(out_dir, METRICS)
        self.curves_file = os.path.join(out_dir, CURVES)
        self.step, self.history, self.wall_before = 0, [], 0.0
        self.running = task.new_running()
        self.params = task.init_params()
        self.optimizer = task.make_optimizer(self.params)
        self.t0 = time.perf_counter()

    def wall(self):
        return self.wall_before + (time.perf_counter() - self.t0)

    def resume(self, xp):
        if not os.path.exists(self.ck_file):
            raise FileNotFoundError(f"--resume: no checkpoint at {self.ck_file!r}")
        saved, extra = self.task.load_checkpoint(self.ck_file)
        self.params = {k: host_to(xp, v, v.dtype.name) for k, v in saved.items()}
        restore(self, extra, self.ck_file)  # every entry checked, CheckpointError naming it

    def save_state(self, status):
        extra = {"train_config": self.task.config_dict(), "optimizer": self.optimizer.state_dict(),
                 **self.task.checkpoint_extra(self.step), "step": self.step,
                 "running": dict(self.running), "history": self.history,
                 "wall_time_s": self.wall(), "status": status}
        with writing(self.ck_file, self.ck_file):
            self.task.save_checkpoint(self.ck_file, self.params, extra)

    def write_metrics(self, status, message=None):
        metrics = self.task.metrics(status, message, self.history, self.step, self.wall())
        with writing(self.metrics_file, self.ck_file):
            write_json(self.metrics_file, metrics)
        return metrics

    def write_files(self, out_dir):
        for name, text in getattr(self.task, "run_files", dict)().items():
            path = os.path.join(out_dir, name)
            with writing(path, self.ck_file):
                write_text(path, text)

    def plot(self):
        if self.history:
            with writing(self.curves_file, self.ck_file):
                self.task.plot(self.history, self.curves_file)

    def diverged(self, what, bar):
        bar.close()
        kept = (f"the last good checkpoint {self.ck_file!r} is kept" if os.path.exists(self.ck_file)
                else "no checkpoint had been written yet")
        message = f"training stopped: {what}; {kept}. Try a lower --lr, --clip, or float64."
        self.write_metrics("diverged", message)
        self.plot()
        raise TrainingDiverged(message)

    def stopped(self, signals):
        why = f"signal {signals.received}" if signals.received else "stop_after_steps"
        message = (f"stopped by {why} after step {self.step}; checkpoint saved, continue with "
                   "--resume")
        metrics = self.write_metrics("interrupted", message)
        self.plot()
        if signals.received:
            raise TrainingInterrupted(message)
        self.log(message)
        return self.task.result(self.params, self.history, self.step, metrics, "interrupted")


def params_finite(params) -> bool:
    """True when every parameter array holds only finite values."""
    for v in params.values():
        xp = namespace(v)
        if not bool(xp.all(xp.isfinite(v))):
            return False
    return True


def capped_warmup(warmup_steps, total_steps):
    """The warm-up cut to the run: a recipe cut short (``--epochs 1 --warmup 2``) still runs."""
    return min(int(warmup_steps), int(total_steps))


def fit(task, train_config, out_dir, *, resume=False, overwrite=False, progress=True,
        handle_signals=False, stop_after_steps=None, log=print):
    """Run (or resume) ``task`` for ``task.total_steps`` steps; write the run directory.

    Args:
        task: the model's task object (see the module docstring).
        train_config: the recipe; ``lr``, ``min_lr``, ``clip``, ``checkpoint_every`` and
            (optionally) ``time_limit_s`` are read here.
        out_dir: the run directory (created; locked for the run).
        resume: continue from ``out_dir/checkpoint.npz`` (same model, same recipe up to
            ``task.resume_free``).
        overwrite: start again from scratch in a directory that holds a run (its
            checkpoint, metrics, curves and vocabulary are removed once every check passed);
            without it (and without ``resume``) such a directory is refused.
        progress: a tqdm bar per evaluation period.
        handle_signals: SIGINT/SIGTERM finish the step, save and raise TrainingInterrupted.
        stop_after_steps: stop (with a checkpoint) after this many steps in total.
        log: where the per-evaluation lines go.
    Returns:
        ``task.result(...)``; its ``status`` is ``completed``, ``interrupted`` or ``time_limit``.
    Raises:
        TrainingDiverged: the loss or gradient norm was not finite (the last checkpoint stays).
        TrainingInterrupted: a signal stopped the run (checkpoint written).
        RunExists, RunInUse: ``out_dir`` holds a run (see ``overwrite``) or is in use by
            another run (:class:`minicrate.training.rundir.RunDirectory`).
        RunWriteError: a file could not be written (a full disk); the previous checkpoint
            is intact.
        CheckpointError: ``resume`` from a checkpoint that does not fit, naming the entry.
    """
    if stop_after_steps is not None:
        stop_after_steps = check_int(stop_after_steps, "stop_after_steps", minimum=1)
    with RunDirectory(out_dir, resume=resume, overwrite=overwrite) as run_dir:
        run = _Run(task, train_config, out_dir, log)
        if resume:
            run.resume(task.xp)
        run_dir.prepare()  # every check passed: the first write into the directory
        run.write_files(out_dir)
        if resume:
            run.log(f"resumed {run.ck_file} at step {run.step}")
        run.t0 = time.perf_counter()
        with Signals(handle_signals) as signals, finite_checks(False):
            return _steps(run, signals, stop_after_steps, progress_factory(progress))


def _steps(run, signals, stop_after_steps, make_bar):
    task, tc = run.task, run.tc
    total, every = task.total_steps, task.eval_every
    warmup = capped_warmup(task.warmup_steps, total)
    time_limit = getattr(tc, "time_limit_s", None)
    status, message, lr, bar = "completed", None, tc.lr, None
    after_step = getattr(task, "after_step", None)
    period_start = time.perf_counter()
    while run.step < total:
        if bar is None:
            first = run.step - run.step % every
            bar = make_bar(total=min(every, total - first), initial=run.step - first,
                           desc=task.bar_desc(run.step))
        batch = task.batch(run.step)
        lr = warmup_cosine(run.step, total_steps=total, warmup_steps=warmup, base_lr=tc.lr,
                           min_lr=tc.min_lr)
        loss, grads, aux = task.loss_and_grads(run.params, batch)
        if not math.isfinite(loss):
            run.diverged(f"loss is {loss} at {task.where(run.step)}", bar)
        if tc.clip is not None:
            grads, gnorm = clip_by_global_norm(grads, tc.clip)
        else:
            gnorm = global_norm(grads)
        if not math.isfinite(gnorm):
            run.diverged(f"gradient norm is {gnorm} at {task.where(run.step)}", bar)
        run.optimizer.step(run.params, grads, lr=lr)
        if after_step is not None:
            after_step(run.params, run.step)
        task.accumulate(run.running, loss, batch, aux)
        run.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        step = run.step
        out_of_time = time_limit is not None and run.wall() >= time_limit
        stop = bool(signals.received) or (stop_after_steps is not None and step >= stop_after_steps)
        saving = (step % every == 0 or step == total or out_of_time or stop
                  or (tc.checkpoint_every and step % tc.checkpoint_every == 0))
        if saving and not params_finite(run.params):
            # An update can overflow with a finite loss and gradient (a huge learning rate): never
            # let such parameters replace the last good checkpoint.
            run.diverged(f"the parameters are not finite after the update at {task.where(step - 1)}", bar)
        if step % every == 0 or step == total or out_of_time:
            bar.close()
            bar = None
            entry = task.evaluate(run.params, step=step, lr=lr, running=run.running,
                                  final=step == total or out_of_time,
                                  period_s=time.perf_counter() - period_start, wall_s=run.wall())
            run.history.append(entry)
            run.running = task.new_running()
            log_line = task.log_line(entry)
            run.log(log_line)
            done = "completed" if step >= total else "running"
            run.save_state(done)
            run.write_metrics(done)
            period_start = time.perf_counter()
        elif stop or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
            run.save_state("running")
        if out_of_time and step < total:
            status = "time_limit"
            message = f"stopped by the time limit ({time_limit:.0f} s) after step {step}"
            run.save_state(status)
            break
        if stop and step < total:
            if bar is not None:
                bar.close()
            return run.stopped(signals)
    if bar is not None:
        bar.close()
    if status == "completed":
        task.finish(run.params, run.log)
    run.plot()
    metrics = run.write_metrics(status, message)
    if message:
        run.log(message)
    return task.result(run.params, run.history, run.step, metrics, status)
