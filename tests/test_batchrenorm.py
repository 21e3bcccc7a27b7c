"""bnc batch renorm against the float64 oracle bnc.reference, batch norm and PyTorch.

Covers: batch_renorm_forward/backward and batch_renorm over dtypes, shapes,
channel axes and memory layouts; rmax=1, dmax=0 is batch norm bit for bit;
r and d reaching both ends of their clipping; results independent of the
thread count; gradients against finite differences and torch autograd with r
and d held constant; the running-statistics update; errors without writes.
"""

import numpy as np
import pytest

import bnc
from bnc import reference as ref
from bnc.batchrenorm import BatchRenormSaved, batch_renorm, batch_renorm_backward, \
    batch_renorm_forward
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
    make_x,
    norm_axis,
    rng_for,
    snapshot,
    stat_dtype,
    stat_tol,
    tol,
)

CASES = [
    ((2, 3), 1),
    ((4, 3), -1),
    ((6, 4), 0),
    ((1, 3, 5), 1),
    ((4, 1, 7), 1),
    ((2, 3, 4, 5), 1),
    ((2, 4, 5, 3), -1),
    ((2, 3, 4, 5), 2),
    ((2, 3, 2, 3, 4), 1),
    ((3, 5, 61, 67), 1),
    ((8, 16, 32, 32), 1),
    ((8, 32, 32, 16), -1),
    ((4096, 16), 1),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-ax{a}" for s, a in CASES]
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
cases = pytest.mark.parametrize("shape,channel_axis", CASES, ids=CASE_IDS)

RMAX, DMAX = 1.5, 0.5


def _data(shape, channel_axis, dtype, *key, spread=2.0):
    """x, weight, bias and running statistics that put the channels' r in
    [1/4, 4] and d in [-spread, spread] times sigma: clipping is active."""
    rng = rng_for(shape, channel_axis, np.dtype(dtype).name, "renorm", *key)
    ax = norm_axis(channel_axis, len(shape))
    C = shape[ax]
    cshape = [1] * len(shape)
    cshape[ax] = C
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 2.0, C).reshape(cshape)
         + rng.uniform(-2, 2, C).reshape(cshape)).astype(dtype)
    axes = tuple(a for a in range(len(shape)) if a != ax)
    xm = f64(x).mean(axis=axes)
    xs = np.sqrt(f64(x).var(axis=axes) + 1e-5)
    sd = stat_dtype(dtype)
    sigma = xs * 2.0 ** rng.uniform(-2, 2, C)
    rv = np.maximum(sigma ** 2 - 1e-5, 0).astype(sd)
    rm = (xm - rng.uniform(-spread, spread, C) * sigma).astype(sd)
    w = (rng.uniform(0.5, 1.5, C) * rng.choice([-1.0, 1.0], C)).astype(sd)
    b = rng.standard_normal(C).astype(sd)
    return x, w, b, rm, rv, rng


def _layout_of(a):
    return np.empty_like(a).strides


