"""bnc batch norm against the float64 oracle bnc.reference (tests written from API.md).

Covers: batch_norm (train/eval, running statistics, momentum/decay/
correction, momentum=None with num_batches_tracked), the forward/backward
pair, batch_norm_stats / combine_stats / update_running_stats, accuracy
(large mean offsets, constant channels, tiny/huge magnitudes), and
hypothesis properties.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bnc
from bnc import reference as ref
from conftest import (
    numeric_grad,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    as_layout,
    assert_close,
    assert_unchanged,
    bit_equal,
    f64,
    make_params,
    make_x,
    norm_axis,
    per_channel_count,
    ref_eval,
    ref_train,
    rng_for,
    snapshot,
    stat_dtype,
    stat_tol,
    tol,
)

# (shape, channel_axis): N=1 with spatial size, C=1, inner=1, every ndim 2..5,
# negative axes, channel axis first/middle/last, a few medium sizes that take
# the multi-threaded paths.
CASES = [
    ((2, 3), 1),
    ((5, 1), 1),
    ((4, 3), -1),
    ((6, 4), 0),
    ((1, 3, 5), 1),
    ((2, 3, 1), 1),
    ((4, 1, 7), 1),
    ((3, 4, 2), -1),
    ((2, 3, 4, 5), 1),
    ((2, 4, 5, 3), -1),
    ((2, 3, 4, 5), 2),
    ((2, 3, 4, 5), -2),
    ((3, 2, 2, 2), 0),
    ((2, 3, 2, 3, 4), 1),
    ((2, 2, 3, 2, 3), -1),
    ((2, 2, 3, 2, 3), 3),
    ((1, 1, 1000), 1),
    ((3, 5, 61, 67), 1),
    ((8, 16, 32, 32), 1),
    ((8, 32, 32, 16), -1),
    ((4096, 16), 1),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-ax{a}" for s, a in CASES]

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
cases = pytest.mark.parametrize("shape,channel_axis", CASES, ids=CASE_IDS)


def _data(shape, channel_axis, dtype, *key):
    rng = rng_for(shape, channel_axis, np.dtype(dtype).name, *key)
    C = shape[norm_axis(channel_axis, len(shape))]
    cshape = [1] * len(shape)
    cshape[norm_axis(channel_axis, len(shape))] = C
    # per-channel offset and scale so that channels differ
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 2.0, C).reshape(cshape)
         + rng.uniform(-2, 2, C).reshape(cshape)).astype(dtype)
    return x, make_params(C, dtype, rng), rng


def _layout_of(a):
    return np.empty_like(a).strides


# ---------------------------------------------------------------------------
# batch_norm


@dtypes
@cases
def test_train_matches_reference(shape, channel_axis, dtype):
    x, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype)
    nbt = np.array(5, dtype=np.int64)
    copies = snapshot(x, w, b)
    y_ref, rm_ref, rv_ref, _ = ref_train(x, w, b, rm, rv, channel_axis=channel_axis)

    y = bnc.batch_norm(x, w, b, rm, rv, training=True, channel_axis=channel_axis,
                       num_batches_tracked=nbt)

    assert isinstance(y, np.ndarray)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.strides == _layout_of(x)
    assert_close(y, y_ref, tol(dtype), "y")
    assert rm.dtype == stat_dtype(dtype) and rv.dtype == stat_dtype(dtype)
    assert_close(rm, rm_ref, stat_tol(dtype), "running_mean")
    assert_close(rv, rv_ref, stat_tol(dtype), "running_var")
    assert nbt.shape == () and nbt.dtype == np.int64 and nbt == 6
    assert_unchanged([x, w, b], copies, ["x", "weight", "bias"])


@dtypes
@cases
def test_eval_matches_reference(shape, channel_axis, dtype):
    x, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype)
    copies = snapshot(x, w, b, rm, rv)
    y = bnc.batch_norm(x, w, b, rm, rv, training=False, channel_axis=channel_axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.strides == _layout_of(x)
    assert_close(y, ref_eval(x, w, b, rm, rv, channel_axis=channel_axis), tol(dtype), "y")
    assert_unchanged([x, w, b, rm, rv], copies, ["x", "weight", "bias", "running_mean",
                                                 "running_var"])


@dtypes
@pytest.mark.parametrize("use_weight,use_bias", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("training", [True, False])
def test_optional_affine(dtype, use_weight, use_bias, training):
    shape, ca = (4, 3, 5), 1
    x, (w, b, rm, rv), _ = _data(shape, ca, dtype)
    w = w if use_weight else None
    b = b if use_bias else None
    if training:
        y_ref = ref_train(x, w, b, None, None)[0]
        y = bnc.batch_norm(x, w, b, training=True)
    else:
        y_ref = ref_eval(x, w, b, rm, rv)
        y = bnc.batch_norm(x, w, b, rm, rv)
    assert_close(y, y_ref, tol(dtype))


def test_training_without_running_stats_leaves_nothing_to_update():
    x, (w, b, _, _), _ = _data((6, 3, 4), 1, np.float64)
    y = bnc.batch_norm(x, w, b, training=True)
    assert_close(y, ref_train(x, w, b, None, None)[0], 1e-12)


def test_default_is_inference():
    x, (w, b, rm, rv), _ = _data((6, 3, 4), 1, np.float64)
    copies = snapshot(rm, rv)
    y = bnc.batch_norm(x, w, b, rm, rv)
    assert_close(y, ref_eval(x, w, b, rm, rv), 1e-12)
    assert_unchanged([rm, rv], copies)


def test_list_input_is_accepted():
    x = [[1.0, 2.0, 3.0], [2.0, 0.0, 5.0], [0.5, 1.0, -1.0]]
    y = bnc.batch_norm(x, training=True)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == (3, 3)
    assert_close(y, ref_train(np.array(x), None, None, None, None)[0], 1e-12)


def test_broadcast_input():
    # a read-only input with a zero stride (np.broadcast_to)
    rng = rng_for("broadcast")
    row = rng.standard_normal((1, 3, 1, 5))
    x = np.broadcast_to(row, (4, 3, 6, 5))
    y = bnc.batch_norm(x, training=True)
    assert_close(y, ref_train(np.array(x), None, None, None, None)[0], 1e-12)
    w, b, rm, rv = make_params(3, np.float64, rng)
    y = bnc.batch_norm(x, w, b, rm, rv)
    assert_close(y, ref_eval(np.array(x), w, b, rm, rv), 1e-12)


@dtypes
def test_running_stats_formula(dtype):
    """rm = (1-m) rm + m mean; rv = (1-m) rv + m var n/(n-1), computed here directly."""
    shape = (5, 3, 4)
    x, (w, b, rm, rv), _ = _data(shape, 1, dtype)
    rm0, rv0 = f64(rm), f64(rv)
    xx = f64(x)
    mean = xx.mean(axis=(0, 2))
    var = xx.var(axis=(0, 2))
    n = 20
    m = 0.3
    y = bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=m, eps=1e-3)
    assert_close(rm, (1 - m) * rm0 + m * mean, stat_tol(dtype), "running_mean")
    assert_close(rv, (1 - m) * rv0 + m * var * n / (n - 1), stat_tol(dtype), "running_var")
    # normalization uses the biased variance, eps inside the sqrt
    y_exp = (xx - mean[:, None]) / np.sqrt(var[:, None] + 1e-3) * f64(w)[:, None] + f64(b)[:, None]
    assert_close(y, y_exp, tol(dtype), "y")


@dtypes
@pytest.mark.parametrize("correction", [0, 1, 2])
def test_correction(dtype, correction):
    x, (w, b, rm, rv), _ = _data((4, 3, 3), 1, dtype)
    y_ref, rm_ref, rv_ref, _ = ref_train(x, w, b, rm, rv, correction=correction, momentum=0.25)
    rv0 = f64(rv)
    y = bnc.batch_norm(x, w, b, rm, rv, training=True, correction=correction, momentum=0.25)
    assert_close(y, y_ref, tol(dtype))
    assert_close(rm, rm_ref, stat_tol(dtype))
    assert_close(rv, rv_ref, stat_tol(dtype))
    var = f64(x).var(axis=(0, 2))
    assert_close(rv, 0.75 * rv0 + 0.25 * var * 12 / (12 - correction), stat_tol(dtype))


@dtypes
@pytest.mark.parametrize("decay", [0.9, 0.0, 1.0, 0.37])
def test_decay_is_one_minus_momentum(dtype, decay):
    x, (w, b, rm, rv), _ = _data((4, 3, 3), 1, dtype)
    rm2, rv2 = rm.copy(), rv.copy()
    y1 = bnc.batch_norm(x, w, b, rm, rv, training=True, decay=decay)
    y2 = bnc.batch_norm(x, w, b, rm2, rv2, training=True, momentum=1.0 - decay)
    assert_close(y1, y2, tol(dtype))
    assert_close(rm, rm2, stat_tol(dtype))
    assert_close(rv, rv2, stat_tol(dtype))
    # and against the reference driven by decay
    x2, (w, b, rmA, rvA), _ = _data((4, 3, 3), 1, dtype, "decay")
    _, rm_ref, rv_ref, _ = ref_train(x2, w, b, rmA, rvA, decay=decay)
    bnc.batch_norm(x2, w, b, rmA, rvA, training=True, decay=decay)
    assert_close(rmA, rm_ref, stat_tol(dtype))
    assert_close(rvA, rv_ref, stat_tol(dtype))


def test_momentum_zero_and_one():
    x, (w, b, rm, rv), _ = _data((4, 3, 3), 1, np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=0.0)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
    bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=1.0)
    assert_close(rm, x.mean(axis=(0, 2)), 1e-12)
    assert_close(rv, x.var(axis=(0, 2), ddof=1), 1e-12)


@dtypes
def test_momentum_none_is_cumulative_average(dtype):
    rng = rng_for("cma", np.dtype(dtype).name)
    C = 3
    _, _, rm, rv = make_params(C, dtype, rng)
    nbt = np.array(0, dtype=np.int64)
    means, uvars = [], []
    for step in range(1, 5):
        x = make_x((3 + step, C, 4), dtype, rng, loc=step)
        xx = f64(x)
        means.append(xx.mean(axis=(0, 2)))
        uvars.append(xx.var(axis=(0, 2), ddof=1))
        rm_ref, rv_ref = f64(rm), f64(rv)
        nbt_ref = nbt.copy()
        y_ref = ref.batch_norm(xx, None, None, rm_ref, rv_ref, training=True, momentum=None,
                               decay=None, eps=1e-5, channel_axis=1, correction=1,
                               num_batches_tracked=nbt_ref)
        y = bnc.batch_norm(x, None, None, rm, rv, training=True, momentum=None,
                           num_batches_tracked=nbt)
        assert nbt.shape == () and nbt.dtype == np.int64
        assert int(nbt) == step == int(nbt_ref)
        assert_close(y, y_ref, tol(dtype))
        assert_close(rm, rm_ref, stat_tol(dtype))
        assert_close(rv, rv_ref, stat_tol(dtype))
        # cumulative moving average of the batch statistics
        assert_close(rm, np.mean(means, axis=0), stat_tol(dtype))
        assert_close(rv, np.mean(uvars, axis=0), stat_tol(dtype))


def test_num_batches_tracked_incremented_with_momentum():
    # PyTorch increments num_batches_tracked on every training step that
    # updates the running statistics, whatever the momentum.
    x, (w, b, rm, rv), _ = _data((4, 3, 3), 1, np.float64)
    nbt = np.array(41, dtype=np.int64)
    _, rm_ref, rv_ref, _ = ref_train(x, w, b, rm, rv, momentum=0.2)
    bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=0.2, num_batches_tracked=nbt)
    assert int(nbt) == 42
    assert_close(rm, rm_ref, 1e-12)
    assert_close(rv, rv_ref, 1e-12)


def test_num_batches_tracked_untouched_in_eval():
    x, (w, b, rm, rv), _ = _data((4, 3, 3), 1, np.float64)
    nbt = np.array(7, dtype=np.int64)
    bnc.batch_norm(x, w, b, rm, rv, training=False, num_batches_tracked=nbt)
    assert int(nbt) == 7


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.5, 10.0])
def test_eps_inside_sqrt(eps):
    x, (w, b, rm, rv), _ = _data((4, 3, 3), 1, np.float64)
    y = bnc.batch_norm(x, w, b, training=True, eps=eps)
    assert_close(y, ref_train(x, w, b, None, None, eps=eps)[0], 1e-12)
    mean, var = x.mean(axis=(0, 2))[:, None], x.var(axis=(0, 2))[:, None]
    assert_close(y, (x - mean) / np.sqrt(var + eps) * w[:, None] + b[:, None], 1e-12)
    y = bnc.batch_norm(x, w, b, rm, rv, eps=eps)
    assert_close(y, ref_eval(x, w, b, rm, rv, eps=eps), 1e-12)


# ---------------------------------------------------------------------------
# Accuracy


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["outlier_first", "outliers", "ramp", "step"])
def test_channels_last_moments_follow_the_data(dtype, kind):
    """Channels last, many channels: blocks of rows are summed in one pass
    about the chunk's mean so far (a chunk's first block: about the mean of
    its first rows). A first row far from the rest, far rows scattered
    through the blocks' first rows, a mean that drifts from row to row, or
    that jumps halfway, at |mean|/std = 1e4, must keep the statistics to the
    dtype's precision."""
    rng = rng_for("cl-moments", kind, np.dtype(dtype).name)
    x = 1e4 + rng.standard_normal((6400, 64))
    if kind == "outlier_first":
        x[0] += 1e3
    elif kind == "outliers":
        x[::50] += 1e3 * rng.choice([-1.0, 1.0], (128, 64))
    elif kind == "ramp":
        x += np.arange(6400)[:, None] * 0.01
    else:
        x[3200:] += 50.0
    x = x.astype(dtype).reshape(64, 10, 10, 64)
    mean_ref, var_ref, _ = ref.batch_norm_stats(f64(x), channel_axis=-1)
    mean, var, _ = bnc.batch_norm_stats(x, channel_axis=-1)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    assert_close(mean, mean_ref, tol, "mean")
    assert_close(var, var_ref, 10 * tol, "var")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["outlier_first", "outliers", "ramp", "step"])
