"""Seeded shift augmentation."""

import numpy as np
import pytest

from minicrate.data.augment import batch_rng, random_shift, shift


def test_shift_moves_content_and_fills_border():
    x = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    out = shift(x, dy=[1, 0], dx=[0, -1], fill=-5.0)
    # image 0 moved down by one row
    np.testing.assert_array_equal(out[0, 0], [[-5, -5, -5], [0, 1, 2], [3, 4, 5]])
    # image 1 moved left by one column
    np.testing.assert_array_equal(out[1, 0], [[10, 11, -5], [13, 14, -5], [16, 17, -5]])
    assert out.dtype == np.float32 and out.shape == x.shape


def test_shift_keeps_channels_together():
    x = np.random.default_rng(0).standard_normal((3, 2, 5, 4))
    out = shift(x, dy=[2, -1, 0], dx=[1, 0, -2])
    np.testing.assert_array_equal(out[0, :, 2:, 1:], x[0, :, :3, :3])
    np.testing.assert_array_equal(out[1, :, :4, :], x[1, :, 1:, :])
    np.testing.assert_array_equal(out[2, :, :, :2], x[2, :, :, 2:])


def test_random_shift_is_seeded_and_bounded():
    x = np.random.default_rng(1).standard_normal((16, 1, 8, 8))
    a = random_shift(x, 2, batch_rng(3, 1, 5))
    b = random_shift(x, 2, batch_rng(3, 1, 5))
    c = random_shift(x, 2, batch_rng(3, 1, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Each output equals the input under some shift of at most 2 pixels.
    for i in range(len(x)):
        assert any(
            np.array_equal(a[i], shift(x[i : i + 1], [dy], [dx])[0])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
    np.testing.assert_array_equal(random_shift(x, 0, batch_rng(0, 0, 0)), x)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_shift(np.zeros((8, 8)), 1, batch_rng(0, 0, 0))
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(np.zeros((1, 1, 8, 8)), -1, batch_rng(0, 0, 0))
    with pytest.raises(TypeError, match="Generator"):
        random_shift(np.zeros((1, 1, 8, 8)), 1, 0)