@dtypes
@cases
def test_forward_backward_match_reference(shape, channel_axis, dtype):
    x, w, b, rm, rv, rng = _data(shape, channel_axis, dtype)
    g = make_x(shape, dtype, rng)
    copies = snapshot(x, w, b, rm, rv, g)
    y_ref, s_ref = ref.batch_renorm_forward(f64(x), f64(w), f64(b), f64(rm), f64(rv),
                                            rmax=RMAX, dmax=DMAX, channel_axis=channel_axis)
    y, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX,
                                    channel_axis=channel_axis)
    assert isinstance(saved, BatchRenormSaved)
    assert saved._fields == ("mean", "invstd", "var", "r", "d")
    assert y.dtype == x.dtype and y.strides == _layout_of(x)
    assert_close(y, y_ref, tol(dtype), "y")
    for name in saved._fields:
        got = getattr(saved, name)
        assert isinstance(got, np.ndarray) and got.dtype == stat_dtype(dtype), name
        assert_close(got, getattr(s_ref, name), stat_tol(dtype), f"saved.{name}")

    gr_ref = ref.batch_renorm_backward(f64(g), f64(x), f64(w), s_ref, channel_axis=channel_axis)
    gi, gw, gb = batch_renorm_backward(g, x, w, saved, channel_axis=channel_axis)
    assert gi.dtype == x.dtype and gi.strides == _layout_of(x)
    assert gw.dtype == stat_dtype(dtype) and gb.dtype == stat_dtype(dtype)
    term = np.linalg.norm(f64(g)) * float(np.max(s_ref.invstd * s_ref.r) * np.max(np.abs(f64(w))))
    assert_close(gi, gr_ref.grad_input, tol(dtype), "grad_input", atol=tol(dtype) * term)
    loose = 1 if dtype == np.float64 else 10
    assert_close(gw, gr_ref.grad_weight, stat_tol(dtype) * loose, "grad_weight")
    assert_close(gb, gr_ref.grad_bias, stat_tol(dtype) * loose, "grad_bias")
    assert_unchanged([x, w, b, rm, rv, g], copies, ["x", "w", "b", "rm", "rv", "g"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,channel_axis", [((4, 3, 40, 50), 1), ((3, 5, 7), -1),
                                                ((64, 8), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_layouts(layout, shape, channel_axis, dtype):
    x0, w, b, rm, rv, rng = _data(shape, channel_axis, dtype, "layout")
    x = as_layout(x0, layout, channel_axis)
    g = as_layout(make_x(shape, dtype, rng), layout, channel_axis)
    y_ref, s_ref = ref.batch_renorm_forward(f64(x0), f64(w), f64(b), f64(rm), f64(rv),
                                            rmax=RMAX, dmax=DMAX, channel_axis=channel_axis)
    y, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX,
                                    channel_axis=channel_axis)
    assert_close(y, y_ref, tol(dtype), "y")
    assert_close(saved.r, s_ref.r, stat_tol(dtype), "r")
    assert_close(saved.d, s_ref.d, stat_tol(dtype), "d")
    gi, gw, gb = batch_renorm_backward(g, x, w, saved, channel_axis=channel_axis)
    gr = ref.batch_renorm_backward(f64(g), f64(x0), f64(w), s_ref, channel_axis=channel_axis)
    assert_close(gi, gr.grad_input, tol(dtype) * 10, "grad_input")
    assert_close(gw, gr.grad_weight, stat_tol(dtype) * 10, "grad_weight")
    # rmax=1, dmax=0 is batch norm in every layout, bit for bit
    y1, _ = batch_renorm_forward(x, w, b, rm, rv, channel_axis=channel_axis)
    y2, _ = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis)
    assert bit_equal(y1, y2)


@dtypes
@pytest.mark.parametrize("shape,channel_axis", [((8, 16, 32, 32), 1), ((8, 32, 32, 16), -1),
                                                ((4096, 16), 1), ((64, 3, 40, 40), 1)],
                         ids=["NCHW", "NHWC", "2-D", "C3"])
def test_threads_bit_identical(dtype, shape, channel_axis):
    x, w, b, rm, rv, rng = _data(shape, channel_axis, dtype, "threads")
    g = make_x(shape, dtype, rng)
    outs = []
    for nt in (1, 2):
        y, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX,
                                        channel_axis=channel_axis, n_threads=nt)
        grads = batch_renorm_backward(g, x, w, saved, channel_axis=channel_axis, n_threads=nt)
        outs.append((y, *saved, *grads))
    for a, c in zip(*outs):
        assert bit_equal(a, c)


@dtypes
@pytest.mark.parametrize("shape,channel_axis", [((8, 16, 32, 32), 1), ((8, 32, 32, 16), -1),
                                                ((4096, 16), 1), ((2, 3, 4, 5), 2),
                                                ((5, 1), 1)])
