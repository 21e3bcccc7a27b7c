"""Group norm (bnc.groupnorm): against the float64 reference (channels first
and last, 2-D to 5-D, G = 1 and G = C), thread invariance, finite
differences, PyTorch, the ONNX GroupNormalization conformance cases, errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from bnc import reference as R
from bnc.groupnorm import (GroupNormSaved, group_norm, group_norm_backward,
                           group_norm_forward)
from conftest import assert_close, bit_equal, rng_for

DTYPES = (np.float32, np.float64, np.float16)
DIDS = ("f32", "f64", "f16")
TOL = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 1e-3}
STOL = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 1e-5}  # float32 statistics


def _data(shape, axis, dtype, G, loc=0.0, scale=1.0):
    """x (each channel offset), per-channel weight/bias, dy."""
    rng = rng_for("gn", shape, axis, np.dtype(dtype).name, G, loc)
    C = shape[axis]
    cshape = [1] * len(shape)
    cshape[axis] = C
    off = rng.normal(size=C).reshape(cshape) * 0.5
    x = (loc + off + scale * rng.normal(size=shape)).astype(dtype)
    sdt = np.float64 if dtype == np.float64 else np.float32
    w = rng.normal(1.0, 0.5, size=C).astype(sdt)
    b = rng.normal(size=C).astype(sdt)
    dy = rng.normal(size=shape).astype(dtype)
    return x, w, b, dy


# (shape, channel_axis, num_groups)
CASES = [
    ((4, 6), 1, 3), ((3, 8, 17), 1, 4), ((3, 17, 8), -1, 4), ((2, 12, 5, 7), 1, 1),
    ((2, 5, 7, 12), -1, 1), ((2, 12, 5, 7), 1, 12), ((2, 5, 7, 12), -1, 12),
    ((2, 8, 3, 4, 5), 1, 2), ((2, 3, 4, 5, 8), -1, 2), ((1, 4, 600, 9), 1, 2),
    ((1, 600, 9, 4), -1, 2), ((5, 32, 9, 9), 1, 8), ((5, 9, 9, 32), -1, 8),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape,axis,G", CASES)
def test_vs_reference(shape, axis, G, dtype, affine):
    x, w, b, dy = _data(shape, axis, dtype, G, loc=3.0)
    if not affine:
        w = b = None
    t = TOL[dtype]
    y, s = group_norm_forward(x, G, w, b, channel_axis=axis)
    yr, sr = R.group_norm_forward(x, G, w, b, channel_axis=axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert s.mean.shape == (shape[0], G) and s.invstd.shape == (shape[0], G)
    assert_close(y, yr, t, "y")
    st = STOL[dtype]
    assert_close(s.mean, sr.mean, st, "mean")
    assert_close(s.invstd, sr.invstd, st, "invstd")
    g = group_norm_backward(dy, x, G, w, s, channel_axis=axis)
    gr = R.group_norm_backward(dy, x, G, w, s, channel_axis=axis)  # the kernel's saved stats
    # groups of 2 elements: dx is a cancellation; compare against |g| instead
    atol = 10 * t * np.linalg.norm(dy.astype(np.float64)) * float(np.max(sr.invstd))
    assert_close(g.grad_input, gr.grad_input, 10 * t, "grad_input", atol=atol)
    assert_close(g.grad_weight, gr.grad_weight, 10 * st, "grad_weight")
    assert_close(g.grad_bias, gr.grad_bias, st, "grad_bias")
    assert g.grad_weight.shape == (shape[axis],)


@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DIDS[:2])
def test_large_offset_and_constant_groups(dtype):
    x, w, b, _ = _data((3, 8, 50), 1, dtype, 2, loc=1e4)
    assert_close(group_norm(x, 2, w, b), R.group_norm(x, 2, w, b), 10 * TOL[dtype])
    c = np.full((2, 4, 5), 3.25, dtype)
    y, s = group_norm_forward(c, 2)
    assert np.all(y == 0) and np.all(s.mean == 3.25)


@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DIDS[:2])
@pytest.mark.parametrize("kind", ["offset", "outlier_first", "ramp"])
@pytest.mark.parametrize("axis", [-1, 1], ids=["last", "first"])
def test_statistics_stay_exact(dtype, kind, axis):
    # channels last: blocks of rows are summed in one pass about a shift
    # that follows the running mean; channels first: a group in one pass
    # about the mean of its first quarter. |mean| / std = 1e4, a first value
    # far from the rest, and a mean that drifts must all keep the statistics
    # to the dtype's precision
    shape = (2, 700, 64) if axis == -1 else (2, 64, 700)
    x, w, b, _ = _data(shape, axis, dtype, 8, loc=1e4)
    t = x if axis == -1 else np.swapaxes(x, 1, 2)  # a view, (2, 700, 64) either way
    if kind == "outlier_first" and axis == -1:
        t[:, 0, :] += 1e3  # the first row of every group
    elif kind == "outlier_first":
        x[:, ::8, 0] += 1e2  # the first value of every group, one of 5600
    elif kind == "ramp":
        t += (np.arange(700) * 5.0).reshape(1, 700, 1).astype(dtype)
    y, s = group_norm_forward(x, 8, w, b, channel_axis=axis)
    yr, sr = R.group_norm_forward(x, 8, w, b, channel_axis=axis)
    # about the data's first value alone, channels first's outlier_first
    # would be off by 6e-6 in float32 (measured): the tolerance is tighter
    stol = STOL[dtype] / 10 if dtype == np.float32 else STOL[dtype]
    assert_close(s.mean, sr.mean, stol, "mean")
    assert_close(s.invstd, sr.invstd, stol, "invstd")
    assert_close(y, yr, 10 * TOL[dtype], "y")


def test_noncontiguous_and_layouts_agree():
    x, w, b, dy = _data((3, 8, 6, 5), 1, np.float64, 4, loc=1.0)
    xs = x[:, :, ::2]
    assert not xs.flags.c_contiguous
    assert_close(group_norm(xs, 4, w, b), R.group_norm(xs, 4, w, b), 1e-12)
    # channels last on the transposed data: the same numbers
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    yl, sl = group_norm_forward(xl, 4, w, b, channel_axis=-1)
    y, s = group_norm_forward(x, 4, w, b)
    assert_close(np.moveaxis(yl, -1, 1), y, 1e-12)
    gl = group_norm_backward(np.ascontiguousarray(np.moveaxis(dy, 1, -1)), xl, 4, w, sl,
                             channel_axis=-1)
    g = group_norm_backward(dy, x, 4, w, s)
    assert_close(np.moveaxis(gl.grad_input, -1, 1), g.grad_input, 1e-12)
    assert_close(gl.grad_weight, g.grad_weight, 1e-12)


def test_out_and_in_place():
    x, w, b, dy = _data((2, 4, 30), 1, np.float32, 2)
    ref = group_norm(x, 2, w, b)
    out = np.empty_like(x)
    assert group_norm(x, 2, w, b, out=out) is out and bit_equal(out, ref)
    xc = x.copy()
    assert group_norm(xc, 2, w, b, out=xc) is xc and bit_equal(xc, ref)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    refl = group_norm(xl, 2, w, b, channel_axis=-1)
    assert group_norm(xl, 2, w, b, channel_axis=-1, out=xl) is xl and bit_equal(xl, refl)


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("shape,axis,G", [((8, 32, 20, 20), 1, 8), ((8, 20, 20, 32), -1, 8),
                                          ((2, 6, 9000), 1, 3), ((3, 9000, 6), -1, 3)])
def test_thread_invariance(shape, axis, G, dtype):
    x, w, b, dy = _data(shape, axis, dtype, G, loc=2.0)
    r1 = group_norm_forward(x, G, w, b, channel_axis=axis, n_threads=1)
    g1 = group_norm_backward(dy, x, G, w, r1[1], channel_axis=axis, n_threads=1)
    for nt in (2, 3):
        r = group_norm_forward(x, G, w, b, channel_axis=axis, n_threads=nt)
        for a, c in zip((r1[0], *r1[1]), (r[0], *r[1])):
            assert bit_equal(a, c)
        g = group_norm_backward(dy, x, G, w, r1[1], channel_axis=axis, n_threads=nt)
        for a, c in zip(g1, g):
            assert bit_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16],
                         ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("offset", [0, 3], ids=["aligned", "off3"])
@pytest.mark.parametrize("shape,axis,G", [((2, 6, 1033), 1, 3), ((2, 150, 100), -1, 4),
                                          ((2, 200, 32), -1, 8)],
                         ids=["channels-first", "last-100", "last-32"])
def test_streamed_output_is_the_same_bits(dtype, offset, shape, axis, G, streamed):
    """The forward of a call past the streaming threshold streams y
    (whole 64-byte lines; see batch norm's test): forced on for a small call,
    y is the bits of ordinary stores, for 1 and 2 threads and in place
    (float16: channels twice as long, past the streaming minimum's bytes)."""
    if dtype == np.float16 and axis == 1:
        shape = shape[:-1] + (2 * shape[-1],)
    x, w, b, _ = _data(shape, axis, dtype, G)
    buf = np.empty(x.size + 8, dtype)
    out = buf[offset:offset + x.size].reshape(shape)
    kw = dict(channel_axis=axis)

    def calls(nt):
        y, s = group_norm_forward(x, G, w, b, n_threads=nt, **kw)
        yo = group_norm(x, G, w, b, out=out, n_threads=nt, **kw).copy()
        xi = x.copy()
        group_norm(xi, G, w, b, out=xi, n_threads=nt, **kw)
        return y, *s, yo, xi

    for nt in (1, 2):
        plain = calls(nt)
        for a, e in zip(streamed(lambda: calls(nt)), plain):
            assert bit_equal(a, e)


def test_inputs_unchanged():
    x, w, b, dy = _data((2, 7, 6), -1, np.float32, 2)
    copies = [a.copy() for a in (x, w, b, dy)]
    _, s = group_norm_forward(x, 2, w, b, channel_axis=-1)
    group_norm_backward(dy, x, 2, w, s, channel_axis=-1)
    for a, c in zip((x, w, b, dy), copies):
        assert bit_equal(a, c)


# ---------------------------------------------------------------------------
# finite differences (float64, through the kernels)

def _fd_check(f, args, i, dy, analytic, h=1e-6):
    a = [np.array(v, dtype=np.float64, copy=True) for v in args]
    num = np.empty_like(a[i])
    flat = a[i].reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        fp = np.sum(f(*a) * dy)
        flat[k] = old - h
        fm = np.sum(f(*a) * dy)
        flat[k] = old
        num.reshape(-1)[k] = (fp - fm) / (2 * h)
    assert_close(analytic, num, 1e-7, f"d/d arg {i}", atol=1e-9)


@pytest.mark.parametrize("shape,axis,G", [((2, 6, 3), 1, 3), ((2, 3, 4), -1, 2),
                                          ((3, 4), 1, 1), ((2, 2, 2, 4), -1, 4)])
def test_finite_differences(shape, axis, G):
    x, w, b, dy = _data(shape, axis, np.float64, G, loc=0.7)
    _, s = group_norm_forward(x, G, w, b, channel_axis=axis)
    g = group_norm_backward(dy, x, G, w, s, channel_axis=axis)
    f = lambda x_, w_, b_: group_norm(x_, G, w_, b_, channel_axis=axis)  # noqa: E731
    _fd_check(f, (x, w, b), 0, dy, g.grad_input)
    _fd_check(f, (x, w, b), 1, dy, g.grad_weight)
    _fd_check(f, (x, w, b), 2, dy, g.grad_bias)


def test_reference_finite_differences():
    x, w, b, dy = _data((2, 6, 3), 1, np.float64, 3)
    _, s = R.group_norm_forward(x, 3, w, b)
    g = R.group_norm_backward(dy, x, 3, w, s)
    _fd_check(lambda x_: R.group_norm(x_, 3, w, b), (x,), 0, dy, g.grad_input)
    _fd_check(lambda w_: R.group_norm(x, 3, w_, b), (w,), 0, dy, g.grad_weight)


# ---------------------------------------------------------------------------
# PyTorch (channels last: torch on the channels-first transpose)

TORCH_CASES = [((4, 6, 5), 1, 3), ((2, 16, 7, 9), 1, 4), ((2, 7, 9, 16), -1, 4),
               ((3, 8, 4, 4, 4), 1, 8), ((3, 4, 4, 4, 8), -1, 1), ((4, 32, 14, 14), 1, 32)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("shape,axis,G", TORCH_CASES)
def test_vs_torch(shape, axis, G, dtype):
    torch = pytest.importorskip("torch")
    x, w, b, dy = _data(shape, axis, dtype, G, loc=0.3)
    t = TOL[dtype]
    if dtype == np.float16:  # torch wants weight and bias of x's dtype
        w, b = w.astype(np.float16), b.astype(np.float16)
        t = 2e-3
    first = (lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1))) if axis == -1 else \
        (lambda a: a.copy())
    back = (lambda a: np.moveaxis(a, 1, -1)) if axis == -1 else (lambda a: a)
    tx = torch.from_numpy(first(x)).requires_grad_(True)
    tw = torch.from_numpy(w.copy()).requires_grad_(True)
    tb = torch.from_numpy(b.copy()).requires_grad_(True)
    ty = torch.nn.functional.group_norm(tx, G, tw, tb, 1e-5)
    ty.backward(torch.from_numpy(first(dy)))
    y, s = group_norm_forward(x, G, w, b, channel_axis=axis, eps=1e-5)
    g = group_norm_backward(dy, x, G, w, s, channel_axis=axis)
    assert_close(y, back(ty.detach().numpy()), t, "y")
    assert_close(g.grad_input, back(tx.grad.numpy()), 10 * t, "grad_input")
    # float16: torch's weight/bias gradients are float16; bnc's float32 from double sums
    ptol = 2e-2 if dtype == np.float16 else 10 * t
    assert_close(g.grad_weight, tw.grad.numpy(), ptol, "grad_weight")
    assert_close(g.grad_bias, tb.grad.numpy(), ptol, "grad_bias")
    _, tm, tr = torch.ops.aten.native_group_norm(
        torch.from_numpy(first(x)), None, None, shape[0], shape[axis],
        int(np.prod(shape)) // shape[0] // shape[axis], G, 1e-5)
    if dtype == np.float16:
        return  # torch's float16 statistics are float16
    assert_close(s.mean, tm.numpy().reshape(s.mean.shape), t, "mean", atol=t)
    assert_close(s.invstd, tr.numpy().reshape(s.invstd.shape), t, "invstd")


# ---------------------------------------------------------------------------
# ONNX GroupNormalization conformance cases

ONNX_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "onnx"
INDEX = ONNX_DIR / "index.json"
ONNX_CASES = ([e for e in json.loads(INDEX.read_text())
               if e["op_type"] == "GroupNormalization" and "group_normalization" in e["case"]]
              if INDEX.is_file() else [])


def onnx_scale_to_channels(v, num_groups, C):
    """ONNX GroupNormalization opset 18 takes scale and bias per GROUP (shape
    (num_groups,)); opset 21 (and bnc, as PyTorch) per channel. A per-group
    value applies to each of its C / num_groups channels: repeat it."""
    v = np.asarray(v)
    if v.shape == (C,):
        return v
    assert v.shape == (num_groups,)
    return np.repeat(v, C // num_groups)


def test_onnx_cases_found():
    if not INDEX.is_file():
        pytest.skip(f"ONNX conformance data not found at {ONNX_DIR}")
    assert len(ONNX_CASES) >= 5
    assert any(e["opset"] == 18 for e in ONNX_CASES)


@pytest.mark.parametrize("entry", ONNX_CASES, ids=[e["case"] for e in ONNX_CASES])
def test_onnx_case(entry):
    data = np.load(ONNX_DIR / entry["file"])
    attrs = json.loads(str(data["attributes_effective"]))
    x, scale, bias = data["input_0"], data["input_1"], data["input_2"]
    want = data["output_0"]
    G = int(attrs["num_groups"])
    eps = float(attrs.get("epsilon", 1e-5))
    assert int(attrs.get("stash_type", 1)) == 1
    C = x.shape[1]
    if entry["opset"] < 21:
        assert scale.shape == (G,) and G != C  # the adapter is exercised
    w = onnx_scale_to_channels(scale, G, C)
    b = onnx_scale_to_channels(bias, G, C)
    copies = [a.copy() for a in (x, scale, bias)]
    y = group_norm(x, G, w, b, eps=eps)
    assert y.dtype == want.dtype
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # the same case channels last
    yl = group_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), G, w, b, eps=eps,
                    channel_axis=-1)
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), want, rtol=1e-5, atol=1e-5)
    for a, c in zip((x, scale, bias), copies):
        assert np.array_equal(a, c)


