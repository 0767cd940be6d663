"""minicrate.training.parallel.procpool: batch chunks in worker processes give the one-chunk results.

The pool is checked against the plain one-chunk call (float64, rounding only)
and against the threaded split of minicrate.training.parallel.threads (the same chunks and the
same arithmetic, so equal bit for bit).  Also: uneven chunks, parameters that
change shape, errors raised in a worker, a worker that dies, and no files left
in /dev/shm.
"""

import os
import signal

import numpy as np
import pytest

import minicrate as mc
from minicrate.training.parallel import threads as parallel
from minicrate.training.parallel.procpool import ProcessPool
from minicrate.training.parallel.shared import SharedBlock, shm_dir

pytestmark = [pytest.mark.skipif(os.name != "posix", reason="worker processes need POSIX pipes"),
              pytest.mark.xdist_group("procpool")]

CONFIG = mc.CRATEConfig(image_size=8, patch_size=2, dim=16, depth=2, heads=2, num_classes=5,
                        dtype="float64")


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, 5, size=n)


@pytest.fixture(scope="module")
def pool():
    p = ProcessPool(3)
    yield p
    p.close()


def _step(pool, params, images, labels):
    """The classifier's step (fused layers) on ``pool``, as ``training.parallel.threads`` runs it."""
    return pool.grads(mc.loss_and_grads, params, (images, labels), CONFIG, {"fast": True})


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("batch", [7, 9, 3])
def test_pool_equals_one_chunk_and_threads(pool, batch):
    params = mc.init_params(CONFIG, seed=1)
    images, labels = _batch(batch, batch)
    loss, grads, logits = mc.loss_and_grads(params, images, labels, CONFIG)
    loss_p, grads_p, logits_p = _step(pool, params, images, labels)
    loss_t, grads_t, logits_t = parallel.loss_and_grads(params, images, labels, CONFIG, workers=3,
                                                        processes=False)
    assert abs(loss_p - loss) <= 1e-13 * abs(loss)
    assert _rel(logits_p, logits) <= 1e-13
    assert set(grads_p) == set(grads)
    for k in grads:
        assert _rel(grads_p[k], grads[k]) <= 1e-12, k
        np.testing.assert_array_equal(grads_p[k], grads_t[k])  # same chunks, same arithmetic
    assert loss_p == loss_t
    np.testing.assert_array_equal(logits_p, logits_t)


def test_pool_follows_parameter_updates_and_dtypes(pool):
    """Each step sees the current parameters (copied into shared memory every call), and a
    new dtype or batch size rebuilds the shared blocks."""
    images, labels = _batch(8, 3)
    params = mc.init_params(CONFIG, seed=2)
    first = _step(pool, params, images, labels)[0]
    params = {k: v * 0.5 for k, v in params.items()}
    expected = mc.loss_and_grads(params, images, labels, CONFIG)[0]
    assert _step(pool, params, images, labels)[0] == pytest.approx(expected, rel=1e-13)
    assert expected != pytest.approx(first)
    images32 = images.astype(np.float32)
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    loss32, grads32, _ = _step(pool, params32, images32, labels)
    assert grads32["embed.W"].dtype == np.float32
    assert loss32 == pytest.approx(expected, rel=1e-5)
    big, big_labels = _batch(31, 4)
    loss_big = _step(pool, params, big, big_labels)[0]
    assert loss_big == pytest.approx(mc.loss_and_grads(params, big, big_labels, CONFIG)[0], rel=1e-13)
    blocks = pool._blocks
    small, small_labels = _batch(5, 6)  # a smaller (last) batch reuses the blocks
    loss_small = _step(pool, params, small, small_labels)[0]
    assert pool._blocks is blocks
    assert loss_small == pytest.approx(mc.loss_and_grads(params, small, small_labels, CONFIG)[0], rel=1e-13)


def test_worker_error_is_raised_in_the_parent(pool):
    """A bad label in a worker's chunk raises the worker's own ValueError here, and the pool
    stays usable."""
    params = mc.init_params(CONFIG, seed=1)
    images, labels = _batch(9, 5)
    labels = labels.copy()
    labels[-1] = 99  # in the last chunk, a worker's
    with pytest.raises(ValueError, match="labels"):
        _step(pool, params, images, labels)
    labels[-1] = 1
    assert np.isfinite(_step(pool, params, images, labels)[0])