def test_rmax_one_dmax_zero_is_batch_norm(dtype, shape, channel_axis):
    x, w, b, rm, rv, rng = _data(shape, channel_axis, dtype, "bn")
    g = make_x(shape, dtype, rng)
    y, saved = batch_renorm_forward(x, w, b, rm, rv, channel_axis=channel_axis)
    y_bn, s_bn = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis)
    assert bit_equal(y, y_bn)
    for name in s_bn._fields:
        assert bit_equal(getattr(saved, name), getattr(s_bn, name)), name
    assert np.all(saved.r == 1) and np.all(saved.d == 0) and not np.any(np.signbit(saved.d))
    g1 = batch_renorm_backward(g, x, w, saved, channel_axis=channel_axis)
    g2 = bnc.batch_norm_backward(g, x, w, s_bn, channel_axis=channel_axis)
    for a, c in zip(g1, g2):
        assert bit_equal(a, c)
    # the stateful op, running statistics included
    rm1, rv1, rm2, rv2 = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    y1 = batch_renorm(x, w, b, rm1, rv1, training=True, channel_axis=channel_axis)
    y2 = bnc.batch_norm(x, w, b, rm2, rv2, training=True, channel_axis=channel_axis)
    assert bit_equal(y1, y2) and bit_equal(rm1, rm2) and bit_equal(rv1, rv2)


@dtypes
@pytest.mark.parametrize("shape,channel_axis", [((8, 64, 6, 6), 1), ((256, 64), 1),
                                                ((4, 5, 5, 64), -1)])
def test_clipping_reaches_both_bounds(dtype, shape, channel_axis):
    x, w, b, rm, rv, _ = _data(shape, channel_axis, dtype, "clip")
    sd = stat_dtype(dtype)
    _, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX,
                                    channel_axis=channel_axis)
    r, d = saved.r, saved.d
    lo, hi = sd.type(1 / RMAX), sd.type(RMAX)
    assert np.any(r == lo) and np.any(r == hi) and np.any((r > lo) & (r < hi))
    assert np.any(d == -DMAX) and np.any(d == DMAX) and np.any((d > -DMAX) & (d < DMAX))
    assert np.all((r >= lo) & (r <= hi)) and np.all(np.abs(d) <= DMAX)


def test_unclipped_with_infinite_bounds():
    x, w, b, rm, rv, _ = _data((6, 5, 7), 1, np.float64, "inf")
    _, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=np.inf, dmax=np.inf)
    sigma = np.sqrt(rv + 1e-5)
    assert_close(saved.r, np.sqrt(saved.var + 1e-5) / sigma, 1e-14)
    assert_close(saved.d, (saved.mean - rm) / sigma, 1e-14)
    # r = sigma_B / sigma and d undo the batch statistics: y is batch norm with
    # the running statistics
    y, _ = batch_renorm_forward(x, w, b, rm, rv, rmax=np.inf, dmax=np.inf)
    assert_close(y, ref.batch_norm(x, w, b, rm, rv, training=False), 1e-12)


@pytest.mark.parametrize("shape,channel_axis", [((3, 2, 2), 1), ((4, 3), -1),
                                                ((2, 2, 2, 2), 2)])
def test_backward_finite_differences(shape, channel_axis):
    """Gradients of L = sum(g * y) with r and d held at the forward's values."""
    x, w, b, rm, rv, rng = _data(shape, channel_axis, np.float64, "fd", spread=0.3)
    g = rng.standard_normal(shape)
    _, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=1.3, dmax=0.2, eps=1e-3,
                                    channel_axis=channel_axis)
    assert np.any(saved.r != 1) and np.any(saved.d != 0)
    ax = norm_axis(channel_axis, len(shape))
    axes = tuple(a for a in range(len(shape)) if a != ax)
    bc = [1] * len(shape)
    bc[ax] = -1

    def loss(xv, wv, bv):  # r, d constants
        m = xv.mean(axis=axes).reshape(bc)
        s = np.sqrt(xv.var(axis=axes) + 1e-3).reshape(bc)
        y = wv.reshape(bc) * ((xv - m) / s * saved.r.reshape(bc) + saved.d.reshape(bc)) \
            + bv.reshape(bc)
        return float(np.sum(g * y))

    gi, gw, gb = batch_renorm_backward(g, x, w, saved, channel_axis=channel_axis)
    x1, w1, b1 = x.copy(), w.copy(), b.copy()
    f = lambda: loss(x1, w1, b1)  # noqa: E731
    assert_close(gi, numeric_grad(f, x1, 1e-6), 1e-6, "grad_input")
    assert_close(gw, numeric_grad(f, w1, 1e-6), 1e-6, "grad_weight")
    assert_close(gb, numeric_grad(f, b1, 1e-6), 1e-6, "grad_bias")