@pytest.mark.parametrize("shape", [(64, 3, 10, 10), (8, 4, 14, 14), (2, 3, 90, 90)],
                         ids=["blocks", "one-block", "long-runs"])
def test_channels_first_moments_follow_the_data(dtype, kind, shape):
    """Channels first: a block is summed in one pass about the mean of its
    first quarter (of its runs, or of a lone run). A first value far from the
    rest, far values scattered through the first runs, a mean that drifts, or
    that jumps halfway, at |mean|/std = 1e4, must keep the statistics to the
    dtype's precision."""
    rng = rng_for("cf-moments", kind, np.dtype(dtype).name, shape)
    N, C = shape[:2]
    xc = 1e4 + rng.standard_normal((C, N) + shape[2:])
    flat = xc.reshape(C, -1)  # a view: each channel's values in memory order
    if kind == "outlier_first":
        flat[:, 0] += 1e3
    elif kind == "outliers":
        flat[:, ::37] += 1e3 * rng.choice([-1.0, 1.0], flat[:, ::37].shape)
    elif kind == "ramp":
        flat += np.arange(flat.shape[1]) * (20.0 / flat.shape[1])
    else:
        flat[:, flat.shape[1] // 2:] += 50.0
    x = np.ascontiguousarray(xc.transpose(1, 0, 2, 3)).astype(dtype)
    mean_ref, var_ref, _ = ref.batch_norm_stats(f64(x), channel_axis=1)
    mean, var, _ = bnc.batch_norm_stats(x, channel_axis=1)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    assert_close(mean, mean_ref, tol, "mean")
    assert_close(var, var_ref, 10 * tol, "var")
    y = bnc.batch_norm(x, None, None, None, None, training=True, channel_axis=1)
    y_ref = (f64(x) - mean_ref.reshape(1, C, 1, 1)) / np.sqrt(var_ref + 1e-5).reshape(1, C, 1, 1)
    assert_close(y, y_ref, 100 * tol, "y")


@pytest.mark.parametrize("dtype,offset", [(np.float32, 1e4), (np.float64, 1e8),
                                          (np.float64, 1e6), (np.float16, 1e2)],
                         ids=["f32-1e4", "f64-1e8", "f64-1e6", "f16-1e2"])
@pytest.mark.parametrize("shape,channel_axis", [((8, 3, 40, 40), 1), ((16, 20, 20, 4), -1),
                                                ((64, 10, 10, 64), -1), ((20000, 2), 1)],
                         ids=["nchw", "nhwc", "nhwc64", "2d"])
def test_large_mean_offset(dtype, offset, shape, channel_axis):
    """|mean|/std = offset: variance still right (vs the reference on the same data)."""
    rng = rng_for("offset", shape, np.dtype(dtype).name, offset)
    C = shape[norm_axis(channel_axis, len(shape))]
    cshape = [1] * len(shape)
    cshape[norm_axis(channel_axis, len(shape))] = C
    signs = np.where(np.arange(C) % 2 == 0, 1.0, -1.0).reshape(cshape)
    x = (signs * offset + rng.standard_normal(shape)).astype(dtype)
    mean_ref, var_ref, _ = ref.batch_norm_stats(f64(x), channel_axis=channel_axis)
    assert np.all(var_ref > 0.1)
    # DESIGN.md: exact to a few ulps at 1e6 in float64 -> the general 1e-12;
    # at 1e8 still right to 1e-10 (a shifted/blocked scheme gets ~1e-15).
    vtol = {1e6: 1e-12, 1e8: 1e-10}[offset] if dtype == np.float64 else 1e-5

    mean, var, _ = bnc.batch_norm_stats(x, channel_axis=channel_axis)
    assert_close(mean, mean_ref, 1e-12 if dtype == np.float64 else 1e-7, "mean")
    assert_close(var, var_ref, vtol, "batch_norm_stats var")

    _, saved = bnc.batch_norm_forward(x, channel_axis=channel_axis)
    assert_close(saved.var, var_ref, vtol, "saved.var")
    assert_close(saved.invstd, 1 / np.sqrt(var_ref + 1e-5), vtol, "saved.invstd")

    rm = np.zeros(C, stat_dtype(dtype))
    rv = np.zeros(C, stat_dtype(dtype))
    y = bnc.batch_norm(x, None, None, rm, rv, training=True, momentum=1.0,
                       channel_axis=channel_axis)
    n = per_channel_count(shape, channel_axis)
    assert_close(rv, var_ref * n / (n - 1), vtol, "running_var")
    # y itself is limited by the rounding of x - mean at this magnitude
    y_ref, _ = ref.batch_norm_forward(f64(x), None, None, mean=None, var=None, eps=1e-5,
                                      channel_axis=channel_axis)
    ytol = {np.float64: 1e-6, np.float32: 1e-3, np.float16: 2e-2}[dtype]
    assert_close(y, y_ref, ytol, "y")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,channel_axis", [((4, 3, 5, 7), 1), ((8, 16, 32, 32), 1),
                                                ((8, 32, 32, 16), -1), ((5000, 3), 1),
                                                ((3, 7), 1)],
                         ids=["small", "nchw", "nhwc", "2d", "tiny"])