# ---------------------------------------------------------------------------
# errors: messages name the argument; nothing is written on error

def test_errors_forward():
    x = np.ones((2, 6, 4), np.float32)
    w = np.ones(6, np.float32)
    with pytest.raises(TypeError, match="x must be a float16, float32 or float64"):
        group_norm(np.ones((2, 6), np.int32), 2)
    with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
        group_norm(np.ones(6, np.float32), 2)
    with pytest.raises(ValueError, match="x must not be empty"):
        group_norm(np.ones((0, 6), np.float32), 2)
    with pytest.raises(ValueError, match=r"num_groups \(4\) must divide the number of "
                                         r"channels \(6\)"):
        group_norm(x, 4)
    with pytest.raises(ValueError, match="num_groups must be >= 1"):
        group_norm(x, 0)
    with pytest.raises(TypeError, match="num_groups must be an int"):
        group_norm(x, 2.0)
    with pytest.raises(ValueError, match="channel_axis must be 1 .* or -1"):
        group_norm(np.ones((2, 3, 6, 4), np.float32), 3, channel_axis=2)
    with pytest.raises(np.exceptions.AxisError, match="channel_axis"):
        group_norm(x, 2, channel_axis=3)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        group_norm(x, 2, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        group_norm(x, 2, None, np.ones(6, np.float32), channel_axis=-1)
    with pytest.raises(TypeError, match="weight must have dtype float32 for float32 x"):
        group_norm(x, 2, w.astype(np.float64))
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps must be finite and > 0"):
            group_norm(x, 2, eps=eps)
    with pytest.raises(ValueError, match="n_threads must be a non-zero integer"):
        group_norm(x, 2, n_threads=0)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="weight must have shape"):
        group_norm(x, 2, np.ones(3, np.float32), out=out)
    with pytest.raises(ValueError, match="must divide"):
        group_norm(x, 5, out=out)
    assert np.all(out == 7.0)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 6, 4\)"):
        group_norm(x, 2, out=np.empty((2, 6, 3), np.float32))


