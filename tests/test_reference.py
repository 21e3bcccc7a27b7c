"""Checks of the float64 NumPy oracle ``bnc.reference`` itself.

Hand-computed values, properties, central finite differences and, when it is
installed, PyTorch. Only the tests marked as torch tests need torch.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import numeric_grad

try:
    from bnc import reference
except ImportError:  # bnc/__init__.py imports a compiled module not built yet
    _path = Path(__file__).resolve().parents[1] / "bnc" / "reference.py"
    _spec = importlib.util.spec_from_file_location("_bnc_reference", _path)
    reference = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = reference
    _spec.loader.exec_module(reference)


EPS = 1e-5
FAST = settings(max_examples=30, deadline=None, database=None)

# (shape, channel_axis) pairs: 2-D, NCL, NCHW, NHWC, NCDHW, odd axes.
CASES = [
    ((4, 3), 1),
    ((5, 2), -1),
    ((3, 2), 0),
    ((2, 3, 4), 1),
    ((2, 3, 2, 2), 1),
    ((2, 2, 2, 3), -1),
    ((2, 2, 3, 2), 2),
    ((2, 2, 1, 2, 2), 1),
]


def rng_for(*key):
    """A generator seeded from small ints (negative axes allowed)."""
    return np.random.default_rng([int(k) + 8 for k in key])


def bc(v, ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(v).reshape(shape)


def reduced(ndim, axis):
    axis %= ndim
    return tuple(a for a in range(ndim) if a != axis)


# ---------------------------------------------------------------------------
# hypothesis strategies


@st.composite
def shapes_and_axes(draw, min_count=2):
    ndim = draw(st.integers(2, 5))
    shape = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=4))
    axis = draw(st.integers(-ndim, ndim - 1))
    count = int(np.prod(shape)) // shape[axis]
    if count < min_count:
        # grow a reduced axis so that every channel has enough values
        other = (axis % ndim + 1) % ndim
        shape = list(shape)
        shape[other] *= min_count
        shape = tuple(shape)
    return shape, axis


@st.composite
def arrays_and_axes(draw, min_count=2, bound=100.0):
    shape, axis = draw(shapes_and_axes(min_count=min_count))
    x = draw(
        hnp.arrays(
            np.float64,
            shape,
            elements=st.floats(-bound, bound, allow_nan=False, allow_subnormal=False),
        )
    )
    return x, axis


# ---------------------------------------------------------------------------
# forward: hand-checked values


def test_forward_hand_2d():
    x = np.array([[1.0, 3.0], [3.0, 5.0]])
    # channel 0 holds 1, 3 (mean 2, var 1); channel 1 holds 3, 5 (mean 4, var 1)
    s = np.sqrt(1.0 + EPS)
    y, saved = reference.batch_norm_forward(x)
    np.testing.assert_allclose(saved.mean, [2.0, 4.0], rtol=0, atol=0)
    np.testing.assert_allclose(saved.var, [1.0, 1.0], rtol=0, atol=0)
    np.testing.assert_allclose(saved.invstd, [1 / s, 1 / s], rtol=1e-15)
    np.testing.assert_allclose(y, [[-1 / s, -1 / s], [1 / s, 1 / s]], rtol=1e-15)

    w = np.array([2.0, 3.0])
    b = np.array([0.5, -1.0])
    y = reference.batch_norm(x, w, b, training=True)
    expected = [[-2 / s + 0.5, -3 / s - 1.0], [2 / s + 0.5, 3 / s - 1.0]]
    np.testing.assert_allclose(y, expected, rtol=1e-15)
    assert y.dtype == np.float64


def test_forward_hand_channel_axis_0():
    x = np.array([[1.0, 3.0], [3.0, 5.0]])
    # rows are channels now: row 0 (mean 2, var 1), row 1 (mean 4, var 1)
    s = np.sqrt(1.0 + EPS)
    y, saved = reference.batch_norm_forward(x, channel_axis=0)
    np.testing.assert_array_equal(saved.mean, [2.0, 4.0])
    np.testing.assert_array_equal(saved.var, [1.0, 1.0])
    np.testing.assert_allclose(y, [[-1 / s, 1 / s], [-1 / s, 1 / s]], rtol=1e-15)
    np.testing.assert_allclose(
        reference.batch_norm_forward(x, channel_axis=-2)[0], y, rtol=0, atol=0
    )


def test_forward_hand_constant_channel_3d():
    x = np.array([[[0.0, 1.0, 2.0], [4.0, 4.0, 4.0]]])  # (N=1, C=2, L=3)
    y, saved = reference.batch_norm_forward(x, eps=1e-3)
    np.testing.assert_allclose(saved.mean, [1.0, 4.0], rtol=1e-15)
    np.testing.assert_allclose(saved.var, [2.0 / 3.0, 0.0], rtol=1e-15, atol=0)
    np.testing.assert_allclose(
        saved.invstd, [1 / np.sqrt(2 / 3 + 1e-3), 1 / np.sqrt(1e-3)], rtol=1e-15
    )
    k = 1 / np.sqrt(2 / 3 + 1e-3)
    np.testing.assert_allclose(y, [[[-k, 0.0, k], [0.0, 0.0, 0.0]]], rtol=1e-15)


def test_forward_given_stats_hand():
    x = np.array([[1.0, 3.0], [3.0, 5.0]])
    mean = np.array([0.0, 1.0])
    var = np.array([4.0 - EPS, 1.0 - EPS])  # invstd = 1/2 and 1
    y, saved = reference.batch_norm_forward(
        x, np.array([2.0, 1.0]), np.array([0.0, 10.0]), mean=mean, var=var
    )
    np.testing.assert_allclose(saved.invstd, [0.5, 1.0], rtol=1e-15)
    np.testing.assert_array_equal(saved.mean, mean)
    np.testing.assert_array_equal(saved.var, var)
    np.testing.assert_allclose(y, [[1.0, 12.0], [3.0, 14.0]], rtol=1e-15)
    # eval-mode batch_norm is the same computation
    y2 = reference.batch_norm(
        x, np.array([2.0, 1.0]), np.array([0.0, 10.0]), mean.copy(), var.copy()
    )
    np.testing.assert_array_equal(y2, y)


def test_stats_hand():
    x = np.array([[[1.0, 2.0], [10.0, 20.0]], [[3.0, 6.0], [30.0, 40.0]]])  # (2, 2, 2)
    mean, var, count = reference.batch_norm_stats(x)
    assert count == 4 and isinstance(count, int)
    np.testing.assert_allclose(mean, [3.0, 25.0], rtol=1e-15)
    np.testing.assert_allclose(var, [3.5, 125.0], rtol=1e-15)
    mean, var, count = reference.batch_norm_stats(x, channel_axis=-1)
    assert count == 4
    np.testing.assert_allclose(mean, [11.0, 17.0], rtol=1e-15)
    np.testing.assert_allclose(var, [np.var([1, 10, 3, 30]), np.var([2, 20, 6, 40])])


def test_stats_large_offset_two_pass():
    # |mean|/std = 1e6 in float64: the two-pass variance is still accurate
    rng = rng_for(1)
    z = rng.standard_normal((64, 3))
    z -= z.mean(axis=0)
    mean, var, _ = reference.batch_norm_stats(z + 1e6)
    np.testing.assert_allclose(var, (z * z).mean(axis=0), rtol=1e-8)
    np.testing.assert_allclose(mean, 1e6, rtol=1e-15)


# ---------------------------------------------------------------------------
# forward: properties


@FAST
@given(arrays_and_axes())
def test_forward_normalizes(data):
    x, axis = data
    y, saved = reference.batch_norm_forward(x, channel_axis=axis)
    axes = reduced(x.ndim, axis)
    assert y.shape == x.shape and y.dtype == np.float64
    var = saved.var
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-9)
    # var(y) = var / (var + eps): 1 for well-spread channels, 0 for constant
    np.testing.assert_allclose(y.var(axis=axes), var / (var + EPS), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(saved.invstd, 1 / np.sqrt(var + EPS), rtol=1e-15)


@FAST
@given(shapes_and_axes(), st.integers(0, 2**32 - 1))
def test_forward_unit_mean_var(shape_axis, seed):
    shape, axis = shape_axis
    x = rng_for(seed).standard_normal(shape) * 3.0 + 7.0
    y, _ = reference.batch_norm_forward(x, eps=1e-12, channel_axis=axis)
    axes = reduced(len(shape), axis)
    var = x.var(axis=axes)
    ok = var > 1e-6  # not (almost) constant
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes)[ok], 1.0, rtol=1e-6)


@FAST
@given(arrays_and_axes(), st.floats(-1e3, 1e3))
def test_forward_shift_invariance(data, c):
    x, axis = data
    y, _ = reference.batch_norm_forward(x, channel_axis=axis)
    y_shift, _ = reference.batch_norm_forward(x + c, channel_axis=axis)
    np.testing.assert_allclose(y_shift, y, rtol=0, atol=1e-8)


@FAST
@given(arrays_and_axes(), st.integers(0, 2**32 - 1))
def test_forward_affine(data, seed):
    x, axis = data
    C = x.shape[axis]
    rng = rng_for(seed)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y0, s0 = reference.batch_norm_forward(x, channel_axis=axis)
    y1, s1 = reference.batch_norm_forward(x, w, b, channel_axis=axis)
    a = axis % x.ndim
    expected = y0 * bc(w, x.ndim, a) + bc(b, x.ndim, a)
    np.testing.assert_allclose(y1, expected, rtol=1e-12, atol=1e-12)
    for a, b_ in zip(s0, s1):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("shape,axis", CASES)
def test_channel_axis_is_a_transpose(shape, axis):
    rng = rng_for(2, len(shape), axis)
    x = rng.standard_normal(shape)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y, saved = reference.batch_norm_forward(x, w, b, channel_axis=axis)
    xt = np.moveaxis(x, axis, 1)
    yt, saved_t = reference.batch_norm_forward(xt, w, b, channel_axis=1)
    np.testing.assert_allclose(np.moveaxis(yt, 1, axis), y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(saved_t.var, saved.var, rtol=1e-13)


# ---------------------------------------------------------------------------
# backward vs finite differences


@pytest.mark.parametrize("use_batch_stats", [True, False])
@pytest.mark.parametrize("shape,axis", CASES)
def test_backward_finite_differences(shape, axis, use_batch_stats):
    rng = rng_for(3, len(shape), axis, use_batch_stats)
    C = shape[axis]
    x = rng.standard_normal(shape)
    w = rng.standard_normal(C)
    b = rng.standard_normal(C)
    G = rng.standard_normal(shape)
    if use_batch_stats:
        stats = {}  # forward recomputes the batch statistics from x
    else:
        stats = {"mean": rng.standard_normal(C), "var": rng.uniform(0.5, 2.0, C)}

    def loss():
        y, _ = reference.batch_norm_forward(x, w, b, channel_axis=axis, **stats)
        return float(np.sum(y * G))

    _, saved = reference.batch_norm_forward(x, w, b, channel_axis=axis, **stats)
    grads = reference.batch_norm_backward(
        G, x, w, saved, channel_axis=axis, use_batch_stats=use_batch_stats
    )
    assert isinstance(grads, reference.Grads)
    assert grads.grad_input.shape == x.shape
    assert grads.grad_weight.shape == (C,) and grads.grad_bias.shape == (C,)
    for analytic, wrt in [
        (grads.grad_input, x),
        (grads.grad_weight, w),
        (grads.grad_bias, b),
    ]:
        np.testing.assert_allclose(analytic, numeric_grad(loss, wrt), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("use_batch_stats", [True, False])
def test_backward_weight_none_is_ones(use_batch_stats):
    rng = rng_for(4)
    x = rng.standard_normal((3, 4, 2))
    G = rng.standard_normal(x.shape)
    _, saved = reference.batch_norm_forward(x)
    kw = {"use_batch_stats": use_batch_stats}
    g_none = reference.batch_norm_backward(G, x, None, saved, **kw)
    g_ones = reference.batch_norm_backward(G, x, np.ones(4), saved, **kw)
    for a, b in zip(g_none, g_ones):
        np.testing.assert_array_equal(a, b)
    assert g_none.grad_weight.shape == (4,) and g_none.grad_bias.shape == (4,)


@FAST
@given(arrays_and_axes(bound=10.0), st.integers(0, 2**32 - 1))
def test_backward_gradient_sums_vanish(data, seed):
    x, axis = data
    C = x.shape[axis]
    rng = rng_for(seed)
    w = rng.standard_normal(C)
    G = rng.standard_normal(x.shape)
    y, saved = reference.batch_norm_forward(x, w, channel_axis=axis)
    dx = reference.batch_norm_backward(G, x, w, saved, channel_axis=axis).grad_input
    axes = reduced(x.ndim, axis)
    # L is invariant to x + c per channel, so the gradient sums to zero;
    # scale by what a single term can be to get a relative check
    scale = np.abs(w) * saved.invstd * np.abs(G).sum(axis=axes) + 1.0
    np.testing.assert_allclose(dx.sum(axis=axes) / scale, 0.0, atol=1e-10)


@FAST
@given(arrays_and_axes(bound=10.0), st.integers(0, 2**32 - 1))
def test_backward_frozen_is_elementwise(data, seed):
    x, axis = data
    C = x.shape[axis]
    rng = rng_for(seed)
    w = rng.standard_normal(C)
    mean, var = rng.standard_normal(C), rng.uniform(0.1, 3.0, C)
    G = rng.standard_normal(x.shape)
    _, saved = reference.batch_norm_forward(x, w, mean=mean, var=var, channel_axis=axis)
    g = reference.batch_norm_backward(G, x, w, saved, channel_axis=axis, use_batch_stats=False)
    a = axis % x.ndim
    np.testing.assert_allclose(
        g.grad_input, G * bc(w / np.sqrt(var + EPS), x.ndim, a), rtol=1e-14
    )
    np.testing.assert_allclose(g.grad_bias, G.sum(axis=reduced(x.ndim, a)), rtol=1e-14)


# ---------------------------------------------------------------------------
# combine_stats


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_combine_equals_concatenation(axis):
    rng = rng_for(5, axis)
    C = 3
    # four groups split along a reduced axis, one of them empty
    sizes = [2, 0, 5, 1]
    groups = []
    for n in sizes:
        shape = [n, C, 2] if axis == 1 else ([n, 2, C] if axis == -1 else [C, n, 2])
        groups.append(rng.standard_normal(shape) * 4.0 + 100.0)
    cat_axis = 1 if axis == 0 else 0
    full = np.concatenate(groups, axis=cat_axis)

    stats = [reference.batch_norm_stats(g, channel_axis=axis) for g in groups]
    means = np.array([s[0] for s in stats])
    vars_ = np.array([s[1] for s in stats])
    counts = np.array([s[2] for s in stats])
    assert counts[1] == 0 and np.isnan(means[1]).all()

    mean, var, count = reference.combine_stats(means, vars_, counts)
    m_ref, v_ref, n_ref = reference.batch_norm_stats(full, channel_axis=axis)
    assert count == n_ref == sum(sizes) * 2
    np.testing.assert_allclose(mean, m_ref, rtol=1e-14)
    np.testing.assert_allclose(var, v_ref, rtol=1e-11)


def test_combine_ignores_zero_count_garbage():
    means = np.array([[1.0, 2.0], [123.0, -5.0]])
    vars_ = np.array([[0.5, 0.25], [7.0, 9.0]])
    mean, var, count = reference.combine_stats(means, vars_, [4, 0])
    np.testing.assert_array_equal(mean, [1.0, 2.0])
    np.testing.assert_array_equal(var, [0.5, 0.25])
    assert count == 4


def test_combine_hand():
    # {0, 2} (mean 1, var 1) and {4, 6, 8} (mean 6, var 8/3) -> {0, 2, 4, 6, 8}
    mean, var, count = reference.combine_stats([[1.0]], [[1.0]], [2])
    assert count == 2
    mean, var, count = reference.combine_stats([[1.0], [6.0]], [[1.0], [8.0 / 3.0]], [2, 3])
    assert count == 5
    np.testing.assert_allclose(mean, [4.0], rtol=1e-15)
    np.testing.assert_allclose(var, [8.0], rtol=1e-15)


@FAST
@given(st.lists(st.integers(0, 6), min_size=1, max_size=5), st.integers(0, 2**32 - 1))
def test_combine_property(sizes, seed):
    rng = rng_for(seed)
    groups = [rng.standard_normal((n, 2)) * 10 - 3 for n in sizes]
    full = np.concatenate(groups, axis=0)
    stats = [reference.batch_norm_stats(g) for g in groups]  # empty: NaN, count 0
    mean, var, count = reference.combine_stats(
        [s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats]
    )
    assert count == full.shape[0]
    if count:
        m_ref, v_ref, _ = reference.batch_norm_stats(full)
        np.testing.assert_allclose(mean, m_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(var, v_ref, rtol=1e-12, atol=1e-12)
    else:
        assert np.isnan(mean).all() and np.isnan(var).all()


# ---------------------------------------------------------------------------
# update_running_stats


def test_update_momentum_hand():
    rm, rv = np.array([0.0, 1.0]), np.array([1.0, 2.0])
    # batch mean 2, biased var 1 over n=2 -> unbiased 2
    reference.update_running_stats(rm, rv, [2.0, 3.0], [1.0, 1.0], 2, momentum=0.5)
    np.testing.assert_allclose(rm, [1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(rv, [1.5, 2.0], rtol=1e-15)
    rm, rv = np.zeros(1), np.ones(1)
    reference.update_running_stats(rm, rv, [2.0], [1.0], 2)  # default momentum 0.1
    np.testing.assert_allclose(rm, [0.2], rtol=1e-15)
    np.testing.assert_allclose(rv, [0.9 + 0.1 * 2.0], rtol=1e-15)


def test_update_decay_is_one_minus_momentum():
    a = (np.array([0.3, -1.0]), np.array([1.0, 4.0]))
    b = (a[0].copy(), a[1].copy())
    args = ([1.0, 2.0], [0.5, 3.0], 10)
    reference.update_running_stats(*a, *args, momentum=0.25)
    reference.update_running_stats(*b, *args, decay=0.75)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-15)
    np.testing.assert_allclose(b[1], a[1], rtol=1e-15)


@pytest.mark.parametrize("momentum", [0.2, None, 0.0])
def test_update_momentum_and_decay_is_type_error(momentum):
    rm, rv = np.zeros(2), np.ones(2)
    nbt = np.array(0, dtype=np.int64)
    with pytest.raises(TypeError, match="momentum or decay"):
        reference.update_running_stats(
            rm, rv, [1.0, 1.0], [1.0, 1.0], 4, momentum=momentum, decay=0.9,
            num_batches_tracked=nbt,
        )
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    assert nbt == 0


def test_update_cumulative_average():
    rng = rng_for(6)
    rm, rv = np.full(3, 5.0), np.full(3, 5.0)  # initial values are forgotten
    nbt = np.array(0, dtype=np.int64)
    means, unbiased = [], []
    for k in range(1, 5):
        x = rng.standard_normal((k + 1, 3))
        mean, var, n = reference.batch_norm_stats(x)
        reference.update_running_stats(
            rm, rv, mean, var, n, momentum=None, num_batches_tracked=nbt
        )
        means.append(mean)
        unbiased.append(x.var(axis=0, ddof=1))
        assert nbt.shape == () and nbt.dtype == np.int64 and int(nbt) == k
        np.testing.assert_allclose(rm, np.mean(means, axis=0), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(rv, np.mean(unbiased, axis=0), rtol=1e-13, atol=1e-15)


def test_update_increments_counter_with_momentum():
    rm, rv = np.zeros(1), np.ones(1)
    nbt = np.array(7, dtype=np.int64)
    reference.update_running_stats(rm, rv, [1.0], [1.0], 3, momentum=0.1, num_batches_tracked=nbt)
    assert int(nbt) == 8
    np.testing.assert_allclose(rm, [0.1], rtol=1e-15)
    np.testing.assert_allclose(rv, [0.9 + 0.1 * 1.5], rtol=1e-15)


def test_update_momentum_none_needs_counter():
    with pytest.raises(ValueError, match="num_batches_tracked"):
        reference.update_running_stats(np.zeros(1), np.ones(1), [1.0], [1.0], 3, momentum=None)


def test_update_correction():
    rm, rv = np.zeros(2), np.ones(2)
    reference.update_running_stats(rm, rv, [1.0, 2.0], [4.0, 8.0], 5, momentum=0.5, correction=0)
    np.testing.assert_allclose(rv, [2.5, 4.5], rtol=1e-15)
    rm, rv = np.zeros(2), np.ones(2)
    reference.update_running_stats(rm, rv, [1.0, 2.0], [4.0, 8.0], 5, momentum=0.5, correction=2)
    np.testing.assert_allclose(rv, [0.5 + 0.5 * 4.0 * 5 / 3, 0.5 + 0.5 * 8.0 * 5 / 3], rtol=1e-15)
    with pytest.raises(ValueError, match="correction"):
        reference.update_running_stats(rm, rv, [1.0, 2.0], [4.0, 8.0], 1, correction=1)


def test_update_keeps_running_dtype():
    rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    reference.update_running_stats(rm, rv, [1.0, 2.0], [1.0, 1.0], 2, momentum=0.5)
    assert rm.dtype == rv.dtype == np.float32
    np.testing.assert_allclose(rm, [0.5, 1.0])
    np.testing.assert_allclose(rv, [1.5, 1.5])


# ---------------------------------------------------------------------------
# batch_norm


def test_batch_norm_training_updates_running_stats():
    rng = rng_for(7)
    x = rng.standard_normal((4, 3, 2)) * 2 + 1
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = np.zeros(3), np.ones(3)
    nbt = np.array(0, dtype=np.int64)
    y = reference.batch_norm(x, w, b, rm, rv, training=True, momentum=0.3, num_batches_tracked=nbt)
    y_ref, saved = reference.batch_norm_forward(x, w, b)
    np.testing.assert_array_equal(y, y_ref)
    mean, var, n = reference.batch_norm_stats(x)
    assert n == 8 and int(nbt) == 1
    np.testing.assert_allclose(rm, 0.3 * mean, rtol=1e-15)
    np.testing.assert_allclose(rv, 0.7 + 0.3 * var * 8 / 7, rtol=1e-15)


def test_batch_norm_training_without_running_stats():
    x = np.array([[1.0, 3.0], [3.0, 5.0]])
    nbt = np.array(0, dtype=np.int64)
    y = reference.batch_norm(x, training=True, num_batches_tracked=nbt)
    np.testing.assert_array_equal(y, reference.batch_norm_forward(x)[0])
    assert int(nbt) == 0


def test_batch_norm_eval_uses_running_stats_and_leaves_them():
    rng = rng_for(8)
    x = rng.standard_normal((2, 3, 2, 2))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    rm0, rv0 = rm.copy(), rv.copy()
    nbt = np.array(3, dtype=np.int64)
    y = reference.batch_norm(x, None, None, rm, rv, num_batches_tracked=nbt)
    expected = (x - bc(rm, 4, 1)) / np.sqrt(bc(rv, 4, 1) + EPS)
    np.testing.assert_allclose(y, expected, rtol=1e-14)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert int(nbt) == 3


def test_batch_norm_eval_needs_running_stats():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="running_mean and running_var"):
        reference.batch_norm(x)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        reference.batch_norm(x, running_mean=np.zeros(3))


@pytest.mark.parametrize("shape,axis", [((1, 3), 1), ((1, 3, 1, 1), 1), ((1, 1, 1, 4), -1)])
def test_batch_norm_training_one_value_per_channel(shape, axis):
    rm, rv = np.zeros(shape[axis]), np.ones(shape[axis])
    msg = (
        "Expected more than 1 value per channel when training, got input size "
        + str(shape).replace("(", r"\(").replace(")", r"\)")
    )
    with pytest.raises(ValueError, match=msg):
        reference.batch_norm(
            np.ones(shape), running_mean=rm, running_var=rv, training=True,
            channel_axis=axis,
        )
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    # one sample with a spatial size is fine
    reference.batch_norm(np.arange(6.0).reshape(1, 3, 2), training=True)


def test_batch_norm_negative_channel_axis():
    rng = rng_for(9)
    x = rng.standard_normal((3, 2, 2, 4))  # NHWC
    rm1, rv1 = np.zeros(4), np.ones(4)
    rm2, rv2 = np.zeros(4), np.ones(4)
    y1 = reference.batch_norm(x, running_mean=rm1, running_var=rv1, training=True, channel_axis=-1)
    y2 = reference.batch_norm(
        np.moveaxis(x, -1, 1), running_mean=rm2, running_var=rv2, training=True
    )
    np.testing.assert_allclose(y1, np.moveaxis(y2, 1, -1), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(rm1, rm2, rtol=1e-13)
    np.testing.assert_allclose(rv1, rv2, rtol=1e-13)


# ---------------------------------------------------------------------------
# PyTorch (skipped cleanly when it is not installed)

TORCH_SHAPES = [(4, 3), (3, 2, 5), (2, 3, 2, 3), (2, 2, 2, 2, 3)]


@pytest.mark.parametrize("shape", TORCH_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_torch_batch_norm(shape, training):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = rng_for(10, len(shape), training)
    C = shape[1]
    x = rng.standard_normal(shape) * 3 + 2
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    y_t = F.batch_norm(
        torch.from_numpy(x), rm_t, rv_t, torch.from_numpy(w), torch.from_numpy(b),
        training=training, momentum=0.2, eps=1e-4,
    )
    y = reference.batch_norm(x, w, b, rm, rv, training=training, momentum=0.2, eps=1e-4)
    np.testing.assert_allclose(y, y_t.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, rm_t.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, rv_t.numpy(), rtol=1e-12)


@pytest.mark.parametrize("shape", TORCH_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_torch_gradients(shape, training):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = rng_for(11, len(shape), training)
    C = shape[1]
    x = rng.standard_normal(shape)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    G = rng.standard_normal(shape)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    y_t = F.batch_norm(
        xt, torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy()), wt, bt,
        training=training,
    )
    (y_t * torch.from_numpy(G)).sum().backward()

    if training:
        y, saved = reference.batch_norm_forward(x, w, b)
    else:
        y, saved = reference.batch_norm_forward(x, w, b, mean=rm, var=rv)
    g = reference.batch_norm_backward(G, x, w, saved, use_batch_stats=training)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.grad_input, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.grad_weight, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.grad_bias, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_torch_gradients_nhwc():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = rng_for(12)
    x = rng.standard_normal((2, 3, 2, 4))  # NHWC, C=4
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    G = rng.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    y_t = F.batch_norm(xt.permute(0, 3, 1, 2), None, None, wt, bt, training=True)
    (y_t.permute(0, 2, 3, 1) * torch.from_numpy(G)).sum().backward()
    y, saved = reference.batch_norm_forward(x, w, b, channel_axis=-1)
    g = reference.batch_norm_backward(G, x, w, saved, channel_axis=-1)
    np.testing.assert_allclose(y, y_t.permute(0, 2, 3, 1).detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.grad_input, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.grad_weight, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.grad_bias, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", TORCH_SHAPES)
def test_torch_cumulative_momentum_none(shape):
    torch = pytest.importorskip("torch")
    modules = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
               5: torch.nn.BatchNorm3d}
    C = shape[1]
    m = modules[len(shape)](C, momentum=None, eps=1e-3, dtype=torch.float64)
    rng = rng_for(13, len(shape))
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(rng.standard_normal(C)))
        m.bias.copy_(torch.from_numpy(rng.standard_normal(C)))
    w, b = m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()
    rm, rv = np.zeros(C), np.ones(C)
    nbt = np.array(0, dtype=np.int64)
    m.train()
    for step in range(3):
        x = rng.standard_normal(shape) * (step + 1) + step
        y_t = m(torch.from_numpy(x))
        y = reference.batch_norm(
            x, w, b, rm, rv, training=True, momentum=None, eps=1e-3, num_batches_tracked=nbt
        )
        np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rm, m.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv, m.running_var.numpy(), rtol=1e-12)
        assert int(nbt) == int(m.num_batches_tracked) == step + 1
    m.eval()
    x = rng.standard_normal(shape)
    y_t = m(torch.from_numpy(x))
    y = reference.batch_norm(x, w, b, rm, rv, training=False, momentum=None, eps=1e-3,
                             num_batches_tracked=nbt)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert int(nbt) == 3


def test_torch_one_value_per_channel_message():
    torch = pytest.importorskip("torch")
    x = np.ones((1, 3))
    with pytest.raises(ValueError) as ours:
        reference.batch_norm(x, training=True)
    with pytest.raises(ValueError) as theirs:
        torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True)
    prefix = "Expected more than 1 value per channel when training, got input size"
    assert str(ours.value).startswith(prefix)
    assert str(theirs.value).startswith(prefix)