def test_constant_channels_give_bias(dtype, shape, channel_axis):
    ax = norm_axis(channel_axis, len(shape))
    C = shape[ax]
    rng = rng_for("const", shape, np.dtype(dtype).name)
    values = np.array([0.1, -3.3e3, 1.0 / 3.0, 0.0, 7.0, -1e-3, 2.5e4, 1.7] * C)[:C]
    cshape = [1] * len(shape)
    cshape[ax] = C
    x = np.broadcast_to(values.reshape(cshape), shape).astype(dtype)  # C-contiguous copy
    w, b, rm, rv = make_params(C, dtype, rng)
    y = bnc.batch_norm(x, w, b, training=True, channel_axis=channel_axis)
    expected = np.broadcast_to(b.astype(dtype).reshape(cshape), shape)
    assert np.array_equal(y, expected), "constant channels must normalize to exactly bias"
    y, saved = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis)
    assert np.array_equal(y, expected)
    mean, var, _ = bnc.batch_norm_stats(x, channel_axis=channel_axis)
    assert np.array_equal(mean, values.astype(dtype).astype(mean.dtype)), (
        "mean of a constant channel is the constant")
    assert np.array_equal(var, np.zeros(C)), "variance of a constant channel is 0"


@pytest.mark.parametrize("dtype,scale", [(np.float32, 1e-12), (np.float32, 1e12),
                                         (np.float64, 1e-100), (np.float64, 1e100),
                                         (np.float16, 1e-3), (np.float16, 1e3)])
