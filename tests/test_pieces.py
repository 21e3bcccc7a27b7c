"""Arrays that fold into no single (outer, C, inner) view but into pieces.

A slice of the last axis (x[..., a:b]) leaves contiguous runs that do not
join: bnc then runs its kernels piece by piece (no copy of x) and merges the
statistics exactly; for short runs or small pieces it copies instead. Both
must give the reference's results, bit-identically for any thread count.
"""
import tracemalloc

import numpy as np
import pytest

import bnc
from bnc import _core
from bnc import reference as ref
from conftest import DTYPE_IDS, DTYPES, assert_close, f64, make_params, stat_tol, tol

# (base shape, slice of the last axis, channel_axis): pieces of >= 16384
# elements with runs >= 32, so that the piecewise path is taken
CASES = [((2, 64, 3, 300), slice(10, -10), 1),   # NCHW, W cropped
         ((3, 40, 2, 3, 460), slice(5, -5), 1),  # 5-D, last axis cropped
         ((2, 3, 8, 6000), slice(1, -1), 1)]     # few channels, long rows


def _piecewise(x, axis):
    """Number of pieces bnc uses for x (1: one view, or a copy)."""
    return _core._View(x, axis % x.ndim).npieces


@pytest.fixture(params=CASES, ids=["nchw", "5d", "chw-crop"])
def case(request):
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pieces_match_reference(case, dtype):
    shape, sl, axis = case
    rng = np.random.default_rng(7)
    base = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    x = base[..., sl]
    assert not x.flags.c_contiguous and _piecewise(x, axis) > 1
    C = x.shape[axis]
    w, b, rm, rv = make_params(C, dtype, rng)
    dy = rng.standard_normal(x.shape).astype(dtype)[..., :]

    y, saved = bnc.batch_norm_forward(x, w, b, channel_axis=axis)
    y_ref, saved_ref = ref.batch_norm_forward(f64(x), f64(w), f64(b), channel_axis=axis)
    assert_close(y, y_ref, tol(dtype), "y")
    assert_close(saved.mean, saved_ref.mean, stat_tol(dtype), "mean")
    assert_close(saved.var, saved_ref.var, stat_tol(dtype), "var")
    assert_close(saved.invstd, saved_ref.invstd, stat_tol(dtype), "invstd")

    mean, var, count = bnc.batch_norm_stats(x, channel_axis=axis)
    assert count == x.size // C
    assert_close(var, saved_ref.var, stat_tol(dtype), "stats var")

    ye = bnc.batch_norm(x, w, b, rm, rv, channel_axis=axis)
    ye_ref = ref.batch_norm(f64(x), f64(w), f64(b), f64(rm), f64(rv), channel_axis=axis)
    assert_close(ye, ye_ref, tol(dtype), "inference y")

    for frozen in (False, True):
        g = bnc.batch_norm_backward(dy, x, w, saved, channel_axis=axis,
                                    use_batch_stats=not frozen)
        saved64 = ref.BatchNormSaved(f64(saved.mean), f64(saved.invstd), f64(saved.var))
        g_ref = ref.batch_norm_backward(f64(dy), f64(x), f64(w), saved64, channel_axis=axis,
                                        use_batch_stats=not frozen)
        t = tol(dtype) * (1 if dtype == np.float64 else 10)
        assert_close(g.grad_input, g_ref.grad_input, t, f"grad_input frozen={frozen}")
        assert_close(g.grad_weight, g_ref.grad_weight, stat_tol(dtype) * 10, "grad_weight")
        assert_close(g.grad_bias, g_ref.grad_bias, stat_tol(dtype) * 10, "grad_bias")


def test_pieces_split_backward_matches_fused(case):
    shape, sl, axis = case
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape)[..., sl]
    dy = rng.standard_normal(shape)[..., sl]
    w = rng.uniform(0.5, 1.5, x.shape[axis])
    _, saved = bnc.batch_norm_forward(x, w, channel_axis=axis)
    sdy, sdyx = bnc.batch_norm_backward_reduce(dy, x, saved.mean, saved.invstd,
                                               channel_axis=axis)
    dx = bnc.batch_norm_backward_elemt(dy, x, w, saved.mean, saved.invstd, sdy, sdyx,
                                       x.size // x.shape[axis], channel_axis=axis)
    g = bnc.batch_norm_backward(dy, x, w, saved, channel_axis=axis)
    assert_close(dx, g.grad_input, 1e-13, "elemt vs fused")
    assert_close(sdy, g.grad_bias, 1e-13, "sum_dy")


def test_pieces_are_bit_identical_across_threads(case):
    shape, sl, axis = case
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(np.float32)[..., sl]
    dy = rng.standard_normal(shape).astype(np.float32)[..., sl]
    runs = []
    for nt in (1, 2, 3):
        y, s = bnc.batch_norm_forward(x, n_threads=nt, channel_axis=axis)
        g = bnc.batch_norm_backward(dy, x, None, s, n_threads=nt, channel_axis=axis)
        runs.append((y, s.mean, s.var, g.grad_input, g.grad_weight))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


def test_pieces_do_not_copy_x(case):
    """Peak extra memory of a piecewise call: the output, not a copy of x too."""
    shape, sl, axis = case
    x = np.random.default_rng(10).standard_normal(shape)[..., sl]
    out = np.empty_like(x)
    bnc.batch_norm_forward(x, channel_axis=axis, out=out)  # warm up
    tracemalloc.start()
    try:
        bnc.batch_norm_forward(x, channel_axis=axis, out=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * x.nbytes


def test_short_runs_are_copied_and_still_right():
    """Runs shorter than PIECE_MIN_RUN: one copy, same results."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 8, 20, 12))[..., 1:-1]
    assert _piecewise(x, 1) == 1
    y, s = bnc.batch_norm_forward(x)
    y_ref, s_ref = ref.batch_norm_forward(x)
    assert_close(y, y_ref, 1e-12, "y")
    assert_close(s.var, s_ref.var, 1e-12, "var")
