"""Memory layouts: C/F order, slices, steps, negative strides, transposes,
channels-last views, unaligned data; out= (also non-contiguous and in place)
and the layout of the returned arrays (that of np.empty_like(x))."""

import numpy as np
import pytest

import bnc
from bnc import reference as ref
from conftest import (
    LAYOUTS,
    as_layout,
    assert_close,
    assert_unchanged,
    f64,
    make_params,
    make_x,
    norm_axis,
    ref_eval,
    ref_train,
    rng_for,
    snapshot,
    stat_dtype,
    stat_tol,
    tol,
)

LCASES = [((3, 4, 5, 6), 1), ((3, 5, 6, 4), -1), ((6, 5), 1), ((2, 3, 4, 5, 2), 2)]
LCASE_IDS = ["nchw", "nhwc", "2d", "5d-ax2"]
LDTYPES = [np.float32, np.float64, np.float16]
LDTYPE_IDS = ["f32", "f64", "f16"]

layouts = pytest.mark.parametrize("layout", LAYOUTS)
lcases = pytest.mark.parametrize("shape,channel_axis", LCASES, ids=LCASE_IDS)
ldtypes = pytest.mark.parametrize("dtype", LDTYPES, ids=LDTYPE_IDS)


def _data(shape, channel_axis, dtype, *key):
    rng = rng_for("layouts", shape, channel_axis, np.dtype(dtype).name, *key)
    base = make_x(shape, dtype, rng, loc=0.5, scale=2.0)
    C = shape[norm_axis(channel_axis, len(shape))]
    return base, make_params(C, dtype, rng), rng


@ldtypes
@lcases
@layouts
def test_train(layout, shape, channel_axis, dtype):
    base, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype)
    x = as_layout(base, layout, channel_axis)
    copies = snapshot(x, w, b)
    y_ref, rm_ref, rv_ref, _ = ref_train(base, w, b, rm, rv, channel_axis=channel_axis)
    y = bnc.batch_norm(x, w, b, rm, rv, training=True, channel_axis=channel_axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.strides == np.empty_like(x).strides, "output layout must be np.empty_like(x)'s"
    assert_close(y, y_ref, tol(dtype), "y")
    assert_close(rm, rm_ref, stat_tol(dtype), "running_mean")
    assert_close(rv, rv_ref, stat_tol(dtype), "running_var")
    assert_unchanged([x, w, b], copies, ["x", "weight", "bias"])


@ldtypes
@lcases
@layouts
def test_eval(layout, shape, channel_axis, dtype):
    base, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype)
    x = as_layout(base, layout, channel_axis)
    copies = snapshot(x, w, b, rm, rv)
    y = bnc.batch_norm(x, w, b, rm, rv, channel_axis=channel_axis)
    assert y.strides == np.empty_like(x).strides
    assert_close(y, ref_eval(base, w, b, rm, rv, channel_axis=channel_axis), tol(dtype), "y")
    assert_unchanged([x, w, b, rm, rv], copies)


