"""Fused batch norm: y = act(batch_norm(x) + residual) and its backward
(activation="relu", residual=), against bnc.reference, finite differences,
PyTorch (skipped without it) and bnc's own unfused composition."""

import numpy as np
import pytest

import bnc
from bnc import reference as ref
from conftest import (
    DTYPE_IDS,
    DTYPES,
    as_layout,
    assert_close,
    assert_unchanged,
    bit_equal,
    make_params,
    make_x,
    norm_axis,
    numeric_grad,
    rng_for,
    snapshot,
    stat_tol,
    tol,
)

CASES = [
    ((4, 3, 5, 6), 1),    # NCHW
    ((4, 5, 6, 3), -1),   # NHWC
    ((16, 5), 1),         # 2-D
    ((3, 4, 7), 1),       # 3-D
    ((2, 1, 5, 5), 1),    # one channel
    ((300, 4), 1),        # few interleaved channels (the packed forward)
]
CASE_IDS = ["nchw", "nhwc", "2d", "3d", "c1", "packed"]
FUSIONS = [("relu", True), ("relu", False), (None, True)]
FUSION_IDS = ["relu+res", "relu", "res"]

cases = pytest.mark.parametrize("shape,channel_axis", CASES, ids=CASE_IDS)
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
fusions = pytest.mark.parametrize("activation,with_res", FUSIONS, ids=FUSION_IDS)


def _data(shape, channel_axis, dtype, *key):
    rng = rng_for("fusion", shape, channel_axis, np.dtype(dtype).name, *key)
    x = make_x(shape, dtype, rng, loc=0.5, scale=1.5)
    r = make_x(shape, dtype, rng, scale=0.7)
    dy = make_x(shape, dtype, rng)
    C = shape[norm_axis(channel_axis, len(shape))]
    return x, r, dy, make_params(C, dtype, rng)


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _stats_kw(training, rm, rv):
    return {} if training else {"mean": rm, "var": rv}


# ------------------------------------------------------------ vs reference ---

@dtypes
@cases
@fusions
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_backward_vs_reference(shape, channel_axis, dtype, activation, with_res,
                                       training):
    x, r, dy, (w, b, rm, rv) = _data(shape, channel_axis, dtype, activation, with_res)
    res = r if with_res else None
    kw = _stats_kw(training, rm, rv)
    y, saved = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis,
                                      activation=activation, residual=res, **kw)
    assert y.dtype == x.dtype and y.shape == x.shape
    y_ref, saved_ref = ref.batch_norm_forward(
        _f64(x), _f64(w), _f64(b), channel_axis=channel_axis, activation=activation,
        residual=_f64(res), **{k: _f64(v) for k, v in kw.items()})
    assert_close(y, y_ref, tol(dtype), "y")
    if activation == "relu":
        assert np.all(y >= 0)

    g = bnc.batch_norm_backward(dy, x, w, saved, channel_axis=channel_axis,
                                use_batch_stats=training, activation=activation,
                                y=y if activation else None, residual=with_res)
    # the reference masks with bnc's own y: the same ReLU decisions
    g_ref = ref.batch_norm_backward(
        _f64(dy), _f64(x), _f64(w), ref.BatchNormSaved(*(_f64(s) for s in saved)),
        channel_axis=channel_axis, use_batch_stats=training, activation=activation,
        y=_f64(y) if activation else None, residual=with_res)
    assert type(g) is (bnc.ResidualGrads if with_res else bnc.Grads)
    assert_close(g.grad_input, g_ref.grad_input, 4 * tol(dtype), "grad_input")
    gt = 1e-4 if dtype == np.float16 else stat_tol(dtype) * 10
    assert_close(g.grad_weight, g_ref.grad_weight, gt, "grad_weight")
    assert_close(g.grad_bias, g_ref.grad_bias, gt, "grad_bias")
    if with_res:
        assert g.grad_residual.dtype == x.dtype
        assert_close(g.grad_residual, g_ref.grad_residual, 0.0, "grad_residual")