def test_dead_worker_closes_the_pool_with_a_clear_error():
    p = ProcessPool(2)
    params = mc.init_params(CONFIG, seed=1)
    images, labels = _batch(4)
    _step(p, params, images, labels)
    os.kill(p._procs[0].pid, signal.SIGKILL)
    p._procs[0].wait()
    with pytest.raises(RuntimeError, match="worker process"):
        _step(p, params, images, labels)
    assert p.closed
    with pytest.raises(RuntimeError, match="closed"):
        _step(p, params, images, labels)


def test_parallel_default_uses_processes_and_restarts_closed_pools():
    params = mc.init_params(CONFIG, seed=1)
    images, labels = _batch(6)
    loss = mc.loss_and_grads(params, images, labels, CONFIG)[0]
    assert parallel.loss_and_grads(params, images, labels, CONFIG, workers=2)[0] == \
        pytest.approx(loss, rel=1e-13)
    first = parallel.current_pool()
    assert first is not None and first.workers == 2
    parallel.close_pool()
    assert parallel.current_pool() is None
    assert parallel.loss_and_grads(params, images, labels, CONFIG, workers=2)[0] == \
        pytest.approx(loss, rel=1e-13)
    assert parallel.current_pool() is not first
    parallel.close_pool()


def test_processes_need_numpy_and_two_workers():
    xp = mc.get_backend("array_api_strict")
    params = mc.init_params(CONFIG, seed=1, backend="array_api_strict")
    images, labels = _batch(4)
    with pytest.raises(ValueError, match="NumPy"):
        parallel.loss_and_grads(params, xp.asarray(images), xp.asarray(labels), CONFIG, workers=2,
                                processes=True)
    with pytest.raises(ValueError, match="workers"):
        ProcessPool(1)


def test_shared_blocks_leave_no_files(pool):
    before = {f for f in os.listdir(shm_dir()) if f.startswith("minicrate-")}
    block = SharedBlock({"a": ((3, 4), np.float32), "b": ((5,), np.int64)})
    other = SharedBlock(**block.spec)
    other.arrays["a"][...] = 2.0
    assert float(block.arrays["a"].sum()) == 24.0
    assert block.arrays["b"].ctypes.data % 64 == 0  # every array starts on a cache line
    block.unlink()
    other.close()
    block.close()
    params = mc.init_params(CONFIG, seed=1)
    _step(pool, params, *_batch(5))
    after = {f for f in os.listdir(shm_dir()) if f.startswith("minicrate-")}
    assert after <= before


def test_peak_memory_is_reported(pool):
    params = mc.init_params(CONFIG, seed=1)
    _step(pool, params, *_batch(6))
    assert all(isinstance(v, int) for v in pool.reset_peak_memory() if v is not None)
    _step(pool, params, *_batch(6))
    peaks = pool.peak_memory_kb()
    assert len(peaks) == 2 and all(isinstance(v, int) and v >= 0 for v in peaks)


@pytest.mark.parametrize("processes", [False, True])
@pytest.mark.parametrize("images, labels, error, match", [
    (np.zeros((4, 1, 8, 8)), [0, 1, 2, 3], TypeError, "labels must be an integer array"),
    (np.zeros((4, 1, 8, 8)), np.zeros(3, dtype=np.int64), ValueError, "one entry per image"),
    (np.zeros((4, 1, 8, 8)), np.zeros(4), TypeError, "labels must have an integer dtype"),
    (np.zeros((4, 1, 8, 8)), np.zeros((4, 1), dtype=np.int64), ValueError, "labels must have 1 axes"),
    ([[0.0]], np.zeros(1, dtype=np.int64), TypeError, "images must be an array"),
    (np.zeros((4, 8, 8)), np.zeros(4, dtype=np.int64), ValueError, "images"),
])
def test_the_whole_batch_is_checked_before_it_is_split(processes, images, labels, error, match):
    """A label count that does not match the images is refused, not broadcast over a chunk."""
    params = mc.init_params(CONFIG, seed=1)
    with pytest.raises(error, match=match):
        parallel.loss_and_grads(params, images, labels, CONFIG, workers=2, processes=processes)


def test_pool_checks_the_batch_itself(pool):
    params = mc.init_params(CONFIG, seed=1)
    with pytest.raises(ValueError, match="rows"):
        pool.grads(mc.loss_and_grads, params, (np.zeros((6, 1, 8, 8)), np.zeros(5, dtype=np.int64)), CONFIG)
    xp = mc.get_backend("array_api_strict")
    with pytest.raises(TypeError, match="NumPy arrays"):
        pool.grads(mc.loss_and_grads, params, (xp.zeros((6, 1, 8, 8), dtype=xp.float64), xp.zeros(6, dtype=xp.int64)),
                   CONFIG)
