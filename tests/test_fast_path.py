"""The fast paths of bnc._core: whole calls for plain inputs.

C-contiguous aligned ndarrays of the right dtypes with plain int/float options
skip the generic argument handling and layout analysis (bnc/_core.pyx, "fast
paths"); anything else goes the generic way. Checked here: the fast path is
taken exactly where it should be, it gives the same bits as the generic path
(reached with the same values through an np.int64 channel_axis, which only the
generic path accepts) and the reference's results, and its one-loop running
statistics, invstd and float32 statistics reproduce NumPy bit for bit,
floating-point warnings included.
"""
import numpy as np
import pytest

import bnc
from bnc import _core
from bnc import reference as ref
from bnc.batchnorm import _apply_running_numpy
from conftest import (
    DTYPE_IDS,
    DTYPES,
    assert_close,
    bit_equal,
    f64,
    make_params,
    make_x,
    rng_for,
    stat_tol,
    tol,
)

# (shape, channel_axis): 2-D batches, NCHW, NHWC, C=1, inner=1, N=1, the
# smallest training batch, sizes on both sides of the C core's serial
# threshold (32768 elements), and C on both sides of the per-channel loops'
# GIL threshold (16384 channels)
SHAPES = [((16, 8), 1), ((2, 1), 1), ((1, 3, 2, 2), 1), ((4, 4, 4, 8), -1),
          ((5, 3), 0), ((3, 1, 7), 1), ((2, 3, 4, 5, 6), 2), ((64, 512), 1),
          ((8, 64, 8, 8), 1), ((8, 16, 16, 17), -1), ((3, 16383), 1), ((2, 16384), 1)]
SHAPE_IDS = ["2d", "2d-c1", "n1", "nhwc", "axis0", "c1", "5d", "2d-32k", "nchw-32k",
             "nhwc-34k", "c16383", "c16384"]