def test_tiny_and_huge_magnitudes(dtype, scale):
    shape = (8, 4, 16, 16)
    x, (w, b, rm, rv), _ = _data(shape, 1, dtype)
    x = (f64(x) * scale).astype(dtype)
    rm = (f64(rm) * scale).astype(rm.dtype)
    rv = (f64(rv) * scale * scale).astype(rv.dtype)
    y_ref, rm_ref, rv_ref, _ = ref_train(x, w, b, rm, rv)
    y = bnc.batch_norm(x, w, b, rm, rv, training=True)
    assert_close(y, y_ref, tol(dtype), "y")
    assert_close(rm, rm_ref, stat_tol(dtype), "running_mean")
    assert_close(rv, rv_ref, stat_tol(dtype), "running_var")
    mean, var, _ = bnc.batch_norm_stats(x)
    mref, vref, _ = ref.batch_norm_stats(f64(x), channel_axis=1)
    assert_close(mean, mref, stat_tol(dtype))
    assert_close(var, vref, stat_tol(dtype))


@pytest.mark.parametrize("shape", [(8, 3, 40, 40), (2, 3, 70, 70), (64, 5, 9, 9)],
                         ids=["blocks-of-rows", "long-rows", "short-rows"])
def test_float16_computes_as_float32_copy(shape):
    """float16 is computed in float32: statistics, the backward's sums, and
    the outputs (rounded to float16) are the bits of the same call on a
    float32 copy, whichever way the kernels convert (whole blocks for the
    reductions, in registers for the elementwise passes)."""
    rng = rng_for("f16-as-f32", shape)
    x = rng.standard_normal(shape).astype(np.float16)
    dy = rng.standard_normal(shape).astype(np.float16)
    C = shape[1]
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    y16, s16 = bnc.batch_norm_forward(x, w, b)
    y32, s32 = bnc.batch_norm_forward(x.astype(np.float32), w, b)
    assert np.array_equal(y16, y32.astype(np.float16))
    for a, e in zip(s16, s32):
        assert np.array_equal(a, e)
    g16 = bnc.batch_norm_backward(dy, x, w, s16)
    g32 = bnc.batch_norm_backward(dy.astype(np.float32), x.astype(np.float32), w, s32)
    assert np.array_equal(g16[0], g32[0].astype(np.float16))
    assert np.array_equal(g16[1], g32[1]) and np.array_equal(g16[2], g32[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16],
                         ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("offset", [0, 1, 5], ids=["aligned", "off1", "off5"])
@pytest.mark.parametrize("shape,axis", [((3, 4, 1031), 1), ((2, 300, 100), -1),
                                        ((2, 2100, 3), -1), ((3, 67, 64), -1)],
                         ids=["channels-first", "last-100", "last-3", "last-64"])
def test_streamed_outputs_are_the_same_bits(dtype, offset, shape, axis, streamed):
    """Calls past the streaming threshold write y (and channels-first dx)
    with streaming stores (whole 64-byte lines; the partial lines at either
    end of a run as usual): forced on for small calls, the outputs are the
    bits of ordinary stores, with outputs that start anywhere in a line,
    runs from 1 to several lines past the streaming minimum (4 KiB), channel
    counts below, above and at a multiple of a vector, 1 and 2 threads, and
    in place (float16: channels-first runs twice as long, for the same bytes)."""
    rng = rng_for("streamed", dtype, offset, shape)
    if axis == 1:
        per = 2 if dtype == np.float16 else 1
        shape = shape[:-1] + (per * (shape[-1] + 17 * offset),)
    x = make_x(shape, dtype, rng, loc=3.0)
    dy = make_x(shape, dtype, rng)
    C = shape[axis]
    w, b, rm, rv = make_params(C, dtype, rng)
    buf = np.empty(x.size + 16, dtype)
    out = buf[offset:offset + x.size].reshape(shape)
    kw = dict(channel_axis=axis)

    def calls(nt):
        y, saved = bnc.batch_norm_forward(x, w, b, n_threads=nt, **kw)
        ye = bnc.batch_norm(x, w, b, running_mean=rm, running_var=rv, n_threads=nt,
                            out=out, **kw).copy()
        dx = bnc.batch_norm_backward(dy, x, w, saved, n_threads=nt, out=out, **kw)[0].copy()
        xi = x.copy()
        bnc.batch_norm(xi, w, b, running_mean=rm, running_var=rv, out=xi, n_threads=nt, **kw)
        return y, ye, dx, xi

    for nt in (1, 2):
        plain = calls(nt)
        stream = streamed(lambda: calls(nt))
        for a, e in zip(stream, plain):
            assert bit_equal(a, e)
    # and the stores are right, not just the same
    assert_close(plain[0], ref.batch_norm_forward(f64(x), f64(w), f64(b), **kw)[0], tol(dtype))


# ---------------------------------------------------------------------------
# forward / backward pair


def _ref_pair(x, w, b, g, channel_axis, frozen, mean=None, var=None, eps=1e-5):
    y, saved = ref.batch_norm_forward(f64(x), f64(w), f64(b), mean=f64(mean), var=f64(var),
                                      eps=eps, channel_axis=channel_axis)
    grads = ref.batch_norm_backward(f64(g), f64(x), f64(w), saved, channel_axis=channel_axis,
                                    use_batch_stats=not frozen)
    return y, saved, grads


@dtypes
@cases
@pytest.mark.parametrize("frozen", [False, True], ids=["batch", "frozen"])
def test_forward_backward_match_reference(shape, channel_axis, dtype, frozen):
    x, (w, b, rm, rv), rng = _data(shape, channel_axis, dtype, "fb")
    g = make_x(shape, dtype, rng)
    mean, var = (rm, rv) if frozen else (None, None)
    copies = snapshot(x, w, b, rm, rv, g)
    y_ref, saved_ref, grads_ref = _ref_pair(x, w, b, g, channel_axis, frozen, mean, var)

    y, saved = bnc.batch_norm_forward(x, w, b, mean=mean, var=var, channel_axis=channel_axis)
    assert y.dtype == x.dtype and y.strides == _layout_of(x)
    assert_close(y, y_ref, tol(dtype), "y")
    assert saved._fields == ("mean", "invstd", "var")
    for name in saved._fields:
        got = getattr(saved, name)
        assert isinstance(got, np.ndarray) and got.dtype == stat_dtype(dtype), name
        assert_close(got, getattr(saved_ref, name), stat_tol(dtype), f"saved.{name}")

    grads = bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis,
                                    use_batch_stats=not frozen)
    assert grads._fields == ("grad_input", "grad_weight", "grad_bias")
    gi, gw, gb = grads
    assert gi.dtype == x.dtype and gi.shape == x.shape and gi.strides == _layout_of(x)
    assert gw.dtype == stat_dtype(dtype) and gb.dtype == stat_dtype(dtype)
    # With 2 values per channel the terms of a batch-stats grad_input cancel
    # exactly: measure the error against the size of the terms as well.
    term = np.linalg.norm(f64(g)) * float(np.max(saved_ref.invstd) * np.max(np.abs(f64(w))))
    assert_close(gi, grads_ref[0], tol(dtype), "grad_input", atol=tol(dtype) * term)
    assert_close(gw, grads_ref[1], stat_tol(dtype) * (1 if dtype == np.float64 else 10),
                 "grad_weight")
    assert_close(gb, grads_ref[2], stat_tol(dtype) * (1 if dtype == np.float64 else 10),
                 "grad_bias")
    assert_unchanged([x, w, b, rm, rv, g], copies, ["x", "weight", "bias", "mean", "var", "g"])