@ldtypes
@lcases
@layouts
def test_forward_backward_stats(layout, shape, channel_axis, dtype):
    base, (w, b, rm, rv), rng = _data(shape, channel_axis, dtype)
    gbase = make_x(shape, dtype, rng)
    x = as_layout(base, layout, channel_axis)
    g = as_layout(gbase, layout, channel_axis)
    copies = snapshot(x, g, w, b)

    mean, var, count = bnc.batch_norm_stats(x, channel_axis=channel_axis)
    mref, vref, _ = ref.batch_norm_stats(f64(base), channel_axis=channel_axis)
    assert_close(mean, mref, stat_tol(dtype), "mean")
    assert_close(var, vref, stat_tol(dtype), "var")

    for frozen in (False, True):
        m, v = (rm, rv) if frozen else (None, None)
        y_ref, saved_ref = ref.batch_norm_forward(f64(base), f64(w), f64(b), mean=f64(m),
                                                  var=f64(v), eps=1e-5,
                                                  channel_axis=channel_axis)
        gi_ref, gw_ref, gb_ref = ref.batch_norm_backward(f64(gbase), f64(base), f64(w),
                                                         saved_ref, channel_axis=channel_axis,
                                                         use_batch_stats=not frozen)
        y, saved = bnc.batch_norm_forward(x, w, b, mean=m, var=v, channel_axis=channel_axis)
        assert y.strides == np.empty_like(x).strides
        assert_close(y, y_ref, tol(dtype), "y")
        gi, gw, gb = bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis,
                                             use_batch_stats=not frozen)
        assert gi.strides == np.empty_like(x).strides
        assert_close(gi, gi_ref, tol(dtype), "grad_input")
        assert_close(gw, gw_ref, 10 * stat_tol(dtype), "grad_weight")
        assert_close(gb, gb_ref, 10 * stat_tol(dtype), "grad_bias")
    assert_unchanged([x, g, w, b], copies, ["x", "grad_out", "weight", "bias"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_nhwc_buffer_viewed_as_nchw(dtype):
    """An NHWC buffer transposed to NCHW, channel_axis=1: NHWC output, same values."""
    rng = rng_for("nhwc-view", np.dtype(dtype).name)
    buf = make_x((4, 6, 7, 5), dtype, rng)  # N, H, W, C in memory
    x = buf.transpose(0, 3, 1, 2)  # logical NCHW
    w, b, rm, rv = make_params(5, dtype, rng)
    y = bnc.batch_norm(x, w, b, training=True)
    assert y.strides == np.empty_like(x).strides
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous, "NHWC input gives NHWC output"
    y_nhwc = bnc.batch_norm(buf, w, b, training=True, channel_axis=-1)
    assert_close(y, ref_train(x, w, b, None, None)[0], tol(dtype))
    assert_close(y.transpose(0, 2, 3, 1), y_nhwc, tol(dtype))
    y = bnc.batch_norm(x, w, b, rm, rv)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    assert_close(y, ref_eval(x, w, b, rm, rv), tol(dtype))


@pytest.mark.parametrize("order", ["C", "F"])
def test_output_order_follows_input(order):
    x = np.asarray(rng_for("order").standard_normal((3, 4, 5)), order=order)
    y = bnc.batch_norm(x, training=True)
    assert y.flags.c_contiguous == (order == "C")
    assert y.flags.f_contiguous == (order == "F")


# ---------------------------------------------------------------------------
# out=

SENTINEL = 1234.5


def _out_buffer(shape, dtype, kind, channel_axis=1):
    """(out, buf): out is a view of buf (filled with SENTINEL) in layout `kind`."""
    nd = len(shape)
    if kind == "C":
        buf = np.full(shape, SENTINEL, dtype)
        return buf, buf
    if kind == "F":
        buf = np.full(shape, SENTINEL, dtype, order="F")
        return buf, buf
    if kind == "step_last":
        big = list(shape)
        big[-1] *= 2
        buf = np.full(big, SENTINEL, dtype)
        return buf[..., ::2], buf
    if kind == "sliced_mid":
        big = list(shape)
        ax = 2 if nd > 2 else nd - 1
        big[ax] += 2
        buf = np.full(big, SENTINEL, dtype)
        idx = [slice(None)] * nd
        idx[ax] = slice(1, -1)
        return buf[tuple(idx)], buf
    if kind == "reversed_first":
        buf = np.full(shape, SENTINEL, dtype)
        return buf[::-1], buf
    if kind == "channels_last":
        ca = norm_axis(channel_axis, nd)
        moved = list(shape)
        moved.append(moved.pop(ca))
        buf = np.full(moved, SENTINEL, dtype)
        return np.moveaxis(buf, -1, ca), buf
    if kind == "unaligned":
        itemsize = np.dtype(dtype).itemsize
        n = int(np.prod(shape))
        raw = np.zeros(n * itemsize + itemsize, np.uint8)
        out = raw[1:1 + n * itemsize].view(dtype).reshape(shape)
        out[...] = SENTINEL
        return out, out
    raise AssertionError(kind)


OUT_KINDS = ["C", "F", "step_last", "sliced_mid", "reversed_first", "channels_last", "unaligned"]


def _check_gaps(out, buf):
    """Everything of buf outside the view out still holds SENTINEL."""
    if out is buf or out.base is None:
        return
    saved = out.copy()
    out[...] = SENTINEL
    assert np.all(buf == SENTINEL), "wrote outside the out= view"
    out[...] = saved


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("shape,channel_axis", [((3, 4, 5, 6), 1), ((3, 5, 6, 4), -1),
                                                ((6, 5), 1)], ids=["nchw", "nhwc", "2d"])
@pytest.mark.parametrize("kind", OUT_KINDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_out(kind, shape, channel_axis, dtype, training):
    base, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype, "out")
    x = base.copy()
    out, buf = _out_buffer(shape, dtype, kind, channel_axis)
    if training:
        y_ref = ref_train(x, w, b, rm, rv, channel_axis=channel_axis)[0]
    else:
        y_ref = ref_eval(x, w, b, rm, rv, channel_axis=channel_axis)
    res = bnc.batch_norm(x, w, b, rm, rv, training=training, channel_axis=channel_axis, out=out)
    assert res is out
    assert_close(out, y_ref, tol(dtype), "out")
    _check_gaps(out, buf)
    assert np.array_equal(x, base)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", OUT_KINDS)
def test_out_forward_backward(kind, dtype):
    shape = (3, 4, 5, 6)
    base, (w, b, rm, rv), rng = _data(shape, 1, dtype, "out-fb")
    g = make_x(shape, dtype, rng)
    out, buf = _out_buffer(shape, dtype, kind)
    y, saved = bnc.batch_norm_forward(base, w, b, out=out)
    assert y is out
    y_ref, saved_ref = ref.batch_norm_forward(f64(base), f64(w), f64(b), mean=None, var=None,
                                              eps=1e-5, channel_axis=1)
    assert_close(out, y_ref, tol(dtype))
    _check_gaps(out, buf)
    out, buf = _out_buffer(shape, dtype, kind)
    grads = bnc.batch_norm_backward(g, base, w, saved, out=out)
    assert grads.grad_input is out
    gi_ref = ref.batch_norm_backward(f64(g), f64(base), f64(w), saved_ref, channel_axis=1,
                                     use_batch_stats=True)[0]
    assert_close(out, gi_ref, tol(dtype))
    _check_gaps(out, buf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("layout", ["C", "F", "sliced_mid", "step_first", "step_last",
                                    "reversed_first", "reversed_last", "channels_last",
                                    "transposed", "unaligned"])
@pytest.mark.parametrize("shape,channel_axis", [((3, 4, 5, 6), 1), ((3, 5, 6, 4), -1),
                                                ((6, 5), 1)], ids=["nchw", "nhwc", "2d"])
def test_inplace_inference(layout, shape, channel_axis, dtype):
    base, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype, "inplace")
    x = as_layout(base, layout, channel_axis)
    y_ref = ref_eval(base, w, b, rm, rv, channel_axis=channel_axis)
    # as_layout fills the gaps of the underlying buffer with NaN
    owner = x.base if x.base is not None and x.base.dtype == x.dtype else None
    gaps = 0 if owner is None else owner.size - x.size
    assert owner is None or np.isnan(owner).sum() == gaps
    res = bnc.batch_norm(x, w, b, rm, rv, channel_axis=channel_axis, out=x)
    assert res is x
    assert_close(x, y_ref, tol(dtype), "in-place result")
    if owner is not None:
        assert np.isnan(owner).sum() == gaps, "wrote outside the view x"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", [((3, 4, 5, 6), 1), ((6, 5), 1),
                                                ((8, 16, 32, 32), 1)], ids=["nchw", "2d", "big"])
