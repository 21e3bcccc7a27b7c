"""fold_batch_norm: a layer with batch norm folded in computes what the layer
followed by bnc.batch_norm(..., training=False) computes. The NumPy tests use
a direct convolution written here in float64; the PyTorch tests (skipped
without torch) compare with torch.nn layers in eval mode."""

import doctest
import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import bnc
import bnc.fold
from bnc.fold import Folded, fold_batch_norm
from conftest import (
    DTYPE_IDS,
    DTYPES,
    assert_close,
    assert_unchanged,
    bit_equal,
    rng_for,
    snapshot,
    stat_dtype,
    tol,
)

AxisError = np.exceptions.AxisError
SPACE, KERNEL = "abc", "pqr"  # einsum letters of spatial and kernel axes


def conv(x, w, b, channels_last):
    """Direct convolution (cross-correlation, stride 1, no padding) in float64.

    channels first: x (N, I, *S), w (O, I, *K) -> (N, O, *S')
    channels last:  x (N, *S, I), w (*K, I, O) -> (N, *S', O)
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    d = w.ndim - 2
    s, k = SPACE[:d], KERNEL[:d]
    if channels_last:
        win = sliding_window_view(x, w.shape[:d], axis=tuple(range(1, 1 + d)))
        y = np.einsum(f"n{s}i{k},{k}io->n{s}o", win, w)  # win: (N, *S', I, *K)
    else:
        win = sliding_window_view(x, w.shape[2:], axis=tuple(range(2, 2 + d)))
        y = np.einsum(f"ni{s}{k},oi{k}->no{s}", win, w)  # win: (N, I, *S', *K)
    if b is not None:
        b = np.asarray(b, dtype=np.float64)
        y += b if channels_last else b.reshape((-1,) + (1,) * d)
    return y


def to_channels_last(w):
    """(O, I, *K) -> (*K, I, O), the HWIO layout of an OIHW weight."""
    d = w.ndim - 2
    return w.transpose(tuple(range(2, 2 + d)) + (1, 0))


def to_channels_first(w):
    d = w.ndim - 2
    return w.transpose((d + 1, d) + tuple(range(d)))


def bn_params(O, dtype, rng, affine=True):
    """running_mean, running_var, bn_weight, bn_bias in the statistics dtype."""
    sd = stat_dtype(dtype)
    rm = (0.5 * rng.standard_normal(O)).astype(sd)
    rv = rng.uniform(0.05, 3.0, O).astype(sd)
    if not affine:
        return rm, rv, None, None
    gamma = (rng.uniform(0.5, 1.5, O) * rng.choice([-1.0, 1.0], O)).astype(sd)
    beta = rng.standard_normal(O).astype(sd)
    return rm, rv, gamma, beta


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def bn_eval(z, rm, rv, gamma, beta, eps, channel_axis):
    """bnc's inference batch norm on float64 data (parameters widened exactly)."""
    return bnc.batch_norm(z, f64(gamma), f64(beta), f64(rm), f64(rv), training=False,
                          eps=eps, channel_axis=channel_axis)


def check_raises(exc, match, fn, *args, **kwargs):
    """fn raises exc with a message matching `match`; no array argument changed."""
    arrays = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    copies = snapshot(*arrays)
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
    assert_unchanged(arrays, copies)


def name(arg):
    """A regex matching the argument name as a word (bias does not match bn_bias)."""
    return rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])"


dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)

# ---------------------------------------------------------------------------
# NumPy only: folded layer == layer + batch norm


def test_conv_helper_layouts_agree():
    """The test's convolution gives the same in both layouts."""
    rng = rng_for("fold", "conv-helper")
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    y = conv(x, w, b, channels_last=False)
    y_cl = conv(np.moveaxis(x, 1, -1), to_channels_last(w), b, channels_last=True)
    np.testing.assert_allclose(np.moveaxis(y_cl, -1, 1), y, rtol=1e-13, atol=1e-13)
    # one output value by hand
    ref = sum(x[1, i, 2 + p, 1 + q] * w[3, i, p, q]
              for i in range(3) for p in range(3) for q in range(2)) + b[3]
    assert y[1, 3, 2, 1] == pytest.approx(ref, rel=1e-13)