@pytest.mark.parametrize("frozen", [False, True], ids=["batch", "frozen"])
def test_backward_without_weight(frozen):
    x, (w, b, rm, rv), rng = _data((4, 3, 5), 1, np.float64, "nw")
    g = make_x(x.shape, np.float64, rng)
    mean, var = (rm, rv) if frozen else (None, None)
    y_ref, saved_ref, grads_ref = _ref_pair(x, None, None, g, 1, frozen, mean, var)
    y, saved = bnc.batch_norm_forward(x, mean=mean, var=var)
    assert_close(y, y_ref, 1e-12)
    gi, gw, gb = bnc.batch_norm_backward(g, x, None, saved, use_batch_stats=not frozen)
    assert_close(gi, grads_ref[0], 1e-12)
    # weight=None means 1: the same as an explicit weight of ones
    gi1, gw1, gb1 = bnc.batch_norm_backward(g, x, np.ones(3), saved, use_batch_stats=not frozen)
    assert_close(gi, gi1, 1e-12)
    assert_close(gb, gb1, 1e-12)
    assert_close(gb, grads_ref[2], 1e-12)
    if gw is not None or grads_ref[1] is not None:
        assert_close(gw, grads_ref[1] if grads_ref[1] is not None else gw1, 1e-12)


def test_forward_with_batch_stats_equals_training_batch_norm():
    x, (w, b, _, _), _ = _data((6, 4, 5), 1, np.float64)
    y, saved = bnc.batch_norm_forward(x, w, b, eps=1e-3)
    assert_close(y, bnc.batch_norm(x, w, b, training=True, eps=1e-3), 1e-13)
    assert_close(saved.mean, x.mean(axis=(0, 2)), 1e-13)
    assert_close(saved.var, x.var(axis=(0, 2)), 1e-13)
    assert_close(saved.invstd, 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-3), 1e-13)