def test_reference_backward_finite_differences():
    """The oracle's backward, itself checked (r, d constants)."""
    x, w, b, rm, rv, rng = _data((5, 3, 2), 1, np.float64, "reffd", spread=0.3)
    g = rng.standard_normal(x.shape)
    _, s = ref.batch_renorm_forward(x, w, b, rm, rv, rmax=1.3, dmax=0.2)
    gr = ref.batch_renorm_backward(g, x, w, s)
    sd = (1, -1, 1)

    def loss():  # r and d held at the unperturbed values
        sx = ref.batch_renorm_forward(x, w, b, rm, rv, rmax=1.3, dmax=0.2)[1]
        xh = (x - sx.mean.reshape(sd)) * sx.invstd.reshape(sd)
        return float(np.sum(g * (w.reshape(sd) * (xh * s.r.reshape(sd) + s.d.reshape(sd))
                                 + b.reshape(sd))))
    num = numeric_grad(loss, x, 1e-6)
    assert_close(gr.grad_input, num, 1e-6)


@pytest.mark.parametrize("shape,channel_axis", [((4, 6, 5, 7), 1), ((16, 5), 1),
                                                ((3, 4, 5, 6), -1)])
def test_against_torch_autograd(shape, channel_axis):
    torch = pytest.importorskip("torch")
    x, w, b, rm, rv, rng = _data(shape, channel_axis, np.float64, "torch")
    g = rng.standard_normal(shape)
    ax = norm_axis(channel_axis, len(shape))
    axes = tuple(a for a in range(len(shape)) if a != ax)
    bc = [1] * len(shape)
    bc[ax] = -1
    eps = 1e-5
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    mean = tx.mean(dim=axes)
    var = tx.var(dim=axes, unbiased=False)
    sigma_b = torch.sqrt(var + eps)
    sigma = torch.sqrt(trv + eps)
    r = (sigma_b / sigma).clamp(1 / RMAX, RMAX).detach()
    d = ((mean - trm) / sigma).clamp(-DMAX, DMAX).detach()
    ty = tw.view(bc) * ((tx - mean.view(bc)) / sigma_b.view(bc) * r.view(bc) + d.view(bc)) \
        + tb.view(bc)
    ty.backward(torch.tensor(g))

    y, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX,
                                    channel_axis=channel_axis)
    gi, gw, gb = batch_renorm_backward(g, x, w, saved, channel_axis=channel_axis)
    assert_close(y, ty.detach().numpy(), 1e-12, "y")
    assert_close(saved.r, r.numpy(), 1e-12, "r")
    assert_close(saved.d, d.numpy(), 1e-12, "d")
    assert_close(gi, tx.grad.numpy(), 1e-11, "grad_input")
    assert_close(gw, tw.grad.numpy(), 1e-12, "grad_weight")
    assert_close(gb, tb.grad.numpy(), 1e-12, "grad_bias")


# ---------------------------------------------------------------------------
# batch_renorm: running statistics


@dtypes
@pytest.mark.parametrize("kw", [{}, dict(momentum=0.3), dict(decay=0.9, correction=0)],
                         ids=["default", "momentum", "decay"])