@dtypes
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_fused_updates_running_stats(dtype, training):
    x, r, _, (w, b, rm, rv) = _data((6, 4, 3, 5), 1, dtype, "module")
    rm0, rv0 = rm.copy(), rv.copy()
    y = bnc.batch_norm(x, w, b, rm, rv, training=training, activation="relu", residual=r)
    rm_ref, rv_ref = rm0.astype(np.float64), rv0.astype(np.float64)  # copies
    y_ref = ref.batch_norm(_f64(x), _f64(w), _f64(b), rm_ref, rv_ref, training=training,
                           activation="relu", residual=_f64(r))
    assert_close(y, y_ref, tol(dtype), "y")
    # the running statistics are the unfused call's, bit for bit
    rm2, rv2 = rm0.copy(), rv0.copy()
    bnc.batch_norm(x, w, b, rm2, rv2, training=training)
    assert bit_equal(rm, rm2) and bit_equal(rv, rv2)


def test_relu_semantics_nan_and_zero():
    """ReLU as torch.relu (NaN propagates, -0.0 stays); its backward mask as
    threshold_backward (y <= 0 blocks, a NaN y passes)."""
    x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], np.float64).T.reshape(5, 1)
    r = np.array([-1.0, -5.0, np.nan, 1.0, -5.0]).reshape(5, 1)
    m, v = np.zeros(1), np.full(1, 1.0 - 1e-5)
    y, saved = bnc.batch_norm_forward(x, mean=m, var=v, activation="relu", residual=r)
    assert y[0, 0] == 0 and y[1, 0] == 0 and np.isnan(y[2, 0]) and y[3, 0] == 5.0
    assert not np.signbit(y[1, 0])
    y[4, 0] = -0.0
    g = bnc.batch_norm_backward(np.ones_like(x), x, None, saved, use_batch_stats=False,
                                activation="relu", y=y, residual=True)
    assert g.grad_residual.ravel().tolist()[:2] == [0.0, 0.0]
    assert g.grad_residual[2, 0] == 1.0 and g.grad_residual[3, 0] == 1.0
    assert g.grad_residual[4, 0] == 0.0


# ------------------------------------------------------- finite differences ---

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,channel_axis", [((3, 2, 3, 2), 1), ((5, 3), -1)],
                         ids=["nchw", "2d"])
def test_gradients_finite_differences(shape, channel_axis, training):
    x, r, g, (w, b, rm, rv) = _data(shape, channel_axis, np.float64, "fd")
    x, r, w, b = x.copy(), r.copy(), w.copy(), b.copy()
    kw = _stats_kw(training, rm, rv)

    def loss():
        y, _ = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis, activation="relu",
                                      residual=r, **kw)
        return float(np.sum(g * y))

    y, saved = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis, activation="relu",
                                      residual=r, **kw)
    # keep away from the ReLU's kink, where the difference quotient is not a gradient
    assert np.min(np.abs(y[y != 0])) > 1e-3
    grads = bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis,
                                    use_batch_stats=training, activation="relu", y=y,
                                    residual=True)
    for name, arr, got in [("x", x, grads.grad_input), ("weight", w, grads.grad_weight),
                           ("bias", b, grads.grad_bias), ("residual", r, grads.grad_residual)]:
        assert_close(got, numeric_grad(loss, arr), 1e-7, f"d/d{name}", atol=1e-9)


# ------------------------------------------------------------------ PyTorch ---

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,channel_axis", [((4, 3, 5, 6), 1), ((4, 5, 6, 3), -1),
                                                ((16, 5), 1), ((8, 16, 32, 32), 1)],
                         ids=["nchw", "nhwc", "2d", "medium"])
