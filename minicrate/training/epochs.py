"""What the epoch-based tasks (classifier, CRATE-MAE) share: shuffled batches by step.

Step ``s`` is batch ``b = s mod S`` of epoch ``e = s div S`` (``S`` steps per
epoch, the last batch may be short).  The order of epoch ``e`` is
``default_rng([seed, e]).permutation(n)`` and the augmentation of batch ``b``
uses ``batch_rng(seed, e, b)``: both pure functions of ``(seed, step)``, so a
resumed run draws the same batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from minicrate.data.augment import batch_rng, random_shift
from minicrate.training.optim import make_optimizer


class EpochTask:
    """Base of a task for :func:`minicrate.training.loop.fit` that evaluates once per epoch.

    Args:
        train_config: a :class:`minicrate.training.classifier.TrainConfig`.
        split: the data set's split (``x_train`` ``(n, C, H, W)`` standardised host images).
        xp: the array backend.
    """

    # recipe fields that may change on resume without changing what the steps compute
    resume_free = frozenset({"epochs", "backend", "eval_batch_size", "checkpoint_every", "eval_every_epochs"})

    def __init__(self, train_config, split, xp):
        tc = train_config
        self.tc, self.split, self.xp = tc, split, xp
        self.n_train = len(split.x_train)
        self.steps_per_epoch = -(-self.n_train // tc.batch_size)
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.eval_every = self.steps_per_epoch * tc.eval_every_epochs
        self.warmup_steps = int(round(min(tc.warmup_epochs, tc.epochs) * self.steps_per_epoch))
        self.background = (0.0 - split.mean) / split.std  # a black pixel after standardising
        self._order = (None, None)  # (epoch, permutation): one permutation per epoch

    def config_dict(self):
        return dataclasses.asdict(self.tc)

    @property
    def recipe_defaults(self):
        """Each recipe field's default: what a checkpoint written before the field existed ran with."""
        return {f.name: f.default for f in dataclasses.fields(self.tc)}

    def make_optimizer(self, params):
        # decoupled weight decay on every parameter, as the official code does
        tc = self.tc
        options = {"betas": (0.9, tc.adam_beta2)} if tc.optimizer == "adamw" else {}
        return make_optimizer(tc.optimizer, tc.lr, weight_decay=tc.weight_decay, decay=None, **options)

    def position(self, step):
        """``(epoch, batch)`` of a step."""
        return divmod(int(step), self.steps_per_epoch)

    def order(self, epoch):
        """The epoch's permutation of the training images (cached for the current epoch)."""
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.tc.seed, epoch]).permutation(self.n_train))
        return self._order[1]

    def images(self, step):
        """``(epoch, idx, x)``: the step's image indices ``(b,)`` and host images ``(b, C, H, W)``,
        shifted by the augmentation when ``shift`` > 0."""
        tc = self.tc
        epoch, b = self.position(step)
        idx = self.order(epoch)[b * tc.batch_size : (b + 1) * tc.batch_size]
        x = self.split.x_train[idx]
        if tc.shift:
            x = random_shift(x, tc.shift, batch_rng(tc.seed, epoch, b), fill=self.background)
        return epoch, idx, x

    def where(self, step):
        epoch, b = self.position(step)
        return f"step {step + 1} (epoch {epoch + 1}, batch {b + 1}/{self.steps_per_epoch})"

    def bar_desc(self, step):
        first, k = self.position(step)[0] + 1, self.tc.eval_every_epochs  # a bar runs to the next evaluation
        last = min(first + k - 1 - (first - 1) % k, self.tc.epochs)
        return f"epoch {first}/{self.tc.epochs}" if last == first else f"epochs {first}-{last}/{self.tc.epochs}"

    def checkpoint_extra(self, step):
        epoch, b = self.position(step)
        return {"position": {"epoch": epoch, "batch": b, "step": int(step)}}

    def finish(self, params, log):
        """Called once after a completed run (nothing by default)."""