def test_errors_backward():
    x = np.ones((2, 6, 4), np.float32)
    dy = np.ones_like(x)
    _, s = group_norm_forward(x, 3)
    assert isinstance(s, GroupNormSaved)
    with pytest.raises(TypeError, match="grad_out must have the dtype of x"):
        group_norm_backward(dy.astype(np.float64), x, 3, None, s)
    with pytest.raises(ValueError, match="grad_out must have the shape of x"):
        group_norm_backward(dy[:1], x, 3, None, s)
    with pytest.raises(ValueError, match=r"saved.mean must have shape \(2, 2\)"):
        group_norm_backward(dy, x, 2, None, s)
    with pytest.raises(ValueError, match=r"saved.invstd must have shape \(2, 3\)"):
        group_norm_backward(dy, x, 3, None, (s.mean, s.invstd[:1]))
    with pytest.raises(ValueError, match="saved must be a GroupNormSaved"):
        group_norm_backward(dy, x, 3, None, (s.mean,))
    with pytest.raises(TypeError, match="saved must be a GroupNormSaved"):
        group_norm_backward(dy, x, 3, None, None)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="out must not overlap grad_out"):
        group_norm_backward(dy, x, 3, None, s, out=dy)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        group_norm_backward(dy, x, 3, np.ones(2, np.float32), s, out=out)
    assert np.all(out == 7.0)