@dtypes
@pytest.mark.parametrize("d", [1, 2, 3], ids=["conv1d", "conv2d", "conv3d"])
@pytest.mark.parametrize("layout", ["OIHW", "HWIO"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_conv_equals_conv_then_batch_norm(d, layout, has_bias, affine, dtype):
    rng = rng_for("fold", "conv", d, layout, has_bias, affine, np.dtype(dtype).name)
    N, I, O, eps = 2, 3, 5, 1e-3
    space, kernel = (7, 6, 5)[:d], (3, 2, 3)[:d]
    w = rng.standard_normal((O, I) + kernel).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if has_bias else None
    rm, rv, gamma, beta = bn_params(O, dtype, rng, affine)
    x = rng.standard_normal((N, I) + space)
    last = layout == "HWIO"
    if last:
        w, x = to_channels_last(w), np.moveaxis(x, 1, -1)
    axis = -1 if last else 0

    folded = fold_batch_norm(w, b, rm, rv, gamma, beta, eps=eps, out_channel_axis=axis)
    assert isinstance(folded, Folded)
    assert folded.weight.dtype == w.dtype and folded.weight.shape == w.shape
    assert folded.bias.dtype == w.dtype and folded.bias.shape == (O,)

    expected = bn_eval(conv(x, w, b, last), rm, rv, gamma, beta, eps, -1 if last else 1)
    actual = conv(x, folded.weight, folded.bias, last)
    assert_close(actual, expected, tol(dtype), "folded conv")


@dtypes
@pytest.mark.parametrize("layout", ["out_in", "in_out"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_linear_equals_linear_then_batch_norm(layout, has_bias, affine, dtype):
    rng = rng_for("fold", "linear", layout, has_bias, affine, np.dtype(dtype).name)
    N, I, O = 16, 7, 6
    w = rng.standard_normal((O, I)).astype(dtype)  # PyTorch's (out, in)
    b = rng.standard_normal(O).astype(dtype) if has_bias else None
    rm, rv, gamma, beta = bn_params(O, dtype, rng, affine)
    x = rng.standard_normal((N, I))
    if layout == "in_out":
        w = np.ascontiguousarray(w.T)  # Keras/JAX (in, out)

    def linear(w_, b_):
        w_ = f64(w_)
        y = x @ (w_.T if layout == "out_in" else w_)
        return y if b_ is None else y + f64(b_)

    folded = fold_batch_norm(w, b, rm, rv, gamma, beta,
                             out_channel_axis=0 if layout == "out_in" else -1)
    expected = bn_eval(linear(w, b), rm, rv, gamma, beta, 1e-5, 1)  # both default eps
    assert_close(linear(*folded), expected, tol(dtype), "folded linear")


@dtypes
def test_rounded_once_from_float64(dtype):
    """The documented arithmetic, bit for bit: float64, then one rounding."""
    rng = rng_for("fold", "rounding", np.dtype(dtype).name)
    w = rng.standard_normal((6, 4, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    rm, rv, gamma, beta = bn_params(6, dtype, rng)
    eps = 1e-4
    s = f64(gamma) / np.sqrt(f64(rv) + eps)
    res = fold_batch_norm(w, b, rm, rv, gamma, beta, eps=eps)
    assert bit_equal(res.weight, (f64(w) * s[:, None, None]).astype(dtype))
    assert bit_equal(res.bias, ((f64(b) - f64(rm)) * s + f64(beta)).astype(dtype))


def test_none_means_zeros_and_ones():
    rng = rng_for("fold", "none")
    w = rng.standard_normal((4, 3, 2, 2))
    rm, rv, gamma, beta = bn_params(4, np.float64, rng)
    zeros, ones = np.zeros(4), np.ones(4)
    for got, want in [
        (fold_batch_norm(w, None, rm, rv, gamma, beta),
         fold_batch_norm(w, zeros, rm, rv, gamma, beta)),
        (fold_batch_norm(w, zeros, rm, rv, None, beta),
         fold_batch_norm(w, zeros, rm, rv, ones, beta)),
        (fold_batch_norm(w, zeros, rm, rv, gamma, None),
         fold_batch_norm(w, zeros, rm, rv, gamma, zeros)),
        (fold_batch_norm(w, None, rm, rv), fold_batch_norm(w, zeros, rm, rv, ones, zeros)),
    ]:
        assert bit_equal(got.weight, want.weight) and bit_equal(got.bias, want.bias)


def test_axis_spellings_and_layouts_agree():
    """HWIO with axis -1 or 3 is the OIHW result transposed; any memory layout of
    the weight gives the same values, in the layout of np.empty_like(weight)."""
    rng = rng_for("fold", "axes")
    w = rng.standard_normal((5, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    rm, rv, gamma, beta = bn_params(5, np.float32, rng)
    ref = fold_batch_norm(w, b, rm, rv, gamma, beta)
    hwio = to_channels_last(w)  # a transposed view
    for axis in (-1, 3):
        res = fold_batch_norm(hwio, b, rm, rv, gamma, beta, out_channel_axis=axis)
        assert bit_equal(to_channels_first(res.weight), ref.weight)
        assert bit_equal(res.bias, ref.bias)
        assert res.weight.strides == np.empty_like(hwio).strides
    for view in (np.asfortranarray(w), w[::-1][::-1], np.ascontiguousarray(hwio)):
        axis = 0 if view.shape == w.shape else -1
        res = fold_batch_norm(view, b, rm, rv, gamma, beta, out_channel_axis=axis)
        back = res.weight if axis == 0 else to_channels_first(res.weight)
        assert bit_equal(back, ref.weight)
        assert res.weight.strides == np.empty_like(view).strides
    # a transposed convolution's (in, out, kH, kW) weight folds along axis 1
    t = np.ascontiguousarray(w.transpose(1, 0, 2, 3))
    res = fold_batch_norm(t, b, rm, rv, gamma, beta, out_channel_axis=1)
    assert bit_equal(res.weight.transpose(1, 0, 2, 3), ref.weight)


def test_inputs_unchanged_and_results_new():
    rng = rng_for("fold", "unchanged")
    w = rng.standard_normal((4, 2, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    rm, rv, gamma, beta = bn_params(4, np.float32, rng)
    args = [w, b, rm, rv, gamma, beta]
    copies = snapshot(*args)
    for a in args:
        a.flags.writeable = False  # read-only inputs are fine
    res = fold_batch_norm(*args)
    assert_unchanged(args, copies, ["weight", "bias", "running_mean", "running_var",
                                    "bn_weight", "bn_bias"])
    for out in res:
        assert out.flags.writeable and out.flags.owndata
        assert not any(np.shares_memory(out, a) for a in args)
    # the identity fold still returns new arrays
    w64 = w.astype(np.float64)
    res = fold_batch_norm(w64, None, np.zeros(4), np.ones(4), eps=1e-300)
    assert bit_equal(res.weight, w64) and not np.shares_memory(res.weight, w64)


def test_per_channel_inputs_of_any_float_dtype_and_lists():
    rng = rng_for("fold", "mixed")
    w = rng.standard_normal((3, 2))
    rm, rv, gamma, beta = bn_params(3, np.float64, rng)
    ref = fold_batch_norm(w, None, rm.astype(np.float16), rv.astype(np.float16),
                          gamma.astype(np.float16), beta.astype(np.float16))
    res = fold_batch_norm(w, [0, 0, 0], *(a.astype(np.float16).tolist()
                                          for a in (rm, rv, gamma, beta)))
    assert bit_equal(res.weight, ref.weight) and bit_equal(res.bias, ref.bias)
    # float16 weights with float64 statistics: float16 out
    res = fold_batch_norm(w.astype(np.float16), None, rm, rv, gamma, beta)
    assert res.weight.dtype == res.bias.dtype == np.float16
    # non-native byte order in, native out
    res = fold_batch_norm(w.astype(">f4"), None, rm.astype(">f8"), rv, gamma, beta)
    assert res.weight.dtype == np.dtype("=f4") and res.weight.dtype.isnative
    want = fold_batch_norm(w.astype(np.float32), None, rm, rv, gamma, beta)
    assert bit_equal(res.weight, want.weight) and bit_equal(res.bias, want.bias)


def test_non_finite_values():
    w = np.ones((3, 2), dtype=np.float32)
    w[0, 1] = np.nan
    b = np.array([1.0, np.inf, 0.0], dtype=np.float32)
    rm = np.array([0.0, np.inf, np.nan], dtype=np.float32)  # inf - inf: NaN, no warning
    rv = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    res = fold_batch_norm(w, b, rm, rv, eps=1e-300)
    assert np.isnan(res.weight[0, 1]) and np.isfinite(res.weight[0, 0])
    assert np.isfinite(res.weight[1:]).all()
    assert res.bias[0] == 1.0 and np.isnan(res.bias[1:]).all()
    # running_var = +Inf: s = 0, the channel outputs bn_bias
    res = fold_batch_norm(np.ones((2, 2)), [5.0, 5.0], [1.0, 1.0], [np.inf, 1.0],
                          [2.0, 2.0], [3.0, 3.0])
    assert bit_equal(res.weight[0], np.zeros(2)) and res.bias[0] == 3.0
    # beyond float16's range: +-Inf, no warning
    res = fold_batch_norm(np.full((2, 1), 60000.0, np.float16), None, [0.0, 0.0],
                          [0.25, 1.0], [1.0, -1.0], eps=1e-300)
    assert res.weight[0, 0] == np.inf and res.weight[1, 0] == -60000.0


def test_docstring_example(monkeypatch):
    # the example calls bnc.fold_batch_norm, the public name
    monkeypatch.setattr(bnc, "fold_batch_norm", fold_batch_norm, raising=False)
    result = doctest.testmod(bnc.fold, raise_on_error=False, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------
# Errors: type, a message naming the argument, inputs untouched


def valid():
    rng = rng_for("fold", "errors")
    w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    rm, rv, gamma, beta = bn_params(4, np.float32, rng)
    return [w, b, rm, rv, gamma, beta], dict(eps=1e-5, out_channel_axis=0)


def _arg(i, value):
    def apply(args, kwargs):
        args[i] = value(args[i]) if callable(value) else value
    return apply


def _kw(**changes):
    def apply(args, kwargs):
        kwargs.update(changes)
    return apply


W, B, RM, RV, G, BETA = range(6)
ERRORS = [
    ("weight-int", TypeError, "weight", _arg(W, lambda w: w.astype(np.int64))),
    ("weight-complex", TypeError, "weight", _arg(W, lambda w: w.astype(np.complex64))),
    ("weight-bool", TypeError, "weight", _arg(W, lambda w: w > 0)),
    ("weight-list-int", TypeError, "weight", _arg(W, [[1, 2], [3, 4]])),
    ("weight-1d", ValueError, "weight", _arg(W, lambda w: w[:, 0, 0, 0].copy())),
    ("weight-0d", ValueError, "weight", _arg(W, np.float32(1.0))),
    ("weight-empty", ValueError, "weight", _arg(W, np.zeros((4, 0, 2, 2), np.float32))),
    ("axis-4", AxisError, "out_channel_axis", _kw(out_channel_axis=4)),
    ("axis--5", AxisError, "out_channel_axis", _kw(out_channel_axis=-5)),
    ("axis-float", TypeError, "out_channel_axis", _kw(out_channel_axis=0.0)),
    ("axis-bool", TypeError, "out_channel_axis", _kw(out_channel_axis=False)),
    ("axis-none", TypeError, "out_channel_axis", _kw(out_channel_axis=None)),
    # the per-channel length follows out_channel_axis (axis 1 has 3 channels)
    ("axis-1-length", ValueError, "bias", _kw(out_channel_axis=1)),
    ("bias-length", ValueError, "bias", _arg(B, lambda a: a[:3].copy())),
    ("bias-2d", ValueError, "bias", _arg(B, lambda a: a[:, None].copy())),
    ("bias-0d", ValueError, "bias", _arg(B, 0.0)),
    ("bias-int", TypeError, "bias", _arg(B, lambda a: a.astype(np.int32))),
    ("bias-complex", TypeError, "bias", _arg(B, [1j, 0, 0, 0])),
    ("bias-str", TypeError, "bias", _arg(B, ["a", "b", "c", "d"])),
    ("running_mean-length", ValueError, "running_mean", _arg(RM, lambda a: a[:1].copy())),
    ("running_mean-none", TypeError, "running_mean", _arg(RM, None)),
    ("running_mean-bool", TypeError, "running_mean", _arg(RM, lambda a: a > 0)),
    ("running_var-length", ValueError, "running_var", _arg(RV, lambda a: np.ones(5))),
    ("running_var-none", TypeError, "running_var", _arg(RV, None)),
    ("running_var-negative", ValueError, "running_var",
     _arg(RV, lambda a: np.where(np.arange(4) == 2, -1e-3, a).astype(a.dtype))),
    ("running_var-nan", ValueError, "running_var",
     _arg(RV, lambda a: np.where(np.arange(4) == 1, np.nan, a).astype(a.dtype))),
    ("running_var--inf", ValueError, "running_var", _arg(RV, [1.0, 1.0, 1.0, -np.inf])),
    ("bn_weight-length", ValueError, "bn_weight", _arg(G, lambda a: a[:3].copy())),
    ("bn_weight-int", TypeError, "bn_weight", _arg(G, lambda a: a.astype(np.int16))),
    ("bn_bias-length", ValueError, "bn_bias", _arg(BETA, np.zeros((4, 4)))),
    ("eps-0", ValueError, "eps", _kw(eps=0.0)),
    ("eps-neg", ValueError, "eps", _kw(eps=-1e-5)),
    ("eps-nan", ValueError, "eps", _kw(eps=float("nan"))),
    ("eps-inf", ValueError, "eps", _kw(eps=float("inf"))),
    ("eps-none", TypeError, "eps", _kw(eps=None)),
]
if np.dtype(np.longdouble) != np.float64:  # wider than float64: refused
    ERRORS.append(("bn_bias-longdouble", TypeError, "bn_bias",
                   _arg(BETA, lambda a: a.astype(np.longdouble))))


@pytest.mark.parametrize("exc,match,change", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_errors(exc, match, change):
    args, kwargs = valid()
    fold_batch_norm(*args, **kwargs)  # the valid call works
    change(args, kwargs)
    check_raises(exc, name(match), fold_batch_norm, *args, **kwargs)


def test_running_var_error_names_the_channel():
    args, kwargs = valid()
    args[RV] = args[RV].copy()
    args[RV][2] = -0.5
    check_raises(ValueError, r"running_var.*-0\.5.*channel 2", fold_batch_norm, *args,
                 **kwargs)


def test_options_are_keyword_only():
    args, _ = valid()
    with pytest.raises(TypeError):
        fold_batch_norm(*args, 1e-5)


# ---------------------------------------------------------------------------
# PyTorch, in eval mode (skipped without torch)

# layer outputs (different summation orders), and folded parameters vs PyTorch's
# own fusion helper (which computes in the layer's dtype)
OUT_TOL = {np.float32: 1e-5, np.float64: 1e-12}
PARAM_TOL = {np.float32: 2e-6, np.float64: 1e-13}


def _torch():
    return pytest.importorskip("torch")


def _randomize_bn(torch, bn, rng, affine):
    O = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(0.5 * rng.standard_normal(O)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.05, 3.0, O)))
        if affine:
            bn.weight.copy_(torch.from_numpy(rng.uniform(-1.5, 1.5, O)))
            bn.bias.copy_(torch.from_numpy(rng.standard_normal(O)))


def _np(t):
    return None if t is None else t.detach().numpy()


def _fold_module(bn, w, b, axis):
    return fold_batch_norm(w, _np(b), _np(bn.running_mean), _np(bn.running_var),
                           _np(bn.weight), _np(bn.bias), eps=bn.eps, out_channel_axis=axis)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("d", [1, 2, 3], ids=["conv1d", "conv2d", "conv3d"])
@pytest.mark.parametrize("layout", ["OIHW", "HWIO"])
@pytest.mark.parametrize("groups", [1, 4], ids=["dense", "depthwise"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_torch_conv_bn(dtype, d, layout, groups, has_bias, affine):
    torch = _torch()
    nn = torch.nn
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    rng = rng_for("fold", "torch-conv", d, layout, groups, has_bias, affine, dtype.__name__)
    torch.manual_seed(int(rng.integers(1 << 31)))
    Conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[d - 1]
    BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[d - 1]
    I, O = (4, 4) if groups > 1 else (3, 6)
    conv = Conv(I, O, 3, padding=1, groups=groups, bias=has_bias, dtype=tdt)
    bn = BN(O, eps=1e-3, affine=affine, dtype=tdt)
    _randomize_bn(torch, bn, rng, affine)
    conv.eval()
    bn.eval()
    x = torch.from_numpy(rng.standard_normal((2, I) + (9, 8, 7)[:d])).to(tdt)

    w = _np(conv.weight)
    if layout == "HWIO":
        folded = _fold_module(bn, to_channels_last(w), conv.bias, -1)
        wf = to_channels_first(folded.weight)
    else:
        folded = _fold_module(bn, w, conv.bias, 0)
        wf = folded.weight
    fused = Conv(I, O, 3, padding=1, groups=groups, bias=True, dtype=tdt).eval()
    with torch.no_grad():
        fused.weight.copy_(torch.from_numpy(np.ascontiguousarray(wf)))
        fused.bias.copy_(torch.from_numpy(folded.bias))
        expected = bn(conv(x)).numpy()
        actual = fused(x).numpy()
        # PyTorch's own fusion helper gives the same parameters
        tw, tb = torch.nn.utils.fusion.fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
            bn.bias)
    assert_close(actual, expected, OUT_TOL[dtype], "fused conv vs conv + bn")
    assert_close(wf, _np(tw), PARAM_TOL[dtype], "weight vs torch's fusion")
    assert_close(folded.bias, _np(tb), PARAM_TOL[dtype], "bias vs torch's fusion")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["out_in", "in_out"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_torch_linear_bn(dtype, layout, has_bias, affine):
    torch = _torch()
    nn = torch.nn
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    rng = rng_for("fold", "torch-linear", layout, has_bias, affine, dtype.__name__)
    torch.manual_seed(int(rng.integers(1 << 31)))
    I, O = 12, 10
    lin = nn.Linear(I, O, bias=has_bias, dtype=tdt).eval()
    bn = nn.BatchNorm1d(O, affine=affine, dtype=tdt)  # default eps: 1e-5, like bnc
    _randomize_bn(torch, bn, rng, affine)
    bn.eval()
    x = torch.from_numpy(rng.standard_normal((32, I))).to(tdt)
    w = _np(lin.weight)
    if layout == "in_out":
        folded = fold_batch_norm(w.T, _np(lin.bias), _np(bn.running_mean),
                                 _np(bn.running_var), _np(bn.weight), _np(bn.bias),
                                 out_channel_axis=-1)
        wf = folded.weight.T
    else:
        folded = fold_batch_norm(w, _np(lin.bias), _np(bn.running_mean),
                                 _np(bn.running_var), _np(bn.weight), _np(bn.bias))
        wf = folded.weight
    fused = nn.Linear(I, O, dtype=tdt).eval()
    with torch.no_grad():
        fused.weight.copy_(torch.from_numpy(np.ascontiguousarray(wf)))
        fused.bias.copy_(torch.from_numpy(folded.bias))
        expected = bn(lin(x)).numpy()
        actual = fused(x).numpy()
    assert_close(actual, expected, OUT_TOL[dtype], "fused linear vs linear + bn")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_torch_conv_transpose_bn(dtype):
    """ConvTranspose2d's weight is (in, out, kH, kW): out_channel_axis=1."""
    torch = _torch()
    nn = torch.nn
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    rng = rng_for("fold", "torch-convT", dtype.__name__)
    torch.manual_seed(int(rng.integers(1 << 31)))
    conv = nn.ConvTranspose2d(3, 5, 3, stride=2, dtype=tdt).eval()
    bn = nn.BatchNorm2d(5, dtype=tdt)
    _randomize_bn(torch, bn, rng, True)
    bn.eval()
    x = torch.from_numpy(rng.standard_normal((2, 3, 6, 5))).to(tdt)
    folded = _fold_module(bn, _np(conv.weight), conv.bias, 1)
    fused = nn.ConvTranspose2d(3, 5, 3, stride=2, dtype=tdt).eval()
    with torch.no_grad():
        fused.weight.copy_(torch.from_numpy(folded.weight))
        fused.bias.copy_(torch.from_numpy(folded.bias))
        expected = bn(conv(x)).numpy()
        actual = fused(x).numpy()
    assert_close(actual, expected, OUT_TOL[dtype], "fused transposed conv")


def test_exported_from_the_package():
    assert bnc.fold_batch_norm is fold_batch_norm and bnc.Folded is Folded
    assert "fold_batch_norm" in bnc.__all__
