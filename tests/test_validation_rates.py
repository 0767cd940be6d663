"""Bad input to the rate functions gives clear, named errors."""

import numpy as np
import pytest

import minicrate as mc

Z = np.ones((2, 5, 4)) + np.eye(5, 4)
U = np.ones((2, 4, 2))


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: mc.coding_rate(np.ones(4), 1.0), ValueError, r"Z must have at least 2 axes, got shape \(4,\)"),
        (lambda: mc.coding_rate(Z, 0.0), ValueError, "eps must be finite and > 0"),
        (lambda: mc.coding_rate(Z, -1), ValueError, "eps must be finite and > 0"),
        (lambda: mc.coding_rate(Z, "a"), TypeError, "eps must be a real number"),
        (lambda: mc.coding_rate(np.full((3, 2), np.nan), 1.0), ValueError, "Z contains NaN or inf"),
        (lambda: mc.coding_rate(np.ones((3, 2), dtype=np.int64), 1.0), TypeError, "real floating"),
        (lambda: mc.coding_rate(np.ones((0, 2)), 1.0), ValueError, "Z must not be empty"),
        (lambda: mc.compression_rate(Z, np.ones((2, 3, 2)), 1.0), ValueError,
         r"U must have shape \(K, d, p\) with d = 4"),
        (lambda: mc.compression_rate(Z, np.ones((4, 2)), 1.0), ValueError, "U must have 3 axes"),
        (lambda: mc.compression_rate(Z, U.astype(np.float32), 1.0), TypeError, "share one dtype"),
        (lambda: mc.coding_rate([[1.0]], 1.0), TypeError, "Z must be an array"),
    ],
)
def test_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_rates_refuse_bools_tiny_eps_masked_arrays_and_other_floats():
    """Issue 22: each of these was accepted or failed with a message that did not name the argument."""
    import numpy as np
    import pytest

    import minicrate as mc

    Z = np.random.default_rng(0).standard_normal((5, 3))
    with pytest.raises(TypeError, match="eps must be a real number, got the bool"):
        mc.coding_rate(Z, True)
    with pytest.raises(ValueError, match="eps = 1e-300 is too small"):
        mc.coding_rate(Z, 1e-300)
    with pytest.raises(TypeError, match="Z must be a plain array, got a masked array"):
        mc.coding_rate(np.ma.masked_array(Z, mask=Z > 1), 0.5)
    for dtype in (np.float16, np.longdouble):
        if np.dtype(dtype) in (np.dtype(np.float64),):
            continue  # longdouble is float64 on some platforms
        with pytest.raises(TypeError, match="Z must have a real floating dtype"):
            mc.coding_rate(Z.astype(dtype), 0.5)