@pytest.mark.parametrize("frozen", [False, True], ids=["batch", "frozen"])
@pytest.mark.parametrize("shape,channel_axis", [((3, 2, 2), 1), ((4, 3), -1), ((2, 2, 2, 2), 2)])
def test_backward_finite_differences(frozen, shape, channel_axis):
    """Gradients of L = sum(g * y) checked against central differences (float64)."""
    x, (w, b, rm, rv), rng = _data(shape, channel_axis, np.float64, "fd")
    g = rng.standard_normal(shape)
    mean, var = (rm, rv) if frozen else (None, None)

    def loss(xv, wv, bv):
        y, _ = bnc.batch_norm_forward(xv, wv, bv, mean=mean, var=var, eps=1e-3,
                                      channel_axis=channel_axis)
        return float(np.sum(g * y))

    _, saved = bnc.batch_norm_forward(x, w, b, mean=mean, var=var, eps=1e-3,
                                      channel_axis=channel_axis)
    gi, gw, gb = bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis,
                                         use_batch_stats=not frozen)
    x1, w1, b1 = x.copy(), w.copy(), b.copy()
    f = lambda: loss(x1, w1, b1)  # noqa: E731
    assert_close(gi, numeric_grad(f, x1, 1e-6), 1e-6, "grad_input")
    assert_close(gw, numeric_grad(f, w1, 1e-6), 1e-6, "grad_weight")
    assert_close(gb, numeric_grad(f, b1, 1e-6), 1e-6, "grad_bias")


@dtypes
def test_backward_out(dtype):
    x, (w, b, _, _), rng = _data((4, 3, 5), 1, dtype, "bo")
    g = make_x(x.shape, dtype, rng)
    _, saved = bnc.batch_norm_forward(x, w, b)
    expected = bnc.batch_norm_backward(g, x, w, saved)
    out = np.full_like(x, np.nan)
    got = bnc.batch_norm_backward(g, x, w, saved, out=out)
    assert got.grad_input is out
    assert np.array_equal(out, expected.grad_input)
    assert np.array_equal(got.grad_weight, expected.grad_weight)
    assert np.array_equal(got.grad_bias, expected.grad_bias)


# ---------------------------------------------------------------------------
# batch_norm_stats / combine_stats / update_running_stats


@dtypes
@cases
def test_batch_norm_stats(shape, channel_axis, dtype):
    x, _, _ = _data(shape, channel_axis, dtype, "stats")
    copy = x.copy()
    mean, var, count = bnc.batch_norm_stats(x, channel_axis=channel_axis)
    mref, vref, cref = ref.batch_norm_stats(f64(x), channel_axis=channel_axis)
    assert mean.dtype == stat_dtype(dtype) and var.dtype == stat_dtype(dtype)
    C = shape[norm_axis(channel_axis, len(shape))]
    assert mean.shape == (C,) and var.shape == (C,)
    assert_close(mean, mref, stat_tol(dtype), "mean")
    assert_close(var, vref, stat_tol(dtype), "var")
    n = per_channel_count(shape, channel_axis)
    assert np.all(np.asarray(count) == n) and np.all(np.asarray(cref) == n)
    assert_unchanged([x], [copy], ["x"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", [((10, 3, 4), 1), ((10, 5, 4, 3), -1),
                                                ((37, 6), 1)])