def test_running_stats_updated_after_r_and_d(dtype, kw):
    x, w, b, rm, rv, _ = _data((8, 6, 5, 5), 1, dtype, "run")
    rm0, rv0 = rm.copy(), rv.copy()
    y = batch_renorm(x, w, b, rm, rv, training=True, rmax=RMAX, dmax=DMAX, **kw)
    # r and d come from the old values
    y_fwd, saved = batch_renorm_forward(x, w, b, rm0, rv0, rmax=RMAX, dmax=DMAX)
    assert bit_equal(y, y_fwd)
    rm_ref, rv_ref = f64(rm0), f64(rv0)
    y_ref = ref.batch_renorm(f64(x), f64(w), f64(b), rm_ref, rv_ref, training=True, rmax=RMAX,
                             dmax=DMAX, **kw)
    assert_close(y, y_ref, tol(dtype))
    assert_close(rm, rm_ref, stat_tol(dtype))
    assert_close(rv, rv_ref, stat_tol(dtype))
    # the same update as batch norm's
    rm2, rv2 = rm0.copy(), rv0.copy()
    bnc.update_running_stats(rm2, rv2, saved.mean, saved.var, x.size // 6, **kw)
    assert bit_equal(rm, rm2) and bit_equal(rv, rv2)


def test_num_batches_tracked_and_cumulative_average():
    x, w, b, rm, rv, _ = _data((8, 3, 4), 1, np.float64, "nbt")
    nbt = np.array(0, dtype=np.int64)
    rm0 = rm.copy()
    batch_renorm(x, w, b, rm, rv, training=True, momentum=None, num_batches_tracked=nbt,
                 rmax=2.0, dmax=1.0)
    assert nbt == 1
    assert_close(rm, x.mean(axis=(0, 2)), 1e-14)  # factor 1/1: the batch's mean
    assert not np.array_equal(rm, rm0)


@dtypes
def test_inference_is_batch_norm_inference(dtype):
    x, w, b, rm, rv, _ = _data((4, 3, 5, 6), 1, dtype, "eval")
    copies = snapshot(rm, rv)
    y = batch_renorm(x, w, b, rm, rv, rmax=3.0, dmax=5.0)
    assert bit_equal(y, bnc.batch_norm(x, w, b, rm, rv))
    assert_unchanged([rm, rv], copies)


@pytest.mark.parametrize("use_w,use_b", [(False, False), (True, False), (False, True)])
def test_optional_affine(use_w, use_b):
    x, w, b, rm, rv, rng = _data((6, 4, 9), 1, np.float64, "aff")
    w, b = (w if use_w else None), (b if use_b else None)
    g = rng.standard_normal(x.shape)
    y, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX)
    y_ref, s_ref = ref.batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX)
    assert_close(y, y_ref, 1e-12)
    gi, gw, gb = batch_renorm_backward(g, x, w, saved)
    gr = ref.batch_renorm_backward(g, x, w, s_ref)
    assert_close(gi, gr.grad_input, 1e-11)
    assert_close(gw, gr.grad_weight, 1e-12)


def test_out_and_in_place_refused():
    x, w, b, rm, rv, _ = _data((4, 3, 5), 1, np.float32, "out")
    out = np.empty_like(x)
    y, _ = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX, out=out)
    assert y is out
    y2, _ = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX)
    assert bit_equal(out, y2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_data_propagates(bad):
    x, w, b, rm, rv, _ = _data((4, 3, 5), 1, np.float32, "nan")
    x[1, 1, 2] = bad
    y, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX)
    assert np.all(np.isnan(y[:, 1])) and np.all(np.isfinite(y[:, [0, 2]]))
    rv2 = rv.copy()
    rv2[0] = np.nan
    y, saved = batch_renorm_forward(x, w, b, rm, rv2, rmax=RMAX, dmax=DMAX)
    assert np.isnan(saved.r[0]) and np.isnan(saved.d[0]) and np.all(np.isnan(y[:, 0]))


# ---------------------------------------------------------------------------
# errors: clear messages, nothing written


def _bad_call_cases():
    return [
        (dict(rmax=0.5), ValueError, "rmax must be >= 1"),
        (dict(rmax=np.nan), ValueError, "rmax must be >= 1"),
        (dict(rmax="2"), TypeError, "rmax must be a real number"),
        (dict(dmax=-0.1), ValueError, "dmax must be >= 0"),
        (dict(dmax=np.nan), ValueError, "dmax must be >= 0"),
        (dict(dmax=True), TypeError, "dmax must be a real number, got bool"),
        (dict(eps=0.0), ValueError, "eps must be finite and > 0"),
        (dict(running_mean=np.zeros(4, np.float32)), ValueError, r"running_mean must have shape \(3,\)"),
        (dict(running_var=np.ones(4, np.float32)), ValueError, r"running_var must have shape \(3,\)"),
        (dict(weight=np.ones(2, np.float32)), ValueError, r"weight must have shape \(3,\)"),
        (dict(running_var=None), ValueError, "running_mean and running_var"),
        (dict(out=np.empty((4, 3, 6), np.float32)), ValueError, "out must have shape"),
        (dict(n_threads=0), ValueError, "n_threads"),
    ]