def test_against_torch(shape, channel_axis, dtype, training):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, r, g, (w, b, rm, rv) = _data(shape, channel_axis, dtype, "torch")
    ax = norm_axis(channel_axis, len(shape))

    def t(a, grad=False):
        return torch.from_numpy(np.array(a, copy=True)).requires_grad_(grad)

    xt, rt, wt, bt = t(x, True), t(r, True), t(w, True), t(b, True)
    yt = torch.relu(F.batch_norm(xt.movedim(ax, 1), t(rm), t(rv), wt, bt,
                                 training=training, eps=1e-5) + rt.movedim(ax, 1))
    yt.backward(t(g).movedim(ax, 1))

    y, saved = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis, activation="relu",
                                      residual=r, **_stats_kw(training, rm, rv))
    gr = bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis,
                                 use_batch_stats=training, activation="relu", y=y,
                                 residual=True)
    T = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    assert_close(y, yt.detach().movedim(1, ax).numpy(), T, "y")
    assert_close(gr.grad_input, xt.grad.numpy(), 4 * T, "grad_input")
    assert_close(gr.grad_weight, wt.grad.numpy(), 10 * T, "grad_weight")
    assert_close(gr.grad_bias, bt.grad.numpy(), 10 * T, "grad_bias")
    assert_close(gr.grad_residual, rt.grad.numpy(), T, "grad_residual")


# ------------------------------------------------- the unfused composition ---

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,channel_axis", [((4, 3, 5, 6), 1), ((40, 5, 6, 64), -1)],
                         ids=["nchw", "nhwc"])
def test_same_bits_as_unfused_composition(shape, channel_axis, dtype, training):
    """With the arithmetic in the storage dtype, fusing changes no bit: y is
    bn, then + residual, then ReLU; the grads are those of the masked dy."""
    x, r, dy, (w, b, rm, rv) = _data(shape, channel_axis, dtype, "compose")
    kw = _stats_kw(training, rm, rv)
    y, saved = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis, activation="relu",
                                      residual=r, **kw)
    u, saved_u = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis, **kw)
    np.add(u, r, out=u)
    np.maximum(u, 0, out=u)
    assert bit_equal(y, u)
    assert all(bit_equal(a, c) for a, c in zip(saved, saved_u))
    gf = bnc.batch_norm_backward(dy, x, w, saved, channel_axis=channel_axis,
                                 use_batch_stats=training, activation="relu", y=y,
                                 residual=True)
    dz = np.where(y <= 0, 0, dy).astype(dtype)
    gu = bnc.batch_norm_backward(dz, x, w, saved, channel_axis=channel_axis,
                                 use_batch_stats=training)
    assert bit_equal(gf.grad_residual, dz)
    for a, c in zip(gf[:3], gu):
        assert bit_equal(a, c)


# ------------------------------------------------------------------ layouts ---

LAYOUTS = ["F", "sliced_last", "step_first", "reversed_channels", "channels_last",
           "transposed", "unaligned"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (4, 3, 40, 64)], ids=["small", "pieces"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_strided_inputs(shape, layout, dtype, training):
    """x, residual, grad_out and y in any layout (each its own), including x
    in pieces (a slice of the last axis with long runs)."""
    x, r, dy, (w, b, rm, rv) = _data(shape, 1, dtype, "layout")
    xs = as_layout(x, layout)
    rs = as_layout(r, LAYOUTS[(LAYOUTS.index(layout) + 1) % len(LAYOUTS)])
    dys = as_layout(dy, LAYOUTS[(LAYOUTS.index(layout) + 2) % len(LAYOUTS)])
    kw = _stats_kw(training, rm, rv)
    y, saved = bnc.batch_norm_forward(xs, w, b, activation="relu", residual=rs, **kw)
    y_ref, _ = ref.batch_norm_forward(_f64(x), _f64(w), _f64(b), activation="relu",
                                      residual=_f64(r), **{k: _f64(v) for k, v in kw.items()})
    assert_close(y, y_ref, tol(dtype), "y")
    ys = as_layout(y, LAYOUTS[(LAYOUTS.index(layout) + 3) % len(LAYOUTS)])
    g = bnc.batch_norm_backward(dys, xs, w, saved, use_batch_stats=training,
                                activation="relu", y=ys, residual=True)
    g_ref = ref.batch_norm_backward(_f64(dy), _f64(x), _f64(w),
                                    ref.BatchNormSaved(*(_f64(s) for s in saved)),
                                    use_batch_stats=training, activation="relu", y=_f64(y),
                                    residual=True)
    assert_close(g.grad_input, g_ref.grad_input, 4 * tol(dtype), "grad_input")
    assert_close(g.grad_weight, g_ref.grad_weight, 1e-4, "grad_weight")
    assert_close(g.grad_residual, g_ref.grad_residual, 0.0, "grad_residual")


# ----------------------------------------------------------------- in place ---

@dtypes
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("target", ["x", "residual", "x_is_residual"])
@pytest.mark.parametrize("shape,channel_axis", [((4, 3, 5, 6), 1), ((64, 5, 8, 4), -1)],
                         ids=["nchw", "nhwc"])
def test_in_place(shape, channel_axis, dtype, training, target):
    x, r, _, (w, b, rm, rv) = _data(shape, channel_axis, dtype, "inplace")
    if target == "x_is_residual":
        r = x.copy()
    kw = _stats_kw(training, rm, rv)
    expected, _ = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis,
                                         activation="relu", residual=r, **kw)
    xi, ri = x.copy(), r.copy()
    if target == "x_is_residual":
        ri = xi
    out = ri if target == "residual" else xi
    y, _ = bnc.batch_norm_forward(xi, w, b, channel_axis=channel_axis, activation="relu",
                                  residual=ri, out=out, **kw)
    assert y is out
    assert bit_equal(y, expected)