def test_inplace_training_is_right_or_refused(shape, channel_axis, dtype):
    """API.md allows out=x for inference; in training it must be right or a ValueError."""
    base, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype, "inplace-train")
    x = base.copy()
    rm0, rv0 = rm.copy(), rv.copy()
    y_ref, rm_ref, rv_ref, _ = ref_train(base, w, b, rm, rv, channel_axis=channel_axis)
    try:
        res = bnc.batch_norm(x, w, b, rm, rv, training=True, channel_axis=channel_axis, out=x)
    except ValueError as e:
        assert "out" in str(e)
        assert np.array_equal(x, base)
        assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
    else:
        assert res is x
        assert_close(x, y_ref, tol(dtype), "in-place training")
        assert_close(rm, rm_ref, stat_tol(dtype))
        assert_close(rv, rv_ref, stat_tol(dtype))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_partial_overlap_is_right_or_refused(training):
    rng = rng_for("overlap")
    buf = rng.standard_normal((7, 5))
    orig = buf.copy()
    x, out = buf[:-1], buf[1:]  # overlapping, not the same array
    w, b, rm, rv = make_params(5, np.float64, rng)
    if training:
        y_ref = ref_train(orig[:-1], w, b, None, None)[0]
    else:
        y_ref = ref_eval(orig[:-1], w, b, rm, rv)
    try:
        res = bnc.batch_norm(x, w, b, rm, rv, training=training, out=out)
    except ValueError as e:
        assert "out" in str(e)
        assert np.array_equal(buf, orig)
    else:
        assert res is out
        assert_close(out, y_ref, 1e-12, "overlapping out")


# ---------------------------------------------------------------------------
# non-contiguous parameters and running statistics


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
def test_strided_parameters_and_running_stats(dtype):
    shape = (4, 5, 3, 3)
    base, (w, b, rm, rv), _ = _data(shape, 1, dtype, "strided-params")
    sd = stat_dtype(dtype)

    def strided(v):
        buf = np.full(2 * v.size, SENTINEL, sd)
        view = buf[::-2]  # negative stride, gaps
        view[...] = v
        return view, buf

    ws, _ = strided(w)
    bs, _ = strided(b)
    rms, rm_buf = strided(rm)
    rvs, rv_buf = strided(rv)
    y_ref, rm_ref, rv_ref, _ = ref_train(base, w, b, rm, rv)
    y = bnc.batch_norm(base, ws, bs, rms, rvs, training=True)
    assert_close(y, y_ref, tol(dtype))
    assert_close(rms, rm_ref, stat_tol(dtype), "running_mean (updated through the view)")
    assert_close(rvs, rv_ref, stat_tol(dtype), "running_var (updated through the view)")
    # buf[::-2] uses the odd indices: the even ones are gaps
    assert np.all(rm_buf[0::2] == SENTINEL) and np.all(rv_buf[0::2] == SENTINEL)
    y = bnc.batch_norm(base, ws, bs, rms, rvs)
    assert_close(y, ref_eval(base, w, b, rms, rvs), tol(dtype))
    mean, var, count = bnc.batch_norm_stats(base)
    rmc, rvc = np.array(rms), np.array(rvs)
    bnc.update_running_stats(rms, rvs, mean, var, count, momentum=0.5)
    rmc2, rvc2 = rmc.copy(), rvc.copy()
    bnc.update_running_stats(rmc2, rvc2, mean, var, count, momentum=0.5)
    assert np.array_equal(rms, rmc2) and np.array_equal(rvs, rvc2)