class Fast:
    """Context: asserts that exactly `n` calls inside took a fast path."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = _core.fast_path_calls()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            got = _core.fast_path_calls() - self.before
            assert got == self.n, f"{got} calls took a fast path, expected {self.n}"


def generic(channel_axis):
    """The same axis as a NumPy integer: the generic path only."""
    return np.int64(channel_axis)


def _case(shape, axis, dtype, key=""):
    rng = rng_for("fast", shape, axis, np.dtype(dtype).name, key)
    x = make_x(shape, dtype, rng, loc=2.0, scale=3.0)
    g = make_x(shape, dtype, rng)
    C = shape[axis]
    return x, g, make_params(C, dtype, rng)


def _same(a, b, what):
    assert bit_equal(a, b), f"{what}: fast and generic paths differ"


# ---------------------------------------------------------------------------
# every op, fast vs generic vs reference


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=SHAPE_IDS)
def test_forward_and_backward(shape, axis, dtype):
    x, g, (w, b, rm, rv) = _case(shape, axis, dtype)
    t, st = tol(dtype), stat_tol(dtype)
    for weight, bias in ((w, b), (None, None)):
        with Fast(1):
            y, saved = bnc.batch_norm_forward(x, weight, bias, channel_axis=axis)
        y2, saved2 = bnc.batch_norm_forward(x, weight, bias, channel_axis=generic(axis))
        _same(y, y2, "y")
        for name in saved._fields:
            _same(getattr(saved, name), getattr(saved2, name), name)
        assert type(saved) is bnc.BatchNormSaved
        y_ref, saved_ref = ref.batch_norm_forward(f64(x), f64(weight), f64(bias),
                                                  channel_axis=axis)
        assert_close(y, y_ref, t, "y")
        for name in saved._fields:
            assert_close(getattr(saved, name), getattr(saved_ref, name), st, name)

        for frozen in (False, True):
            if frozen:
                with Fast(1):
                    y, saved = bnc.batch_norm_forward(x, weight, bias, mean=rm, var=rv,
                                                      channel_axis=axis)
                y2, saved2 = bnc.batch_norm_forward(x, weight, bias, mean=rm, var=rv,
                                                    channel_axis=generic(axis))
                _same(y, y2, "frozen y")
                for name in saved._fields:
                    _same(getattr(saved, name), getattr(saved2, name), "frozen " + name)
                assert saved.mean is not rm and saved.var is not rv
            with Fast(1):
                grads = bnc.batch_norm_backward(g, x, weight, saved, channel_axis=axis,
                                                use_batch_stats=not frozen)
            grads2 = bnc.batch_norm_backward(g, x, weight, saved, channel_axis=generic(axis),
                                             use_batch_stats=not frozen)
            assert type(grads) is bnc.Grads
            for name in grads._fields:
                _same(getattr(grads, name), getattr(grads2, name), name)
            grads_ref = ref.batch_norm_backward(f64(g), f64(x), f64(weight),
                                                ref.BatchNormSaved(*map(f64, saved)),
                                                channel_axis=axis,
                                                use_batch_stats=not frozen)
            # terms of a batch-stats grad_input cancel for few values per
            # channel: errors are measured against the size of the terms too
            gnorm = np.linalg.norm(f64(g))
            term = gnorm * float(np.max(f64(saved.invstd)) * np.max(np.abs(f64(w))))
            assert_close(grads.grad_input, grads_ref.grad_input, 10 * t, "grad_input",
                         atol=10 * t * term)
            assert_close(grads.grad_weight, grads_ref.grad_weight, 10 * st, "grad_weight",
                         atol=10 * st * gnorm)
            assert_close(grads.grad_bias, grads_ref.grad_bias, 10 * st, "grad_bias",
                         atol=10 * st * gnorm)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=SHAPE_IDS)
def test_batch_norm(shape, axis, dtype):
    x, _, (w, b, rm, rv) = _case(shape, axis, dtype)
    t, st = tol(dtype), stat_tol(dtype)
    with Fast(1):
        y = bnc.batch_norm(x, w, b, rm, rv, channel_axis=axis)
    _same(y, bnc.batch_norm(x, w, b, rm, rv, channel_axis=generic(axis)), "inference")
    assert_close(y, ref.batch_norm(f64(x), f64(w), f64(b), f64(rm), f64(rv),
                                   channel_axis=axis), t, "inference")
    with Fast(1):
        y = bnc.batch_norm(x, w, b, training=True, channel_axis=axis)
    _same(y, bnc.batch_norm(x, w, b, training=True, channel_axis=generic(axis)), "train")

    kws = [{}, dict(momentum=0.3, correction=0), dict(decay=0.75), dict(momentum=1.0),
           dict(momentum=0.0)]
    for kw in kws:
        for nbt in (None, 5):
            a = [rm.copy(), rv.copy(), None if nbt is None else np.array(nbt, np.int64)]
            c = [rm.copy(), rv.copy(), None if nbt is None else np.array(nbt, np.int64)]
            with Fast(1):
                y = bnc.batch_norm(x, w, b, a[0], a[1], training=True, channel_axis=axis,
                                   num_batches_tracked=a[2], **kw)
            y2 = bnc.batch_norm(x, w, b, c[0], c[1], training=True,
                                channel_axis=generic(axis), num_batches_tracked=c[2], **kw)
            _same(y, y2, f"train y {kw}")
            for u, v, name in zip(a, c, ["running_mean", "running_var", "nbt"]):
                if u is not None:
                    _same(u, v, f"{name} {kw}")
            rm_ref, rv_ref = f64(rm), f64(rv)
            y_ref = ref.batch_norm(f64(x), f64(w), f64(b), rm_ref, rv_ref, training=True,
                                   channel_axis=axis, **kw)
            assert_close(y, y_ref, t, "train y")
            assert_close(a[0], rm_ref, st, "running_mean")
            assert_close(a[1], rv_ref, st, "running_var")
    # cumulative average: momentum=None with num_batches_tracked
    a = [rm.copy(), rv.copy(), np.array(3, np.int64)]
    c = [rm.copy(), rv.copy(), np.array(3, np.int64)]
    with Fast(1):
        bnc.batch_norm(x, w, b, a[0], a[1], training=True, momentum=None, channel_axis=axis,
                       num_batches_tracked=a[2])
    bnc.batch_norm(x, w, b, c[0], c[1], training=True, momentum=None,
                   channel_axis=generic(axis), num_batches_tracked=c[2])
    for u, v in zip(a, c):
        _same(u, v, "cumulative")
    assert int(a[2]) == 4
    rm_ref, rv_ref = f64(rm), f64(rv)
    ref.batch_norm(f64(x), f64(w), f64(b), rm_ref, rv_ref, training=True, momentum=None,
                   channel_axis=axis, num_batches_tracked=np.array(3, np.int64))
    assert_close(a[0], rm_ref, st, "cumulative running_mean")
    assert_close(a[1], rv_ref, st, "cumulative running_var")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=SHAPE_IDS)
def test_stats(shape, axis, dtype):
    x, _, _ = _case(shape, axis, dtype)
    with Fast(1):
        mean, var, count = bnc.batch_norm_stats(x, channel_axis=axis)
    mean2, var2, count2 = bnc.batch_norm_stats(x, channel_axis=generic(axis))
    _same(mean, mean2, "mean")
    _same(var, var2, "var")
    assert count == count2 and type(count) is int
    m_ref, v_ref, _ = ref.batch_norm_stats(f64(x), channel_axis=axis)
    assert_close(mean, m_ref, stat_tol(dtype))
    assert_close(var, v_ref, stat_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_out(dtype):
    x, g, (w, b, rm, rv) = _case((6, 5, 3), 1, dtype, "out")
    expected = bnc.batch_norm(x, w, b, rm, rv)
    out = np.full_like(x, np.nan)
    with Fast(1):
        y = bnc.batch_norm(x, w, b, rm, rv, out=out)
    assert y is out and bit_equal(out, expected)
    xc = x.copy()
    with Fast(1):
        y = bnc.batch_norm(xc, w, b, rm, rv, out=xc)  # in place
    assert y is xc and bit_equal(xc, expected)
    y_train, saved = bnc.batch_norm_forward(x, w, b)
    xc = x.copy()
    with Fast(1):
        y, saved2 = bnc.batch_norm_forward(xc, w, b, out=xc)
    assert y is xc and bit_equal(xc, y_train)
    out = np.empty_like(x)
    with Fast(1):
        dx = bnc.batch_norm_backward(g, x, w, saved, out=out).grad_input
    assert dx is out
    _same(dx, bnc.batch_norm_backward(g, x, w, saved).grad_input, "grad_input")


def test_thread_counts_same_bits(restore_threads):
    x, g, (w, b, rm, rv) = _case((8, 64, 8, 8), 1, np.float32, "threads")
    base_y, base_saved = bnc.batch_norm_forward(x, w, b, n_threads=1)
    for kw in (dict(n_threads=2), dict(n_threads=3), {}):
        with Fast(1):
            y, saved = bnc.batch_norm_forward(x, w, b, **kw)
        _same(y, base_y, f"y {kw}")
    for n in (1, 2, 3):
        bnc.set_num_threads(n)
        with Fast(1):
            y, saved = bnc.batch_norm_forward(x, w, b)
        _same(y, base_y, f"set_num_threads({n})")
    with bnc.num_threads(2), Fast(1):
        y, saved = bnc.batch_norm_forward(x, w, b)
    _same(y, base_y, "num_threads(2)")


# ---------------------------------------------------------------------------
# where the fast path stops: each of these goes the generic way, with the
# same results (or the documented error)


def _unaligned(a):
    raw = np.empty(a.nbytes + 1, np.uint8)
    u = raw[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    return u


class Sub(np.ndarray):
    pass


def _generic_calls():
    """(label, function of (x, g, w, b, rm, rv) doing one call) that the fast
    path must leave to the generic one."""
    return [
        ("x-F-order", lambda x, g, w, b, rm, rv: bnc.batch_norm(np.asfortranarray(x), w, b, rm, rv)),
        ("x-strided", lambda x, g, w, b, rm, rv: bnc.batch_norm(np.repeat(x, 2, 0)[::2], w, b, rm, rv)),
        ("x-unaligned", lambda x, g, w, b, rm, rv: bnc.batch_norm(_unaligned(x), w, b, rm, rv)),
        ("x-byteswapped", lambda x, g, w, b, rm, rv: bnc.batch_norm(x.astype(x.dtype.newbyteorder()), w, b, rm, rv)),
        ("x-subclass", lambda x, g, w, b, rm, rv: bnc.batch_norm(x.view(Sub), w, b, rm, rv)),
        ("x-list", lambda x, g, w, b, rm, rv: bnc.batch_norm(x.tolist(), w.astype(np.float64), b.astype(np.float64), rm.astype(np.float64), rv.astype(np.float64))),
        ("weight-list", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w.tolist(), b, rm, rv)),
        ("weight-strided", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, np.repeat(w, 2)[::2], b, rm, rv)),
        ("eps-int", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm, rv, eps=1)),
        ("eps-np", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm, rv, eps=np.float64(1e-5))),
        ("axis-np", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm, rv, channel_axis=np.int64(1))),
        ("threads-neg", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm, rv, n_threads=-1)),
        ("threads-np", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm, rv, n_threads=np.int64(2))),
        ("training-np", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm.copy(), rv.copy(), training=np.bool_(True))),
        ("momentum-int", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm.copy(), rv.copy(), training=True, momentum=1)),
        ("decay-int", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm.copy(), rv.copy(), training=True, decay=0)),
        ("correction-np", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm.copy(), rv.copy(), training=True, correction=np.int64(1))),
        ("nbt-int32", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm.copy(), rv.copy(), training=True, num_batches_tracked=np.array(1, np.int32))),
        ("running-strided", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, np.repeat(rm, 2)[::2], np.repeat(rv, 2)[::2], training=True)),
        ("out-F-order", lambda x, g, w, b, rm, rv: bnc.batch_norm(x, w, b, rm, rv, out=np.empty(x.shape, x.dtype, order="F"))),
        ("saved-list", lambda x, g, w, b, rm, rv: bnc.batch_norm_backward(g, x, w, list(bnc.batch_norm_forward(x, w, b)[1]))),
        ("use_batch_stats-int", lambda x, g, w, b, rm, rv: bnc.batch_norm_backward(g, x, w, bnc.batch_norm_forward(x, w, b)[1], use_batch_stats=1)),
        ("grad_out-F-order", lambda x, g, w, b, rm, rv: bnc.batch_norm_backward(np.asfortranarray(g), x, w, bnc.batch_norm_forward(x, w, b)[1])),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("label,call", _generic_calls(), ids=[c[0] for c in _generic_calls()])
def test_generic_path_is_taken(label, call, dtype):
    x, g, (w, b, rm, rv) = _case((6, 4, 5), 1, dtype, "boundary")
    before = _core.fast_path_calls()
    fast_ones = 1 if label in ("saved-list", "use_batch_stats-int", "grad_out-F-order") else 0
    result = call(x, g, w, b, rm, rv)  # the forward that makes `saved` is fast
    assert _core.fast_path_calls() - before == fast_ones
    expected = call(x, g, w, b, rm, rv)  # deterministic either way
    if isinstance(result, tuple):
        result, expected = result[0], expected[0]
    assert bit_equal(result, expected)


def test_float16_weights_generic():
    x, _, (w, b, rm, rv) = _case((6, 4, 5), 1, np.float16, "f16w")
    with Fast(0):
        y = bnc.batch_norm(x, w.astype(np.float16), b, rm, rv)
    _same(y, bnc.batch_norm(x, w.astype(np.float16).astype(np.float32), b, rm, rv), "f16 w")


def test_out_overlap_is_refused_not_fast():
    x, g, (w, b, rm, rv) = _case((6, 4, 5), 1, np.float32, "overlap")
    buf = np.zeros(x.size + 4, np.float32)
    out = buf[2:2 + x.size].reshape(x.shape)
    xs = buf[:x.size].reshape(x.shape)
    xs[...] = x
    with Fast(0), pytest.raises(ValueError, match="out"):
        bnc.batch_norm(xs, w, b, rm, rv, out=out)
    _, saved = bnc.batch_norm_forward(x, w, b)
    xc = x.copy()
    with Fast(0), pytest.raises(ValueError, match="out"):
        bnc.batch_norm_backward(g, xc, w, saved, out=xc)  # out=x is for the forward only


def test_errors_go_generic():
    """Bad values are left to the generic path, which raises its error."""
    x, g, (w, b, rm, rv) = _case((6, 4, 5), 1, np.float32, "errors")
    saved = bnc.batch_norm_forward(x, w, b)[1]
    with Fast(0):
        with pytest.raises(ValueError, match="eps"):
            bnc.batch_norm(x, w, b, rm, rv, eps=0.0)
        with pytest.raises(ValueError, match="eps"):
            bnc.batch_norm_forward(x, w, b, eps=float("inf"))
        with pytest.raises(np.exceptions.AxisError, match="channel_axis"):
            bnc.batch_norm(x, w, b, rm, rv, channel_axis=3)
        with pytest.raises(ValueError, match="momentum"):
            bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=1.5)
        with pytest.raises(ValueError, match="momentum"):
            bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=float("nan"))
        with pytest.raises(ValueError, match="decay"):
            bnc.batch_norm(x, w, b, rm, rv, training=True, decay=-0.5)
        with pytest.raises(ValueError, match="correction"):
            bnc.batch_norm(x, w, b, rm, rv, training=True, correction=-1)
        with pytest.raises(ValueError, match="n_threads"):
            bnc.batch_norm(x, w, b, rm, rv, n_threads=0)
        with pytest.raises(ValueError, match="Expected more than 1 value"):
            bnc.batch_norm(x[:1, :, :1], w, b, training=True)
        with pytest.raises(ValueError, match="read-only"):
            ro = rm.copy()
            ro.flags.writeable = False
            bnc.batch_norm(x, w, b, ro, rv.copy(), training=True)
        with pytest.raises(ValueError, match="overlap"):
            r = np.ones(8, np.float32)
            bnc.batch_norm(x, w, b, r[:4], r[2:6], training=True)
        with pytest.raises(ValueError, match="weight"):
            bnc.batch_norm_forward(x, w[:3], b)
        with pytest.raises(ValueError, match="grad_out"):
            bnc.batch_norm_backward(g[:3], x, w, saved)
        with pytest.raises(TypeError, match="grad_out"):
            bnc.batch_norm_backward(g.astype(np.float64), x, w, saved)
        with pytest.raises(ValueError, match="count|correction"):
            bnc.batch_norm(x[:1, :, :2], w, b, rm.copy(), rv.copy(), training=True,
                           correction=2)
        with pytest.raises(ValueError, match="num_batches_tracked"):
            bnc.batch_norm(x, w, b, rm.copy(), rv.copy(), training=True, momentum=None)


def test_num_batches_tracked_edges():
    """Values whose increment NumPy wraps, or whose cumulative factor is not in
    (0, 1], go the generic way and give its results."""
    x, _, (w, b, rm, rv) = _case((6, 4, 5), 1, np.float32, "nbt")
    big = np.iinfo(np.int64).max
    for start, kw, after in ((big, {}, -big - 1), (-5, dict(momentum=None), -4)):
        nbt = np.array(start, np.int64)
        a, c = rm.copy(), rv.copy()
        with Fast(0):
            bnc.batch_norm(x, w, b, a, c, training=True, num_batches_tracked=nbt, **kw)
        assert int(nbt) == after
    with Fast(0), pytest.raises(ZeroDivisionError):  # 1 / num_batches_tracked, as before
        bnc.batch_norm(x, w, b, rm.copy(), rv.copy(), training=True, momentum=None,
                       num_batches_tracked=np.array(-1, np.int64))


# ---------------------------------------------------------------------------
# the one-loop updates against NumPy, bit for bit


def _numpy_update(rm, rv, mean, var, count, m, corr, nbt):
    rm, rv = rm.copy(), rv.copy()
    nbt = None if nbt is None else nbt.copy()
    _apply_running_numpy(rm, rv, mean, var, count, m, corr, nbt)
    return rm, rv, nbt


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_running_update_bits(dtype):
    rng = rng_for("running-bits", np.dtype(dtype).name)
    huge = 1e20 if dtype == np.float32 else 1e150
    for C, scale in ((1000, 1e-3), (1000, 1.0), (1000, 1e4), (1000, huge), (20000, 1.0)):
        rm = (scale * rng.standard_normal(C)).astype(dtype)
        rv = (scale * rng.uniform(0, 2, C)).astype(dtype)
        mean = (scale * rng.standard_normal(C)).astype(dtype)
        var = (scale * rng.uniform(0, 2, C)).astype(dtype)
        rm[:3] = 0
        mean[3:6] = 0
        mean[6] = -0.0
        for m, count, corr, nbt in ((0.1, 17, 1, None), (0.5, 2, 1, 7), (0.0, 5, 0, None),
                                    (1.0, 5, 2, None), (1 / 3, 10**6 + 1, 1, None),
                                    (None, 9, 1, 2)):
            n = None if nbt is None else np.array(nbt, np.int64)
            expected = _numpy_update(rm, rv, mean, var, count, m, corr, n)
            a, c = rm.copy(), rv.copy()
            assert _core.apply_running_fast(a, c, mean, var, count, m, corr, n)
            _same(a, expected[0], f"running_mean {scale} {m}")
            _same(c, expected[1], f"running_var {scale} {m}")
            if n is not None:
                _same(n, expected[2], "num_batches_tracked")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_running_update_leaves_exceptions_to_numpy(dtype):
    """Where a step could overflow, underflow or be invalid, the loop declines
    (writing nothing) and NumPy reports it as np.errstate says."""
    info = np.finfo(dtype)
    C = 4
    ones = np.ones(C, dtype)
    cases = [  # (rm, rv, mean, var, m)
        (ones, np.full(C, info.max, dtype), ones, np.full(C, info.max, dtype), 0.5),  # overflow
        (ones, ones, np.full(C, info.tiny, dtype), ones, 0.1),  # underflow
        (ones, ones, ones, np.full(C, np.inf, dtype), 0.0),  # inf * 0
        (ones, ones, np.full(C, np.nan, dtype), ones, 0.1),  # NaN propagates, no warning
        (np.full(C, info.smallest_subnormal, dtype), ones, ones, ones, 0.1),
        (ones, ones, ones, ones, 1e-320),  # m subnormal in float64, 0 in float32
    ]
    for rm, rv, mean, var, m in cases:
        a, c = rm.copy(), rv.copy()
        assert not _core.apply_running_fast(a, c, mean, var, 5, m, 1, None)
        assert bit_equal(a, rm) and bit_equal(c, rv), "nothing written"
    # through batch_norm: the same warning as NumPy's. A mean of `tiny` makes
    # mean * momentum underflow: NumPy warns under np.errstate(under="warn")
    x = np.array([[2 * info.tiny, 1.0], [0.0, -1.0]], dtype)
    rm = np.zeros(2, dtype)
    with np.errstate(under="warn"), Fast(1):
        with pytest.warns(RuntimeWarning, match="underflow"):
            bnc.batch_norm(x, None, None, rm, np.ones(2, dtype), training=True)
    assert rm[0] == dtype(info.tiny) * dtype(0.1)
    if dtype == np.float32:  # a finite batch variance of 0.9 * max overflows rv
        a = np.sqrt(0.9 * float(info.max) * 10)
        x = np.zeros((10, 2), dtype)
        x[0, 1] = a
        rv = np.full(2, info.max * 0.95, dtype)
        with Fast(1):
            with pytest.warns(RuntimeWarning, match="overflow"):
                bnc.batch_norm(x, None, None, np.zeros(2, dtype), rv, training=True,
                               correction=9)
        assert np.isinf(rv[1]) and rv[0] == dtype(info.max * 0.95) * dtype(0.9)


def test_update_running_stats_aliasing_keeps_numpy_semantics():
    rng = rng_for("alias")
    rm = rng.standard_normal(6).astype(np.float32)
    rv = rng.uniform(1, 2, 6).astype(np.float32)
    a, c = rm.copy(), rv.copy()
    bnc.update_running_stats(a, c, a, c, 10, momentum=0.25)  # mean is running_mean
    e_rm, e_rv = rm.copy(), rv.copy()
    _apply_running_numpy(e_rm, e_rv, e_rm, e_rv, 10, 0.25, 1, None)
    _same(a, e_rm, "aliased running_mean")
    _same(c, e_rv, "aliased running_var")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
def test_frozen_invstd_bits_and_warnings(dtype):
    x, _, (w, b, rm, rv) = _case((6, 4, 5), 1, dtype, "invstd")
    sd = rv.dtype
    for var in (rv, np.array([0.0, 1e-30, 3e30, 1.0], sd)):
        for eps in (1e-5, 1e-3, 1e-30):
            with Fast(1):
                _, saved = bnc.batch_norm_forward(x, w, b, mean=rm, var=var, eps=eps)
            expected = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(sd)
            _same(saved.invstd, expected, f"invstd eps={eps}")
    # NumPy's warnings where a step raises a floating-point exception
    eps = 2.0**-10
    for bad, match in ((-1.0, "invalid"), (-eps, "divide")):
        var = np.array([1.0, bad, 1.0, 1.0], sd)
        with Fast(0):
            with pytest.warns(RuntimeWarning, match=match):
                bnc.batch_norm_forward(x, w, b, mean=rm, var=var, eps=eps)
    if sd == np.float32:
        var = np.zeros(4, sd)
        with Fast(0):
            with pytest.warns(RuntimeWarning, match="overflow"):
                bnc.batch_norm_forward(x, w, b, mean=rm, var=var, eps=1e-100)


def test_stats_narrowing_warns_like_numpy():
    x = np.array([[3e19, 0.0], [-3e19, 0.0]], np.float32)  # var 9e38 > float32 max
    with Fast(1), pytest.warns(RuntimeWarning, match="overflow"):
        mean, var, _ = bnc.batch_norm_stats(x)
    assert np.isinf(var[0]) and var[1] == 0
    with pytest.warns(RuntimeWarning, match="overflow"):
        _, var2, _ = bnc.batch_norm_stats(x, channel_axis=generic(1))
    _same(var, var2, "var")


# ---- layer norm and RMS norm ------------------------------------------------

LN_SHAPES = [((64, 64), -1), ((3, 5, 8), 1), ((2, 7), 0), ((4, 1), -1), ((16, 384), -1)]


def _norm_case(key, shape, dtype, pshape):
    """x (near 1), dy, and weight/bias of shape pshape in the statistics dtype
    (float64 for float64 x, else float32); rng keyed by `key`."""
    rng = rng_for(*key)
    x = make_x(shape, dtype, rng, loc=1.0)
    dy = make_x(shape, dtype, rng)
    sdt = np.float64 if dtype == np.float64 else np.float32
    return x, dy, (rng.random(pshape) + 0.5).astype(sdt), rng.standard_normal(pshape).astype(sdt)


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,axis", LN_SHAPES)
def test_layer_norm_fast_matches_generic(shape, axis, dtype, rms):
    sdt = np.float64 if dtype == np.float64 else np.float32
    x, dy, w, b = _norm_case(("ln-fast", shape, axis, np.dtype(dtype).name, rms), shape, dtype,
                             shape[axis % len(shape):])
    if rms:
        def fwd(ax, out=None):
            return bnc.rms_norm_forward(x, w, axis=ax, out=out, n_threads=1)

        def bwd(s, ax, out=None):
            return bnc.rms_norm_backward(dy, x, w, s, axis=ax, out=out, n_threads=1)
    else:
        def fwd(ax, out=None):
            return bnc.layer_norm_forward(x, w, b, axis=ax, out=out, n_threads=1)

        def bwd(s, ax, out=None):
            return bnc.layer_norm_backward(dy, x, w, s, axis=ax, out=out, n_threads=1)
    with Fast(2):
        y, s = fwd(axis)
        g = bwd(s, axis)
    with Fast(0):  # an np.int64 axis: the generic path, same bits
        yg, sg = fwd(np.int64(axis))
        gg = bwd(s, np.int64(axis))
    assert bit_equal(y, yg) and all(bit_equal(a, c) for a, c in zip(s, sg))
    assert all(bit_equal(a, c) for a, c in zip(g, gg) if a is not None)
    assert y.shape == x.shape and y.dtype == x.dtype and s[-1].shape == shape[:axis % len(shape)]
    yr = (ref.rms_norm(x, w, axis=axis, eps=float(np.finfo(sdt).eps)) if rms
          else ref.layer_norm(x, w, b, axis=axis))
    assert_close(y, yr, 10 * tol(dtype), "y")
    out = np.empty_like(x)
    with Fast(2):
        assert fwd(axis, out)[0] is out and bit_equal(out, y)
        assert bwd(s, axis, out)[0] is out and bit_equal(out, g[0])


def test_layer_norm_fast_path_leaves_the_rest_generic():
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    w = np.ones(16, np.float32)
    y = bnc.layer_norm(x, w)
    with Fast(0):
        assert bit_equal(bnc.layer_norm(x, list(w)), y)           # not an ndarray
        assert bit_equal(bnc.layer_norm(x, w, eps=np.float32(1e-5)), y)  # not a float
        assert bit_equal(bnc.layer_norm(np.asfortranarray(x), w), y)  # not C-contiguous
        bnc.layer_norm(x[0], w)                                   # 1-D x
        with pytest.raises(ValueError, match="eps"):
            bnc.layer_norm(x, w, eps=0.0)
        with pytest.raises(ValueError, match="weight"):
            bnc.layer_norm(x, np.ones(15, np.float32))
        with pytest.raises(TypeError, match="bias"):
            bnc.rms_norm(x, w, bias=w)
        with pytest.raises(ValueError, match="out"):
            bnc.layer_norm(x, w, out=w.reshape(1, 16).repeat(8, 0)[:, :8])
        y2 = x.copy()
        with pytest.raises(ValueError, match="out"):  # out overlapping the weight
            bnc.layer_norm(y2, y2[0], out=y2)


# ---- group norm and instance norm ---------------------------------------------

GN_SHAPES = [((2, 8, 5, 5), 1, 4), ((2, 7, 6), -1, 3), ((3, 4), 1, 2), ((2, 3, 4, 4), 1, None),
             ((2, 4, 4, 6), -1, None), ((8, 256, 14, 14), 1, 32)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,axis,groups", GN_SHAPES)
def test_group_norm_fast_matches_generic(shape, axis, groups, dtype):
    C = shape[axis]
    sdt = np.float64 if dtype == np.float64 else np.float32
    x, dy, w, b = _norm_case(("gn-fast", shape, axis, np.dtype(dtype).name, groups), shape,
                             dtype, C)
    inst = groups is None

    def fwd(ax, g, out=None):
        if inst:
            return bnc.instance_norm_forward(x, w, b, channel_axis=ax, out=out, n_threads=1)
        return bnc.group_norm_forward(x, g, w, b, channel_axis=ax, out=out, n_threads=1)

    def bwd(s, ax, g, out=None):
        if inst:
            return bnc.instance_norm_backward(dy, x, w, s, channel_axis=ax, out=out, n_threads=1)
        return bnc.group_norm_backward(dy, x, g, w, s, channel_axis=ax, out=out, n_threads=1)

    with Fast(2):
        y, s = fwd(axis, groups)
        g = bwd(s, axis, groups)
    gg_ = None if inst else np.int64(groups)
    with Fast(0):  # np.int64 options: the generic path, same bits
        yg, sg = fwd(np.int64(axis), gg_)
        gg = bwd(s, np.int64(axis), gg_)
    assert bit_equal(y, yg) and all(bit_equal(a, c) for a, c in zip(s, sg))
    assert all(bit_equal(a, c) for a, c in zip(g, gg))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert s.mean.shape == (shape[0], C if inst else groups) and s.mean.dtype == sdt
    if inst:
        yr, _ = ref.instance_norm_forward(x, w, b, channel_axis=axis)
        gr = ref.instance_norm_backward(dy, x, w, s, channel_axis=axis)
    else:
        yr, _ = ref.group_norm_forward(x, groups, w, b, channel_axis=axis)
        gr = ref.group_norm_backward(dy, x, groups, w, s, channel_axis=axis)
    assert_close(y, yr, 10 * tol(dtype), "y")
    assert_close(g.grad_weight, gr.grad_weight, 10 * tol(dtype), "grad_weight",
                 atol=10 * tol(dtype) * float(np.abs(gr.grad_weight).max()))
    out = np.empty_like(x)
    with Fast(2):
        assert fwd(axis, groups, out)[0] is out and bit_equal(out, y)
        assert bwd(s, axis, groups, out)[0] is out and bit_equal(out, g[0])
    inplace = x.copy()
    with Fast(1):  # out=x: in place
        if inst:
            r = bnc.instance_norm_forward(inplace, w, b, channel_axis=axis, out=inplace,
                                          n_threads=1)[0]
        else:
            r = bnc.group_norm_forward(inplace, groups, w, b, channel_axis=axis, out=inplace,
                                       n_threads=1)[0]
        assert r is inplace and bit_equal(inplace, y)


def test_group_norm_fast_path_leaves_the_rest_generic():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = np.ones(8, np.float32)
    y, s = bnc.group_norm_forward(x, 2, w)
    g = bnc.group_norm_backward(dy, x, 2, w, s)
    y16 = bnc.group_norm(x.astype(np.float16), 2, (w / 3).astype(np.float16).astype(np.float32))
    with Fast(0):
        assert bit_equal(bnc.group_norm(x, 2, list(w)), y)              # not an ndarray
        assert bit_equal(bnc.group_norm(x, 2, w, eps=np.float32(1e-5)), y)  # not a float
        assert bit_equal(bnc.group_norm(np.asfortranarray(x), 2, w), y)  # not C-contiguous
        x16, w16 = x.astype(np.float16), (w / 3).astype(np.float16)  # float16 weight
        assert bit_equal(bnc.group_norm(x16, 2, w16), y16)
        gl = bnc.group_norm_backward(dy, x, 2, w, (s.mean.tolist(), s.invstd))  # a list
        assert all(bit_equal(a, c) for a, c in zip(gl, g))
        with pytest.raises(TypeError, match="num_groups"):
            bnc.group_norm(x, True, w)
        with pytest.raises(TypeError, match="num_groups"):
            bnc.group_norm(x, 2.0, w)
        with pytest.raises(ValueError, match="num_groups"):
            bnc.group_norm(x, 3, w)
        with pytest.raises(ValueError, match="num_groups"):
            bnc.group_norm(x, 0, w)
        with pytest.raises(ValueError, match="channel_axis"):
            bnc.group_norm(x, 2, w, channel_axis=2)
        with pytest.raises(ValueError, match="eps"):
            bnc.group_norm(x, 2, w, eps=0.0)
        with pytest.raises(ValueError, match="weight"):
            bnc.group_norm(x, 2, np.ones(7, np.float32))
        with pytest.raises(ValueError, match="grad_out"):
            bnc.group_norm_backward(dy[:2], x, 2, w, s)
        with pytest.raises(ValueError, match="out"):  # backward: out=x is refused
            bnc.group_norm_backward(dy, x, 2, w, s, out=x)
        y2 = np.empty((8, 8, 1, 1), np.float32)
        with pytest.raises(ValueError, match="out"):  # out overlapping the weight
            bnc.group_norm(y2, 2, y2.reshape(-1)[:8], out=y2)
        with pytest.raises(ValueError, match="mean"):
            bnc.group_norm_backward(dy, x, 2, w, (s.mean[:, :1], s.invstd))