def test_combine_stats_matches_concatenation(dtype, shape, channel_axis):
    rng = rng_for("combine", shape, np.dtype(dtype).name)
    x = make_x(shape, dtype, rng, loc=3.0)
    x[2:5] += np.asarray(5.0, dtype)  # pieces with very different means
    pieces = [x[:2], x[2:5], x[5:]]
    stats = [bnc.batch_norm_stats(p, channel_axis=channel_axis) for p in pieces]
    means = [s[0] for s in stats]
    variances = [s[1] for s in stats]
    counts = [int(np.asarray(s[2]).reshape(-1)[0]) for s in stats]
    mean, var, count = bnc.combine_stats(means, variances, counts)
    mean_all, var_all, count_all = bnc.batch_norm_stats(x, channel_axis=channel_axis)
    t = stat_tol(dtype)
    assert_close(mean, mean_all, t, "mean")
    assert_close(var, var_all, t, "var")
    assert np.all(np.asarray(count) == np.asarray(count_all))
    # vs the reference merge of the same pieces
    mr, vr, cr = ref.combine_stats([f64(m) for m in means], [f64(v) for v in variances], counts)
    assert_close(mean, mr, t)
    assert_close(var, vr, t)
    assert np.all(np.asarray(count) == np.asarray(cr))
    # arrays instead of lists
    mean2, var2, _ = bnc.combine_stats(np.stack(means), np.stack(variances), np.array(counts))
    assert_close(mean2, mean, t)
    assert_close(var2, var, t)


def test_combine_stats_single_piece_and_large_offset():
    rng = rng_for("combine1")
    x = 1e8 + rng.standard_normal((50, 4))
    m, v, c = bnc.batch_norm_stats(x)
    m1, v1, c1 = bnc.combine_stats([m], [v], [c])
    assert_close(m1, m, 1e-15)
    assert_close(v1, v, 1e-12)
    parts = [x[:10], x[10:11 + 10], x[21:]]
    st_ = [bnc.batch_norm_stats(p) for p in parts]
    mc, vc, cc = bnc.combine_stats([s[0] for s in st_], [s[1] for s in st_], [s[2] for s in st_])
    mr, vr, _ = ref.batch_norm_stats(x, channel_axis=1)
    assert_close(mc, mr, 1e-15)
    # the piece means are rounded at 1e8 (7e-9 absolute): that bounds the merge
    assert_close(vc, vr, 1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kw", [dict(momentum=0.1), dict(momentum=0.7, correction=0),
                                dict(decay=0.9), dict(decay=0.25, correction=2),
                                dict(momentum=None)],
                         ids=["m0.1", "m0.7-c0", "d0.9", "d0.25-c2", "none"])
def test_update_running_stats(dtype, kw):
    rng = rng_for("urs", np.dtype(dtype).name, repr(kw))
    C = 5
    rm = rng.standard_normal(C).astype(dtype)
    rv = rng.uniform(0.5, 2, C).astype(dtype)
    mean = rng.standard_normal(C).astype(dtype)
    var = rng.uniform(0.5, 2, C).astype(dtype)
    count = 17
    nbt = np.array(3, dtype=np.int64)
    rm_ref, rv_ref, nbt_ref = f64(rm), f64(rv), nbt.copy()
    rm0, rv0 = f64(rm), f64(rv)
    # the reference takes the same keyword arguments as the public API
    ref.update_running_stats(rm_ref, rv_ref, f64(mean), f64(var), count,
                             num_batches_tracked=nbt_ref, **kw)
    ret = bnc.update_running_stats(rm, rv, mean, var, count, num_batches_tracked=nbt, **kw)
    assert ret is None
    t = stat_tol(dtype)
    assert_close(rm, rm_ref, t, "running_mean")
    assert_close(rv, rv_ref, t, "running_var")
    assert int(nbt) == 4 == int(nbt_ref)
    # direct formula
    if kw.get("momentum", 0.1) is None:
        m = 1 / 4
    elif "decay" in kw:
        m = 1 - kw["decay"]
    else:
        m = kw["momentum"]
    corr = kw.get("correction", 1)
    assert_close(rm, (1 - m) * rm0 + m * f64(mean), t)
    assert_close(rv, (1 - m) * rv0 + m * f64(var) * count / (count - corr), t)


def test_update_running_stats_matches_batch_norm():
    x, (w, b, rm, rv), _ = _data((6, 4, 5), 1, np.float32, "urs-bn")
    rm2, rv2 = rm.copy(), rv.copy()
    bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=0.3)
    mean, var, count = bnc.batch_norm_stats(x)
    bnc.update_running_stats(rm2, rv2, mean, var, count, momentum=0.3)
    assert_close(rm2, rm, 1e-6)
    assert_close(rv2, rv, 1e-6)


# ---------------------------------------------------------------------------
# hypothesis properties

SETTINGS = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def bn_cases(draw, dtypes=DTYPES, layouts=LAYOUTS):
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    channel_axis = draw(st.integers(-ndim, ndim - 1))
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(layouts))
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, channel_axis, dtype, layout, seed


def _hdata(case):
    shape, channel_axis, dtype, layout, seed = case
    rng = np.random.default_rng(seed)
    C = shape[norm_axis(channel_axis, len(shape))]
    base = make_x(shape, dtype, rng, loc=rng.uniform(-3, 3), scale=rng.uniform(0.1, 10))
    x = as_layout(base, layout, channel_axis)
    return base, x, make_params(C, dtype, rng), rng