# ---------------------------------------------------------------------------
# properties

@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DIDS[:2])
@pytest.mark.parametrize("shape,axis,G", [((4, 8, 30), 1, 4), ((4, 30, 8), -1, 2)])
def test_properties(shape, axis, G, dtype):
    x, w, b, dy = _data(shape, axis, dtype, G, loc=2.0, scale=3.0)
    xg = np.moveaxis(x, axis, 1).reshape(shape[0], G, -1)
    y = np.moveaxis(group_norm(x, G, eps=1e-12, channel_axis=axis).astype(np.float64),
                    axis, 1).reshape(xg.shape)
    assert np.allclose(y.mean(axis=2), 0, atol=1e-5)
    assert np.allclose(y.var(axis=2), 1, atol=1e-4)
    assert_close(group_norm(x + dtype(8.0), G, w, b, channel_axis=axis),
                 group_norm(x, G, w, b, channel_axis=axis), 10 * TOL[dtype])
    _, s = group_norm_forward(x, G, channel_axis=axis)
    dx = group_norm_backward(dy, x, G, None, s, channel_axis=axis).grad_input
    dxg = np.moveaxis(dx.astype(np.float64), axis, 1).reshape(xg.shape)
    assert np.allclose(dxg.sum(axis=2), 0, atol=1e-3 if dtype == np.float32 else 1e-10)


def test_exported_from_the_package():
    import bnc
    import bnc.groupnorm
    for name in ("group_norm", "group_norm_forward", "group_norm_backward", "GroupNormSaved"):
        assert name in bnc.__all__ and getattr(bnc, name) is getattr(bnc.groupnorm, name)


@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DIDS[:2])
@pytest.mark.parametrize("axis", [1, -1], ids=["nchw", "nhwc"])
def test_infinite_weight_gives_signed_infinities(dtype, axis):
    # the mean's low part is folded into the bias: an infinite scale must
    # still give +-inf with the sign of x - mean (NaN only where x == mean)
    x, w, b, _ = _data((3, 4, 7) if axis == 1 else (3, 7, 4), axis, dtype, 2, loc=0.3)
    w[1] = np.inf
    y = group_norm(x, 2, w, b, channel_axis=axis)
    yr = R.group_norm(x, 2, w, b, channel_axis=axis)
    assert np.array_equal(np.isposinf(y), np.isposinf(yr))
    assert np.array_equal(np.isneginf(y), np.isneginf(yr))
    assert np.isinf(yr).sum() > 0
