"""Layer norm and RMS norm: bnc.layernorm against the float64 reference,
finite differences, thread invariance, PyTorch (when installed), the ONNX
LayerNormalization / RMSNormalization conformance cases, and errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from bnc import reference as R
from bnc.layernorm import (
    LayerNormSaved, RMSNormSaved, layer_norm, layer_norm_backward, layer_norm_forward,
    rms_norm, rms_norm_backward, rms_norm_forward,
)
from conftest import assert_close, bit_equal, rng_for

DTYPES = [np.float32, np.float64, np.float16]
DIDS = ["f32", "f64", "f16"]
TOL = {np.float32: 2e-6, np.float64: 1e-13, np.float16: 1e-3}  # outputs of x's dtype
STOL = {np.float32: 2e-6, np.float64: 1e-13, np.float16: 2e-6}  # statistics, weight grads


def sdtype(dtype):
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)

CASES = [
    ((4, 7), -1),
    ((1, 1), -1),
    ((3, 1), -1),
    ((7,), 0),  # one row
    ((2, 3), 0),  # the whole array is one row
    ((3, 5, 33), 1),
    ((2, 3, 4, 5), 2),
    ((2, 3, 4, 5), -3),
    ((5, 1000), -1),
    ((37, 129), -1),  # rows with a tail
    ((300, 257), -1),  # many rows: parallel path, several chunks
    ((4, 20000), -1),  # long rows (several lane flushes)
    ((130, 3), -1),  # short rows, more rows than chunks
]
CIDS = [f"{'x'.join(map(str, s))}-a{a}" for s, a in CASES]


def _data(shape, axis, dtype, loc=0.0, scale=1.0, key=()):
    rng = rng_for("ln", shape, axis, np.dtype(dtype).name, key)
    norm = shape[axis % len(shape):]
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    w = (rng.uniform(0.5, 1.5, norm) * rng.choice([-1.0, 1.0], norm)).astype(sdtype(dtype))
    b = rng.standard_normal(norm).astype(sdtype(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("shape,axis", CASES, ids=CIDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_norm_vs_reference(shape, axis, dtype, affine):
    x, w, b, dy = _data(shape, axis, dtype)
    if not affine:
        w = b = None
    xc, dyc = x.copy(), dy.copy()
    tol, stol = TOL[dtype], STOL[dtype]
    y, saved = layer_norm_forward(x, w, b, axis=axis)
    yr, sr = R.layer_norm_forward(x, w, b, axis=axis)
    lead = shape[:axis % len(shape)]
    assert y.dtype == dtype and y.shape == shape
    assert isinstance(saved, LayerNormSaved)
    assert saved.mean.shape == lead and saved.mean.dtype == sdtype(dtype)
    assert_close(y, yr, tol, "y")
    assert_close(saved.mean, sr.mean, stol, "mean", atol=stol)
    assert_close(saved.invstd, sr.invstd, stol, "invstd")
    assert bit_equal(layer_norm(x, w, b, axis=axis), y)
    g = layer_norm_backward(dy, x, w, saved, axis=axis)
    gr = R.layer_norm_backward(dy, x, w, saved, axis=axis)
    assert g.grad_input.dtype == dtype and g.grad_weight.dtype == sdtype(dtype)
    assert_close(g.grad_input, gr.grad_input, 10 * tol, "grad_input", atol=tol)
    assert_close(g.grad_weight, gr.grad_weight, stol, "grad_weight")
    assert_close(g.grad_bias, gr.grad_bias, stol, "grad_bias")
    assert g.grad_weight.shape == shape[axis % len(shape):]
    assert bit_equal(x, xc) and bit_equal(dy, dyc)


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("shape,axis", CASES, ids=CIDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_rms_norm_vs_reference(shape, axis, dtype, affine):
    x, w, _, dy = _data(shape, axis, dtype, loc=0.5)
    if not affine:
        w = None
    tol, stol = TOL[dtype], STOL[dtype]
    y, saved = rms_norm_forward(x, w, axis=axis)
    yr, sr = R.rms_norm_forward(x, w, axis=axis, eps_dtype=sdtype(dtype))
    assert isinstance(saved, RMSNormSaved)
    assert saved.invrms.shape == shape[:axis % len(shape)]
    assert saved.invrms.dtype == sdtype(dtype)
    assert_close(y, yr, tol, "y")
    assert_close(saved.invrms, sr.invrms, stol, "invrms")
    assert bit_equal(rms_norm(x, w, axis=axis), y)
    g = rms_norm_backward(dy, x, w, saved, axis=axis)
    gr = R.rms_norm_backward(dy, x, w, saved, axis=axis)
    assert g.grad_bias is None
    assert_close(g.grad_input, gr.grad_input, 10 * tol, "grad_input", atol=tol)
    assert_close(g.grad_weight, gr.grad_weight, stol, "grad_weight")


@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DIDS[:2])
def test_large_offset(dtype):
    """|mean|/std = 1e4 (float32) or 1e6 (float64) still normalizes to a few ulps."""
    off = 1e4 if dtype == np.float32 else 1e6
    x, w, b, _ = _data((16, 300), -1, dtype, loc=off)
    y, s = layer_norm_forward(x, w, b)
    yr, sr = R.layer_norm_forward(x, w, b)
    assert_close(y, yr, 1e-5 if dtype == np.float32 else 1e-9, "y")
    assert_close(s.invstd, sr.invstd, 1e-5 if dtype == np.float32 else 1e-9, "invstd")


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
def test_constant_rows(dtype):
    x = np.full((3, 50), 2.5, dtype)
    y, s = layer_norm_forward(x, eps=1e-5)
    assert np.all(y == 0)
    assert np.allclose(s.invstd, 1 / np.sqrt(1e-5))
    assert np.all(s.mean == 2.5)


def test_nan_propagates():
    x = np.ones((3, 40), np.float32)
    x[1, 7] = np.nan
    y = layer_norm(x)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()
    assert np.isnan(rms_norm(x)[1]).all()


@pytest.mark.parametrize("layout", ["F", "sliced", "reversed"])
def test_noncontiguous(layout):
    x, w, b, dy = _data((6, 8, 40), 1, np.float64)
    view = {"F": lambda a: np.asfortranarray(a), "sliced": lambda a: np.repeat(
        a, 2, axis=-1)[..., ::2], "reversed": lambda a: a[::-1, ::-1, ::-1].copy()[
        ::-1, ::-1, ::-1]}[layout]
    xv, dyv = view(x), view(dy)
    assert np.array_equal(xv, x)
    y, s = layer_norm_forward(xv, w, b, axis=1)
    y0, s0 = layer_norm_forward(x, w, b, axis=1)
    assert bit_equal(np.ascontiguousarray(y), y0)
    g = layer_norm_backward(dyv, xv, w, s, axis=1)
    g0 = layer_norm_backward(dy, x, w, s0, axis=1)
    for a, c in zip(g, g0):
        assert bit_equal(np.ascontiguousarray(a), c)
    assert bit_equal(np.ascontiguousarray(rms_norm(xv, w, axis=1)), rms_norm(x, w, axis=1))


def test_out_and_in_place():
    x, w, b, dy = _data((10, 64), -1, np.float32)
    ref = layer_norm(x, w, b)
    out = np.empty_like(x)
    assert layer_norm(x, w, b, out=out) is out and bit_equal(out, ref)
    xi = x.copy()
    assert layer_norm(xi, w, b, out=xi) is xi and bit_equal(xi, ref)
    xr = x.copy()
    assert bit_equal(rms_norm(xr, w, out=xr), rms_norm(x, w))
    y, s = layer_norm_forward(x, w, b)
    dx = np.empty_like(x)
    g = layer_norm_backward(dy, x, w, s, out=dx)
    assert g.grad_input is dx and bit_equal(dx, layer_norm_backward(dy, x, w, s).grad_input)
    fo = np.empty_like(x, order="F")
    assert layer_norm(x, w, b, out=fo) is fo and bit_equal(np.ascontiguousarray(fo), ref)


@pytest.mark.parametrize("shape", [(300, 257), (64, 40, 33), (3, 50000), (2000, 16)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
def test_thread_invariance(shape, dtype):
    x, w, b, dy = _data(shape, -1, dtype, loc=3.0)
    r1 = layer_norm_forward(x, w, b, n_threads=1)
    r2 = layer_norm_forward(x, w, b, n_threads=2)
    r3 = layer_norm_forward(x, w, b, n_threads=3)
    for a, c, e in zip((r1[0], *r1[1]), (r2[0], *r2[1]), (r3[0], *r3[1])):
        assert bit_equal(a, c) and bit_equal(a, e)
    g1 = layer_norm_backward(dy, x, w, r1[1], n_threads=1)
    for nt in (2, 3, 5):
        g = layer_norm_backward(dy, x, w, r1[1], n_threads=nt)
        for a, c in zip(g1, g):
            assert bit_equal(a, c)
    q1 = rms_norm_forward(x, w, n_threads=1)
    q2 = rms_norm_forward(x, w, n_threads=2)
    assert bit_equal(q1[0], q2[0]) and bit_equal(q1[1].invrms, q2[1].invrms)
    h1 = rms_norm_backward(dy, x, w, q1[1], n_threads=1)
    h2 = rms_norm_backward(dy, x, w, q1[1], n_threads=2)
    assert bit_equal(h1.grad_input, h2.grad_input)
    assert bit_equal(h1.grad_weight, h2.grad_weight)


# ---------------------------------------------------------------------------
# finite differences (float64, through the kernels)

def _fd_check(f, args, i, dy, analytic, h=1e-6):
    """Central differences of sum(f(*args) * dy) in args[i] vs `analytic`."""
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


@pytest.mark.parametrize("shape,axis", [((3, 5), -1), ((2, 3, 4), 1), ((4, 3), 0)])
def test_layer_norm_finite_differences(shape, axis):
    x, w, b, dy = _data(shape, axis, np.float64, loc=0.7)
    _, s = layer_norm_forward(x, w, b, axis=axis)
    g = layer_norm_backward(dy, x, w, s, axis=axis)
    f = lambda x_, w_, b_: layer_norm(x_, w_, b_, axis=axis)  # noqa: E731
    _fd_check(f, (x, w, b), 0, dy, g.grad_input)
    _fd_check(f, (x, w, b), 1, dy, g.grad_weight)
    _fd_check(f, (x, w, b), 2, dy, g.grad_bias)


@pytest.mark.parametrize("shape,axis", [((3, 5), -1), ((2, 3, 4), 1), ((4, 3), 0)])
def test_rms_norm_finite_differences(shape, axis):
    x, w, _, dy = _data(shape, axis, np.float64, loc=0.7)
    _, s = rms_norm_forward(x, w, axis=axis, eps=1e-3)
    g = rms_norm_backward(dy, x, w, s, axis=axis)
    f = lambda x_, w_: rms_norm(x_, w_, axis=axis, eps=1e-3)  # noqa: E731
    _fd_check(f, (x, w), 0, dy, g.grad_input)
    _fd_check(f, (x, w), 1, dy, g.grad_weight)


def test_reference_finite_differences():
    x, w, b, dy = _data((3, 4), -1, np.float64)
    _, s = R.layer_norm_forward(x, w, b)
    g = R.layer_norm_backward(dy, x, w, s)
    _fd_check(lambda x_: R.layer_norm(x_, w, b), (x,), 0, dy, g.grad_input)
    _, s = R.rms_norm_forward(x, w, eps=1e-3)
    g = R.rms_norm_backward(dy, x, w, s)
    _fd_check(lambda x_: R.rms_norm(x_, w, eps=1e-3), (x,), 0, dy, g.grad_input)


def test_rms_default_eps_is_machine_epsilon():
    x = np.full((2, 4), 1e-4, np.float32)
    assert bit_equal(rms_norm(x), rms_norm(x, eps=float(np.finfo(np.float32).eps)))
    # float16 computes in float32 and takes float32's epsilon (as PyTorch does)
    x16 = np.full((2, 4), 1e-3, np.float16)
    assert bit_equal(rms_norm(x16), rms_norm(x16, eps=float(np.finfo(np.float32).eps)))
    x64 = x.astype(np.float64)
    assert bit_equal(rms_norm(x64), rms_norm(x64, eps=float(np.finfo(np.float64).eps)))


# ---------------------------------------------------------------------------
# PyTorch

TORCH_CASES = [((4, 7), -1), ((8, 16, 64), -1), ((2, 3, 4, 5), 1), ((5, 300), 0),
               ((16, 197, 96), -1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("shape,axis", TORCH_CASES)
def test_vs_torch(shape, axis, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b, dy = _data(shape, axis, dtype, loc=0.3)
    norm = shape[axis % len(shape):]
    tol = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 2e-3}[dtype]
    if dtype == np.float16:  # torch wants weight and bias of x's dtype
        w, b = w.astype(np.float16), b.astype(np.float16)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tw = torch.from_numpy(w.copy()).requires_grad_(True)
    tb = torch.from_numpy(b.copy()).requires_grad_(True)
    ty = F.layer_norm(tx, norm, tw, tb, 1e-5)
    ty.backward(torch.from_numpy(dy))
    y, s = layer_norm_forward(x, w, b, axis=axis, eps=1e-5)
    g = layer_norm_backward(dy, x, w, s, axis=axis)
    assert_close(y, ty.detach().numpy(), tol, "y")
    assert_close(g.grad_input, tx.grad.numpy(), 10 * tol, "grad_input")
    # float16: torch's weight/bias gradients are float16 sums (about 6e-3 off
    # the float64 reference on 16x197x96); bnc's are float32 from double sums
    ptol = 2e-2 if dtype == np.float16 else tol
    assert_close(g.grad_weight, tw.grad.numpy(), ptol, "grad_weight")
    assert_close(g.grad_bias, tb.grad.numpy(), ptol, "grad_bias")
    # saved statistics: torch's native_layer_norm keeps the normalized dims as 1
    _, tm, tr = torch.native_layer_norm(torch.from_numpy(x), norm, None, None, 1e-5)
    stol = 1e-3 if dtype == np.float16 else tol  # torch returns float16 statistics
    assert_close(s.mean, tm.numpy().reshape(s.mean.shape), stol, "mean", atol=stol)
    assert_close(s.invstd, tr.numpy().reshape(s.invstd.shape), stol, "invstd")

    for eps in (None, 1e-6):
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        tw = torch.from_numpy(w.copy()).requires_grad_(True)
        ty = F.rms_norm(tx, norm, tw, eps)
        ty.backward(torch.from_numpy(dy))
        y, s = rms_norm_forward(x, w, axis=axis, eps=eps)
        g = rms_norm_backward(dy, x, w, s, axis=axis)
        assert_close(y, ty.detach().numpy(), tol, f"rms y eps={eps}")
        assert_close(g.grad_input, tx.grad.numpy(), 10 * tol, "rms grad_input")
        assert_close(g.grad_weight, tw.grad.numpy(), ptol, "rms grad_weight")


# ---------------------------------------------------------------------------
# ONNX LayerNormalization / RMSNormalization conformance cases

ONNX_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "onnx"
INDEX = ONNX_DIR / "index.json"
ONNX_CASES = ([e for e in json.loads(INDEX.read_text())
               if e["op_type"] in ("LayerNormalization", "RMSNormalization")
               and ("layer_normalization" in e["case"] or "rms_normalization" in e["case"])]
              if INDEX.is_file() else [])


def test_onnx_cases_found():
    if not INDEX.is_file():
        pytest.skip(f"ONNX conformance data not found at {ONNX_DIR}")
    assert sum(e["op_type"] == "LayerNormalization" for e in ONNX_CASES) >= 20
    assert sum(e["op_type"] == "RMSNormalization" for e in ONNX_CASES) >= 10


@pytest.mark.parametrize("entry", ONNX_CASES, ids=[e["case"] for e in ONNX_CASES])
def test_onnx_case(entry):
    data = np.load(ONNX_DIR / entry["file"])
    attrs = json.loads(str(data["attributes_effective"]))
    meta = json.loads(str(data["meta"]))
    inputs = [data[f"input_{i}"] for i in range(len(meta["input_names"]))]
    outputs = [data[f"output_{i}"] for i in range(len(meta["output_names"]))]
    axis = int(attrs.get("axis", -1))
    eps = float(attrs.get("epsilon", 1e-5))
    assert int(attrs.get("stash_type", 1)) == 1  # statistics in float32: as bnc does
    x = inputs[0]
    copies = [a.copy() for a in inputs]
    norm = x.shape[axis % x.ndim:]
    # ONNX allows scale/bias broadcastable to the normalized shape
    w = np.ascontiguousarray(np.broadcast_to(inputs[1], norm))
    if entry["op_type"] == "LayerNormalization":
        b = np.ascontiguousarray(np.broadcast_to(inputs[2], norm)) if len(inputs) > 2 else None
        y, s = layer_norm_forward(x, w, b, axis=axis, eps=eps)
        stats = [s.mean, s.invstd]
    else:
        y, s = rms_norm_forward(x, w, axis=axis, eps=eps)
        stats = [s.invrms]
    assert y.dtype == outputs[0].dtype
    np.testing.assert_allclose(y, outputs[0], rtol=1e-5, atol=1e-5, err_msg="Y")
    for name, got, want in zip(meta["output_names"][1:], stats, outputs[1:]):
        # ONNX keeps the normalized axes with size 1
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    for a, c in zip(inputs, copies):
        assert np.array_equal(a, c)


# ---------------------------------------------------------------------------
# errors: messages name the argument; nothing is written on error

def test_errors_forward():
    x = np.ones((4, 6), np.float32)
    w = np.ones(6, np.float32)
    with pytest.raises(TypeError, match="x must be a float16, float32 or float64"):
        layer_norm(np.ones((2, 3), np.int32))
    with pytest.raises(TypeError, match="x must be a float16, float32 or float64"):
        rms_norm(np.ones((2, 3), np.complex64))
    with pytest.raises(ValueError, match="x must not be empty"):
        layer_norm(np.ones((0, 3), np.float32))
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        layer_norm(np.float32(1.0))
    with pytest.raises(np.exceptions.AxisError, match="axis"):
        layer_norm(x, axis=2)
    with pytest.raises(TypeError, match="axis must be an integer"):
        layer_norm(x, axis=1.5)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        layer_norm(x, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(4, 6\)"):
        layer_norm(x, None, np.ones(6, np.float32), axis=0)
    with pytest.raises(TypeError, match="weight must have dtype float32 for float32 x"):
        layer_norm(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="bias must have dtype float64 for float64 x"):
        layer_norm(x.astype(np.float64), None, w)
    with pytest.raises(TypeError, match="weight must hold real numbers"):
        layer_norm(x, ["a"] * 6)
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be finite and > 0"):
            layer_norm(x, eps=eps)
        with pytest.raises(ValueError, match="eps must be finite and > 0"):
            rms_norm(x, eps=eps)
    with pytest.raises(TypeError, match="eps must be a real number"):
        layer_norm(x, eps="x")
    with pytest.raises(ValueError, match="n_threads must be a non-zero integer"):
        layer_norm(x, n_threads=0)


def test_errors_out_untouched():
    x = np.ones((4, 6), np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="weight must have shape"):
        layer_norm(x, np.ones(3, np.float32), out=out)
    assert np.all(out == 7.0)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        layer_norm(x, out=np.empty((4, 6)))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 6\)"):
        layer_norm(x, out=np.empty((4, 5), np.float32))
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        layer_norm(x, out=ro)
    big = np.zeros((5, 6), np.float32)
    with pytest.raises(ValueError, match="out must not overlap x"):
        layer_norm(big[:4], out=big[1:])


def test_errors_backward():
    x = np.ones((4, 6), np.float32)
    dy = np.ones_like(x)
    y, s = layer_norm_forward(x)
    with pytest.raises(TypeError, match="grad_out must have the dtype of x"):
        layer_norm_backward(dy.astype(np.float64), x, None, s)
    with pytest.raises(TypeError, match="saved.invstd must have dtype float32"):
        layer_norm_backward(dy, x, None, (s.mean, s.invstd.astype(np.float64)))
    with pytest.raises(ValueError, match="grad_out must have the shape of x"):
        layer_norm_backward(dy[:3], x, None, s)
    with pytest.raises(ValueError, match=r"saved.mean must have shape \(4,\)"):
        layer_norm_backward(dy, x, None, (s.mean[:3], s.invstd))
    with pytest.raises(ValueError, match="saved must be a LayerNormSaved"):
        layer_norm_backward(dy, x, None, (s.mean,))
    with pytest.raises(TypeError, match="saved must be a LayerNormSaved"):
        layer_norm_backward(dy, x, None, None)
    with pytest.raises(ValueError, match=r"saved.invrms must have shape \(4,\)"):
        rms_norm_backward(dy, x, None, (np.ones(3, np.float32),))
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        rms_norm_backward(dy, x, np.ones(2, np.float32), rms_norm_forward(x)[1])
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="out must not overlap grad_out"):
        layer_norm_backward(dy, x, None, s, out=dy)
    with pytest.raises(ValueError, match="weight must have shape"):
        layer_norm_backward(dy, x, np.ones(2, np.float32), s, out=out)
    assert np.all(out == 7.0)


# ---------------------------------------------------------------------------
# properties

@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DIDS[:2])
@pytest.mark.parametrize("shape,axis", [((50, 300), -1), ((6, 7, 40), 1)])
def test_properties(shape, axis, dtype):
    x, w, b, dy = _data(shape, axis, dtype, loc=2.0, scale=3.0)
    axes = tuple(range(axis % len(shape), len(shape)))
    y = layer_norm(x, eps=1e-12).astype(np.float64)
    assert np.allclose(y.mean(axis=axes), 0, atol=1e-5)
    assert np.allclose(y.var(axis=axes), 1, atol=1e-4)
    # invariance to x + c (c exact in the dtype)
    assert_close(layer_norm(x + dtype(8.0), w, b, axis=axis), layer_norm(x, w, b, axis=axis),
                 1e-5 if dtype == np.float32 else 1e-12)
    # the gradient of x sums to zero over each row
    _, s = layer_norm_forward(x, w, b, axis=axis)
    dx = layer_norm_backward(dy, x, w, s, axis=axis).grad_input.astype(np.float64)
    assert np.allclose(dx.sum(axis=axes), 0, atol=1e-3 if dtype == np.float32 else 1e-10)
    # RMS norm: unit mean square
    q = rms_norm(x, eps=1e-12, axis=axis).astype(np.float64)
    assert np.allclose((q * q).mean(axis=axes), 1, atol=1e-4)


def test_concurrent_calls_match_serial():
    from concurrent.futures import ThreadPoolExecutor
    x, w, b, dy = _data((256, 512), -1, np.float32)
    y0, s0 = layer_norm_forward(x, w, b)
    g0 = layer_norm_backward(dy, x, w, s0)

    def run(_):
        y, s = layer_norm_forward(x, w, b)
        g = layer_norm_backward(dy, x, w, s)
        return bit_equal(y, y0) and all(bit_equal(a, c) for a, c in zip(g, g0))

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(run, range(16)))


def test_exported_from_the_package():
    import bnc
    import bnc.layernorm
    for name in ("layer_norm", "layer_norm_forward", "layer_norm_backward", "rms_norm",
                 "rms_norm_forward", "rms_norm_backward", "LayerNormSaved", "RMSNormSaved"):
        assert name in bnc.__all__ and getattr(bnc, name) is getattr(bnc.layernorm, name)