@SETTINGS
@given(bn_cases(), st.booleans())
def test_property_matches_reference(case, training):
    shape, channel_axis, dtype, layout, _ = case
    if training:
        assume(per_channel_count(shape, channel_axis) > 1)
    base, x, (w, b, rm, rv), _ = _hdata(case)
    copies = snapshot(x, w, b)
    if training:
        y_ref, rm_ref, rv_ref, _ = ref_train(base, w, b, rm, rv, channel_axis=channel_axis)
        y = bnc.batch_norm(x, w, b, rm, rv, training=True, channel_axis=channel_axis)
        assert_close(rm, rm_ref, stat_tol(dtype), "running_mean")
        assert_close(rv, rv_ref, stat_tol(dtype), "running_var")
    else:
        y_ref = ref_eval(base, w, b, rm, rv, channel_axis=channel_axis)
        y = bnc.batch_norm(x, w, b, rm, rv, channel_axis=channel_axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.strides == np.empty_like(x).strides
    assert_close(y, y_ref, tol(dtype), "y")
    assert_unchanged([x, w, b], copies, ["x", "weight", "bias"])


@SETTINGS
@given(bn_cases(), st.booleans())
def test_property_forward_backward(case, frozen):
    shape, channel_axis, dtype, layout, _ = case
    if not frozen:  # batch statistics of one value per channel: not specified
        assume(per_channel_count(shape, channel_axis) > 1)
    base, x, (w, b, rm, rv), rng = _hdata(case)
    g = as_layout(make_x(shape, dtype, rng), layout, channel_axis)
    mean, var = (rm, rv) if frozen else (None, None)
    copies = snapshot(x, g)
    y_ref, saved_ref, grads_ref = _ref_pair(base, w, b, np.array(g), channel_axis, frozen,
                                            mean, var)
    y, saved = bnc.batch_norm_forward(x, w, b, mean=mean, var=var, channel_axis=channel_axis)
    assert_close(y, y_ref, tol(dtype), "y")
    gi, gw, gb = bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis,
                                         use_batch_stats=not frozen)
    # With very few values per channel the terms of grad_input cancel (n=2
    # gives exactly 0): measure the error against the size of the terms.
    gnorm = np.linalg.norm(f64(g))
    term = gnorm * float(np.max(saved_ref.invstd) * np.max(np.abs(f64(w))))
    gtol = tol(dtype) * (1 if dtype == np.float64 else 10)
    assert_close(gi, grads_ref[0], gtol, "grad_input", atol=gtol * term)
    stol = stat_tol(dtype) * (1 if dtype == np.float64 else 10)
    assert_close(gb, grads_ref[2], stol, "grad_bias", atol=stol * gnorm)
    assert_close(gw, grads_ref[1], stol, "grad_weight", atol=stol * gnorm)
    assert_unchanged([x, g], copies, ["x", "grad_out"])


@SETTINGS
@given(bn_cases(dtypes=(np.float64,)))
def test_property_normalized_moments_and_shift_invariance(case):
    shape, channel_axis, dtype, layout, _ = case
    assume(per_channel_count(shape, channel_axis) > 1)
    base, x, _, _ = _hdata(case)
    ax = norm_axis(channel_axis, len(shape))
    red = tuple(i for i in range(len(shape)) if i != ax)
    eps = 1e-5
    y = bnc.batch_norm(x, training=True, channel_axis=channel_axis, eps=eps)
    _, var, _ = bnc.batch_norm_stats(x, channel_axis=channel_axis)
    # normalized: per-channel mean 0 and mean square var / (var + eps)
    assert np.all(np.abs(y.mean(axis=red)) <= 1e-12 * (1 + np.abs(y).max()))
    assert_close((y**2).mean(axis=red), var / (var + eps), 1e-10, "E[y^2]")
    # invariance to a per-channel shift
    y2 = bnc.batch_norm(x + 3.0, training=True, channel_axis=channel_axis, eps=eps)
    assert_close(y2, y, 1e-9, "y(x + 3)", atol=1e-12)


@SETTINGS
@given(bn_cases(dtypes=(np.float64,)))
def test_property_gradient_sums_vanish(case):
    shape, channel_axis, dtype, layout, _ = case
    assume(per_channel_count(shape, channel_axis) > 1)
    base, x, (w, b, _, _), rng = _hdata(case)
    g = rng.standard_normal(shape)
    ax = norm_axis(channel_axis, len(shape))
    red = tuple(i for i in range(len(shape)) if i != ax)
    _, saved = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis)
    gi, gw, gb = bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis)
    # with batch statistics the input gradient sums to zero over each channel
    scale = np.abs(gi).sum(axis=red) + np.abs(g).sum(axis=red) * np.abs(w) * saved.invstd
    assert np.all(np.abs(gi.sum(axis=red)) <= 1e-12 * scale + 1e-300)
    assert_close(gb, g.sum(axis=red), 1e-12, "grad_bias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", [((3, 4, 7), 1), ((6, 7, 4), -1)],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_infinite_weight_gives_signed_infinities(dtype, shape, channel_axis, training):
    """The mean's low part is folded into the bias of the normalizing pass:
    an infinite weight must still give +-inf with the sign of x - mean."""
    rng = rng_for("inf-weight", shape, np.dtype(dtype).name, training)
    x = (0.3 + rng.standard_normal(shape)).astype(dtype)
    C = shape[channel_axis]
    sdt = stat_dtype(dtype)
    w = np.ones(C, sdt)
    w[1] = np.inf
    b = np.zeros(C, sdt)
    rm = np.full(C, 0.1, sdt)
    rv = np.ones(C, sdt)
    if training:
        y = bnc.batch_norm(x, w, b, training=True, channel_axis=channel_axis)
        yr, _ = ref.batch_norm_forward(f64(x), w, b, mean=None, var=None, eps=1e-5,
                                       channel_axis=channel_axis)
    else:
        y = bnc.batch_norm(x, w, b, rm, rv, channel_axis=channel_axis)
        yr, _ = ref.batch_norm_forward(f64(x), w, b, mean=rm, var=rv, eps=1e-5,
                                       channel_axis=channel_axis)
    assert np.isinf(yr).sum() > 0
    assert np.array_equal(np.isposinf(y), np.isposinf(yr))
    assert np.array_equal(np.isneginf(y), np.isneginf(yr))