# ------------------------------------------------------------------ threads ---

@dtypes
@pytest.mark.parametrize("shape,channel_axis", [((8, 16, 32, 32), 1), ((8, 32, 32, 16), -1),
                                                ((4000, 12), 1), ((2, 3, 100, 100), 1)],
                         ids=["nchw", "nhwc", "2d", "few-channels"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_thread_count_bit_identity(shape, channel_axis, dtype, training):
    x, r, dy, (w, b, rm, rv) = _data(shape, channel_axis, dtype, "threads")
    kw = _stats_kw(training, rm, rv)
    results = []
    for n in (1, 2, 3, 4):
        y, saved = bnc.batch_norm_forward(x, w, b, channel_axis=channel_axis,
                                          activation="relu", residual=r, n_threads=n, **kw)
        g = bnc.batch_norm_backward(dy, x, w, saved, channel_axis=channel_axis,
                                    use_batch_stats=training, activation="relu", y=y,
                                    residual=True, n_threads=n)
        results.append((y, *saved, *g))
    for other in results[1:]:
        assert all(bit_equal(a, c) for a, c in zip(results[0], other))


# --------------------------------------------------------------- validation ---

def _fwd_args():
    x, r, dy, (w, b, rm, rv) = _data((4, 3, 5, 6), 1, np.float32, "errors")
    return x, r, dy, w, b, rm, rv


@pytest.mark.parametrize("activation", ["gelu", "ReLU", 1, True, "relu "])
def test_bad_activation(activation):
    x, r, dy, w, b, rm, rv = _fwd_args()
    out = np.zeros_like(x)
    copies = snapshot(x, r, rm, rv, out)
    with pytest.raises(ValueError, match="activation"):
        bnc.batch_norm(x, w, b, rm, rv, training=True, activation=activation, residual=r,
                       out=out)
    with pytest.raises(ValueError, match="activation"):
        bnc.batch_norm_forward(x, w, b, activation=activation, out=out)
    y, saved = bnc.batch_norm_forward(x, w, b)
    with pytest.raises(ValueError, match="activation"):
        bnc.batch_norm_backward(dy, x, w, saved, activation=activation, y=y)
    assert_unchanged([x, r, rm, rv, out], copies, ["x", "residual", "rm", "rv", "out"])


@pytest.mark.parametrize("bad,exc,match", [
    (lambda x: x.astype(np.float64), TypeError, "residual must have the dtype of x"),
    (lambda x: x[:2], ValueError, "residual must have the shape of x"),
    (lambda x: x[..., 0], ValueError, "residual must have the shape of x"),
    (lambda x: [["a"]], TypeError, "residual"),
])
def test_bad_residual(bad, exc, match):
    x, r, dy, w, b, rm, rv = _fwd_args()
    out = np.zeros_like(x)
    copies = snapshot(x, rm, rv, out)
    with pytest.raises(exc, match=match):
        bnc.batch_norm(x, w, b, rm, rv, training=True, residual=bad(x), out=out)
    with pytest.raises(exc, match=match):
        bnc.batch_norm_forward(x, w, b, mean=rm, var=rv, activation="relu",
                               residual=bad(x), out=out)
    assert_unchanged([x, rm, rv, out], copies, ["x", "rm", "rv", "out"])


def test_residual_list_is_converted():
    x, r, _, w, b, rm, rv = _fwd_args()
    y1, _ = bnc.batch_norm_forward(x, w, b, residual=r.tolist(), activation="relu")
    y2, _ = bnc.batch_norm_forward(x, w, b, residual=r, activation="relu")
    assert bit_equal(y1, y2)


def test_out_partly_overlapping_residual_or_x_is_refused():
    x, r, _, w, b, rm, rv = _fwd_args()
    buf = np.concatenate([r, r])  # out = buf[1:5] overlaps residual = buf[0:4]
    res, out = buf[0:4], buf[1:5]
    copies = snapshot(buf, rm, rv)
    with pytest.raises(ValueError, match="out must not overlap residual"):
        bnc.batch_norm(x, w, b, rm, rv, training=True, residual=res, activation="relu",
                       out=out)
    xb = np.concatenate([x, x])
    copies2 = snapshot(xb)
    with pytest.raises(ValueError, match="out must not overlap x"):
        bnc.batch_norm_forward(xb[0:4], w, b, residual=r, out=xb[1:5])
    assert_unchanged([buf, rm, rv, xb], copies + copies2, ["buf", "rm", "rv", "xbuf"])


def test_backward_validation():
    x, r, dy, w, b, rm, rv = _fwd_args()
    y, saved = bnc.batch_norm_forward(x, w, b, activation="relu", residual=r)
    out = np.zeros_like(x)
    copies = snapshot(x, dy, y, out)
    with pytest.raises(ValueError, match="y .*required"):
        bnc.batch_norm_backward(dy, x, w, saved, activation="relu", out=out)
    with pytest.raises(ValueError, match='y is only used with activation="relu"'):
        bnc.batch_norm_backward(dy, x, w, saved, y=y, out=out)
    with pytest.raises(TypeError, match="y must have the dtype of x"):
        bnc.batch_norm_backward(dy, x, w, saved, activation="relu", y=y.astype(np.float64),
                                out=out)
    with pytest.raises(ValueError, match="y must have the shape of x"):
        bnc.batch_norm_backward(dy, x, w, saved, activation="relu", y=y[:2], out=out)
    with pytest.raises(TypeError, match="residual must be True or False"):
        bnc.batch_norm_backward(dy, x, w, saved, activation="relu", y=y, residual=r,
                                out=out)
    with pytest.raises(TypeError, match="residual must be True or False"):
        bnc.batch_norm_backward(dy, x, w, saved, residual=1, out=out)
    with pytest.raises(ValueError, match="out must not overlap y"):
        bnc.batch_norm_backward(dy, x, w, saved, activation="relu", y=y, out=y)
    assert_unchanged([x, dy, y, out], copies, ["x", "grad_out", "y", "out"])


def test_backward_without_fusion_returns_grads():
    x, r, dy, w, b, rm, rv = _fwd_args()
    y, saved = bnc.batch_norm_forward(x, w, b, residual=r)
    g = bnc.batch_norm_backward(dy, x, w, saved, residual=True)
    assert isinstance(g, bnc.ResidualGrads)
    assert bit_equal(g.grad_residual, dy) and g.grad_residual is not dy
    g2 = bnc.batch_norm_backward(dy, x, w, saved)
    assert type(g2) is bnc.Grads
    assert all(bit_equal(a, c) for a, c in zip(g[:3], g2))