@pytest.mark.parametrize("kw,exc,match", _bad_call_cases())
@pytest.mark.parametrize("fn", ["forward", "batch_renorm"])
def test_bad_input_writes_nothing(kw, exc, match, fn):
    x, w, b, rm, rv, _ = _data((4, 3, 5), 1, np.float32, "err")
    args = dict(weight=w, bias=b, running_mean=rm, running_var=rv,
                out=np.full(x.shape, 7.0, np.float32))
    args.update(kw)
    if fn == "batch_renorm" and "running_mean" in kw:
        match = "running_mean must have shape" if "shape" in match else match
    keep = [a for a in (x, w, b, rm, rv, args["out"]) if a is not None]
    copies = snapshot(*keep)
    call_kw = {k: v for k, v in args.items() if k not in ("weight", "bias", "running_mean",
                                                         "running_var")}
    with pytest.raises(exc, match=match):
        if fn == "forward":
            batch_renorm_forward(x, args["weight"], args["bias"], args["running_mean"],
                                 args["running_var"], rmax=call_kw.pop("rmax", RMAX),
                                 dmax=call_kw.pop("dmax", DMAX), **call_kw)
        else:
            batch_renorm(x, args["weight"], args["bias"], args["running_mean"],
                         args["running_var"], training=True, rmax=call_kw.pop("rmax", RMAX),
                         dmax=call_kw.pop("dmax", DMAX), **call_kw)
    assert_unchanged(keep, copies)


def test_running_stats_must_be_writable_arrays_when_training():
    x, w, b, rm, rv, _ = _data((4, 3, 5), 1, np.float32, "ro")
    rv.setflags(write=False)
    rm0 = rm.copy()
    with pytest.raises(ValueError, match="running_var is read-only"):
        batch_renorm(x, w, b, rm, rv, training=True, rmax=RMAX)
    assert bit_equal(rm, rm0)
    with pytest.raises(TypeError, match="running_mean must be a numpy.ndarray"):
        batch_renorm(x, w, b, list(rm), rv, training=True)
    with pytest.raises(TypeError, match="running_mean must have dtype float32"):
        batch_renorm(x, w, b, rm.astype(np.float64), rv, training=True)
    with pytest.raises(TypeError, match="give momentum or decay"):
        batch_renorm(x, w, b, rm, rv, training=True, momentum=0.2, decay=0.8)


def test_one_value_per_channel_when_training():
    x = np.ones((1, 3), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        batch_renorm(x, None, None, rm, rv, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        batch_renorm_forward(x, None, None, rm, rv)


def test_backward_bad_input():
    x, w, b, rm, rv, rng = _data((4, 3, 5), 1, np.float64, "berr")
    g = rng.standard_normal(x.shape)
    _, saved = batch_renorm_forward(x, w, b, rm, rv, rmax=RMAX, dmax=DMAX)
    _, bn_saved = bnc.batch_norm_forward(x, w, b)
    with pytest.raises(TypeError, match="saved must be a BatchRenormSaved"):
        batch_renorm_backward(g, x, w, bn_saved)
    with pytest.raises(ValueError, match=r"saved.r must have shape \(3,\)"):
        batch_renorm_backward(g, x, w, saved._replace(r=np.ones(2)))
    with pytest.raises(ValueError, match="grad_out must have the shape of x"):
        batch_renorm_backward(g[:, :, :4], x, w, saved)
    out = np.full(x.shape, 7.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        batch_renorm_backward(g, x, np.ones(4), saved, out=out)
    assert np.all(out == 7.0)


def test_exported_from_the_package():
    import bnc
    for name in ("batch_renorm", "batch_renorm_forward", "batch_renorm_backward",
                 "BatchRenormSaved"):
        assert name in bnc.__all__ and getattr(bnc, name) is getattr(bnc.batchrenorm, name)
