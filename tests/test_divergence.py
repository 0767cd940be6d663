"""A divergence never overwrites the last good checkpoint, even on the last step of an epoch.

An update can overflow while the step's loss and gradient are finite (a learning rate of
1e300); before the fix the epoch-end checkpoint was then written with inf/NaN parameters
while the message said the last good checkpoint was kept.
"""

import json

import numpy as np
import pytest

from minicrate.models.classifier import CRATEConfig, load
from minicrate.training import loop
from minicrate.training.classifier import ClassifierTask, TrainConfig, train
from minicrate.training.rundir import TrainingDiverged

SMALL = CRATEConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, pool="mean")


def quiet(*args, **kwargs):
    pass


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the overflow is the point
def test_an_overflowing_update_on_an_epochs_last_step_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    saved = []
    # One step per epoch (the batch holds the whole training split): every step is an epoch's
    # last.  Step 1 is an ordinary one; the update of step 2 overflows.
    monkeypatch.setattr(loop, "warmup_cosine", lambda step, **kw: 1e-3 if step == 0 else 1e300)
    real_save = ClassifierTask.save_checkpoint

    def save_checkpoint(task, path, params, extra):
        saved.append({k: np.array(v) for k, v in params.items()})
        return real_save(task, path, params, extra)

    monkeypatch.setattr(ClassifierTask, "save_checkpoint", save_checkpoint)
    tc = TrainConfig(data="digits", epochs=3, batch_size=2000, lr=1e-3, warmup_epochs=0, shift=0)
    with pytest.raises(TrainingDiverged, match="not finite"):
        train(SMALL, tc, tmp_path, progress=False, log=quiet)
    assert len(saved) == 1, "only the good epoch-1 state may be written"
    params = load(tmp_path / "checkpoint.npz")[0]
    assert all(np.all(np.isfinite(v)) for v in params.values())
    assert all(np.array_equal(params[k], saved[0][k]) for k in params)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"
