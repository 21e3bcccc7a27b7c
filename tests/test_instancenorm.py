"""Instance norm (bnc.instancenorm): against the float64 reference (channels
first and last, 3-D to 5-D, strided), running statistics, use_input_stats=False,
thread invariance, finite differences, PyTorch, errors (nothing written)."""

import numpy as np
import pytest

import bnc
from bnc import reference as R
from bnc.instancenorm import (InstanceNormSaved, instance_norm, instance_norm_backward,
                              instance_norm_forward)
from conftest import assert_close, bit_equal, numeric_grad, rng_for

DTYPES = (np.float32, np.float64, np.float16)
DIDS = ("f32", "f64", "f16")
TOL = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 1e-3}
STOL = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 1e-5}  # float32 statistics


def _sdt(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def _data(shape, axis, dtype, loc=0.0, scale=1.0):
    """x (each (n, c) offset), per-channel weight/bias, dy."""
    rng = rng_for("in", shape, axis, np.dtype(dtype).name, loc)
    ax = axis % len(shape)
    cshape = [1] * len(shape)
    cshape[0], cshape[ax] = shape[0], shape[ax]
    off = rng.normal(size=cshape)
    x = (loc + off + scale * rng.normal(size=shape)).astype(dtype)
    w = rng.normal(1.0, 0.5, size=shape[ax]).astype(_sdt(dtype))
    b = rng.normal(size=shape[ax]).astype(_sdt(dtype))
    dy = rng.normal(size=shape).astype(dtype)
    return x, w, b, dy


CASES = [((4, 6, 7), 1), ((4, 7, 6), -1), ((2, 12, 5, 7), 1), ((2, 5, 7, 12), -1),
         ((2, 3, 3, 4, 5), 1), ((2, 3, 4, 5, 3), -1), ((1, 3, 2000), 1), ((1, 2000, 3), -1),
         ((3, 70, 9, 9), 1), ((3, 9, 9, 70), -1), ((2, 1, 2), 1), ((2, 2, 1), -1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape,axis", CASES)
def test_vs_reference(shape, axis, dtype, affine):
    x, w, b, dy = _data(shape, axis, dtype, loc=3.0)
    if not affine:
        w = b = None
    t, st = TOL[dtype], STOL[dtype]
    y, s = instance_norm_forward(x, w, b, channel_axis=axis)
    yr, sr = R.instance_norm_forward(x, w, b, channel_axis=axis)
    N, C = shape[0], shape[axis]
    assert isinstance(s, InstanceNormSaved)
    assert y.dtype == x.dtype and y.shape == x.shape
    for a, e, name in zip(s, sr, ("mean", "invstd", "var")):
        assert a.shape == (N, C) and a.dtype == _sdt(dtype)
        assert_close(a, e, st, name)
    assert_close(y, yr, t, "y")
    for use in (True, False):
        g = instance_norm_backward(dy, x, w, s, channel_axis=axis, use_input_stats=use)
        gr = R.instance_norm_backward(dy, x, w, s, channel_axis=axis, use_input_stats=use)
        atol = 10 * t * np.linalg.norm(dy.astype(np.float64)) * float(np.max(sr.invstd))
        assert_close(g.grad_input, gr.grad_input, 10 * t, "grad_input", atol=atol)
        assert_close(g.grad_weight, gr.grad_weight, 10 * st, "grad_weight")
        assert_close(g.grad_bias, gr.grad_bias, st, "grad_bias")


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("shape,axis", [((3, 4, 5, 6), 1), ((3, 5, 6, 4), -1)])
@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
def test_running_stats_vs_reference(shape, axis, dtype, momentum):
    x, w, b, _ = _data(shape, axis, dtype, loc=-2.0)
    C = shape[axis]
    sdt = _sdt(dtype)
    rng = np.random.default_rng(5)
    rm, rv = rng.normal(size=C).astype(sdt), rng.uniform(0.5, 2, size=C).astype(sdt)
    rm_r, rv_r = rm.astype(np.float64), rv.astype(np.float64)
    nbt, nbt_r = np.array(3, np.int64), np.array(3, np.int64)
    y = instance_norm(x, w, b, rm, rv, momentum=momentum, channel_axis=axis,
                      num_batches_tracked=nbt)
    yr = R.instance_norm(x, w, b, rm_r, rv_r, momentum=momentum, channel_axis=axis,
                         num_batches_tracked=nbt_r)
    assert_close(y, yr, TOL[dtype], "y")
    assert_close(rm, rm_r, STOL[dtype], "running_mean")
    assert_close(rv, rv_r, STOL[dtype], "running_var")
    assert int(nbt) == int(nbt_r) == 4
    # with the running statistics, which stay unchanged
    copies = (rm.copy(), rv.copy())
    y2 = instance_norm(x, w, b, rm, rv, use_input_stats=False, channel_axis=axis)
    y2r = R.instance_norm(x, w, b, rm, rv, use_input_stats=False, channel_axis=axis)
    assert_close(y2, y2r, TOL[dtype], "y (running statistics)")
    assert bit_equal(rm, copies[0]) and bit_equal(rv, copies[1])


def test_use_input_stats_false_saved_and_backward():
    x, w, b, dy = _data((3, 4, 5), 1, np.float64)
    rm, rv = np.array([0.1, -0.2, 0.3, 0.0]), np.array([1.0, 2.0, 0.5, 1.5])
    y, s = instance_norm_forward(x, w, b, mean=rm, var=rv)
    assert s.mean.shape == (3, 4) and np.all(s.mean == rm) and np.all(s.var == rv)
    assert_close(s.invstd[0], 1 / np.sqrt(rv + 1e-5), 1e-15)
    g = instance_norm_backward(dy, x, w, s, use_input_stats=False)
    assert_close(g.grad_input, dy * (w / np.sqrt(rv + 1e-5))[:, None], 1e-14)
    # an infinite x does not turn the constant-statistics dx into NaN
    xi = x.copy()
    xi[0, 0, 0] = np.inf
    gi = instance_norm_backward(dy, xi, w, s, use_input_stats=False)
    assert np.isfinite(gi.grad_input).all()


@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DIDS[:2])
def test_large_offset_and_constant_instances(dtype):
    x, w, b, _ = _data((3, 5, 40), 1, dtype, loc=1e4)
    assert_close(instance_norm(x, w, b), R.instance_norm(x, w, b), 10 * TOL[dtype])
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    assert_close(instance_norm(xl, w, b, channel_axis=-1),
                 R.instance_norm(xl, w, b, channel_axis=-1), 10 * TOL[dtype])
    for shape, ax in (((2, 3, 7), 1), ((2, 7, 3), -1)):
        c = np.full(shape, 3.25, dtype)
        y, s = instance_norm_forward(c, channel_axis=ax)
        assert np.all(y == 0) and np.all(s.mean == 3.25) and np.all(s.var == 0)


def test_strided_and_layouts_agree():
    x, w, b, dy = _data((3, 4, 6, 10), 1, np.float64, loc=1.0)
    xs, dys = x[:, :, ::2, 1:8], dy[:, :, ::2, 1:8]
    assert not xs.flags.c_contiguous
    y, s = instance_norm_forward(xs, w, b)
    assert_close(y, R.instance_norm(xs, w, b), 1e-12)
    g = instance_norm_backward(dys, xs, w, s)
    assert_close(g.grad_input, R.instance_norm_backward(dys, xs, w, s).grad_input, 1e-11)
    xl = np.moveaxis(x, 1, -1)  # a channels-last view, not C-contiguous
    yl, sl = instance_norm_forward(xl, w, b, channel_axis=-1)
    y0, s0 = instance_norm_forward(x, w, b)
    assert_close(np.moveaxis(yl, -1, 1), y0, 1e-12)
    assert_close(sl.var, s0.var, 1e-12)
    gl = instance_norm_backward(np.moveaxis(dy, 1, -1), xl, w, sl, channel_axis=-1)
    g0 = instance_norm_backward(dy, x, w, s0)
    assert_close(np.moveaxis(gl.grad_input, -1, 1), g0.grad_input, 1e-12)
    assert_close(gl.grad_weight, g0.grad_weight, 1e-12)


def test_out_and_in_place():
    x, w, b, dy = _data((2, 4, 30), 1, np.float32)
    ref = instance_norm(x, w, b)
    out = np.empty_like(x)
    assert instance_norm(x, w, b, out=out) is out and bit_equal(out, ref)
    xc = x.copy()
    assert instance_norm(xc, w, b, out=xc) is xc and bit_equal(xc, ref)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    refl = instance_norm(xl, w, b, channel_axis=-1)
    assert instance_norm(xl, w, b, channel_axis=-1, out=xl) is xl and bit_equal(xl, refl)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    r2 = instance_norm(x, w, b, rm, rv, use_input_stats=False)
    xc = x.copy()
    assert instance_norm(xc, w, b, rm, rv, use_input_stats=False, out=xc) is xc
    assert bit_equal(xc, r2)
    _, s = instance_norm_forward(x, w, b)
    gref = instance_norm_backward(dy, x, w, s)
    gout = np.empty_like(x)
    g = instance_norm_backward(dy, x, w, s, out=gout)
    assert g.grad_input is gout and bit_equal(gout, gref.grad_input)


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("shape,axis", [((8, 32, 20, 20), 1), ((8, 20, 20, 32), -1),
                                        ((2, 6, 9000), 1), ((3, 9000, 6), -1)])
def test_thread_invariance(shape, axis, dtype):
    x, w, b, dy = _data(shape, axis, dtype, loc=2.0)
    C = shape[axis]
    rms = []
    for nt in (1, 2, 3):
        rm, rv = np.zeros(C, _sdt(dtype)), np.ones(C, _sdt(dtype))
        y = instance_norm(x, w, b, rm, rv, channel_axis=axis, n_threads=nt)
        r = instance_norm_forward(x, w, b, channel_axis=axis, n_threads=nt)
        g = instance_norm_backward(dy, x, w, r[1], channel_axis=axis, n_threads=nt)
        rms.append((y, rm, rv, r[0], *r[1], *g))
    for other in rms[1:]:
        for a, c in zip(rms[0], other):
            assert bit_equal(a, c)


def test_inputs_unchanged():
    x, w, b, dy = _data((2, 7, 6), -1, np.float32)
    copies = [a.copy() for a in (x, w, b, dy)]
    _, s = instance_norm_forward(x, w, b, channel_axis=-1)
    instance_norm_backward(dy, x, w, s, channel_axis=-1)
    for a, c in zip((x, w, b, dy), copies):
        assert bit_equal(a, c)


# ---------------------------------------------------------------------------
# finite differences (float64, through the kernels)

@pytest.mark.parametrize("use", [True, False])
@pytest.mark.parametrize("shape,axis", [((2, 3, 4), 1), ((2, 4, 3), -1), ((2, 2, 2, 3), 1),
                                        ((1, 2, 2, 3), -1)])
def test_finite_differences(shape, axis, use):
    x, w, b, dy = _data(shape, axis, np.float64, loc=0.7)
    C = shape[axis]
    mv = (None, None) if use else (np.linspace(-0.5, 0.5, C), np.linspace(0.5, 2, C))
    _, s = instance_norm_forward(x, w, b, mean=mv[0], var=mv[1], channel_axis=axis)
    g = instance_norm_backward(dy, x, w, s, channel_axis=axis, use_input_stats=use)

    def loss():
        y = instance_norm_forward(x, w, b, mean=mv[0], var=mv[1], channel_axis=axis)[0]
        return float(np.sum(y * dy))
    for a, analytic, name in ((x, g.grad_input, "x"), (w, g.grad_weight, "weight"),
                              (b, g.grad_bias, "bias")):
        assert_close(analytic, numeric_grad(loss, a, h=1e-6), 1e-7, f"d/d {name}", atol=1e-9)


def test_reference_finite_differences():
    x, w, b, dy = _data((2, 3, 5), 1, np.float64)
    _, s = R.instance_norm_forward(x, w, b)
    g = R.instance_norm_backward(dy, x, w, s)
    loss = lambda: float(np.sum(R.instance_norm(x, w, b) * dy))  # noqa: E731
    assert_close(g.grad_input, numeric_grad(loss, x, h=1e-6), 1e-7, atol=1e-9)
    assert_close(g.grad_weight, numeric_grad(loss, w, h=1e-6), 1e-7, atol=1e-9)


# ---------------------------------------------------------------------------
# PyTorch (channels last: torch on the channels-first transpose)

TORCH_CASES = [((4, 6, 5), 1), ((2, 16, 7, 9), 1), ((2, 7, 9, 16), -1),
               ((3, 8, 4, 4, 4), 1), ((3, 4, 4, 4, 8), -1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DIDS)
@pytest.mark.parametrize("use", [True, False])
@pytest.mark.parametrize("shape,axis", TORCH_CASES)
def test_vs_torch(shape, axis, use, dtype):
    torch = pytest.importorskip("torch")
    x, w, b, dy = _data(shape, axis, dtype, loc=0.3)
    C = shape[axis]
    t = TOL[dtype]
    if dtype == np.float16:  # torch wants weight, bias and running stats of x's dtype
        t = 2e-3
    pdt = np.float16 if dtype == np.float16 else _sdt(dtype)
    w, b = w.astype(pdt), b.astype(pdt)
    rng = np.random.default_rng(1)
    rm = rng.normal(size=C).astype(pdt)
    rv = rng.uniform(0.5, 2.0, size=C).astype(pdt)
    first = (lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1))) if axis == -1 else \
        (lambda a: a.copy())
    back = (lambda a: np.moveaxis(a, 1, -1)) if axis == -1 else (lambda a: a)
    tx = torch.from_numpy(first(x)).requires_grad_(True)
    tw = torch.from_numpy(w.copy()).requires_grad_(True)
    tb = torch.from_numpy(b.copy()).requires_grad_(True)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    ty = torch.nn.functional.instance_norm(tx, trm, trv, tw, tb, use, 0.3, 1e-5)
    ty.backward(torch.from_numpy(first(dy)))
    brm, brv = rm.astype(_sdt(dtype)), rv.astype(_sdt(dtype))
    y = instance_norm(x, w, b, brm, brv, use_input_stats=use, momentum=0.3,
                      channel_axis=axis)
    assert_close(y, back(ty.detach().numpy()), t, "y")
    stol = 2e-3 if dtype == np.float16 else t
    assert_close(brm, trm.numpy(), stol, "running_mean")
    assert_close(brv, trv.numpy(), stol, "running_var")
    mv = (None, None) if use else (brm, brv)
    _, s = instance_norm_forward(x, w, b, mean=mv[0], var=mv[1], channel_axis=axis)
    g = instance_norm_backward(dy, x, w, s, use_input_stats=use, channel_axis=axis)
    assert_close(g.grad_input, back(tx.grad.numpy()), 10 * t, "grad_input")
    ptol = 2e-2 if dtype == np.float16 else 10 * t
    assert_close(g.grad_weight, tw.grad.numpy(), ptol, "grad_weight")
    assert_close(g.grad_bias, tb.grad.numpy(), ptol, "grad_bias")


def test_torch_rejects_what_bnc_rejects():
    torch = pytest.importorskip("torch")
    x = np.ones((3, 4, 1, 1), np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        torch.nn.functional.instance_norm(torch.from_numpy(x))
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        instance_norm(x)


# ---------------------------------------------------------------------------
# errors: messages name the argument; nothing is written on error

def test_errors_forward():
    x = np.ones((2, 4, 6), np.float32)
    w = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="x must be a float16, float32 or float64"):
        instance_norm(np.ones((2, 4, 3), np.int32))
    with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
        instance_norm(np.ones(6, np.float32))
    with pytest.raises(ValueError, match="x must not be empty"):
        instance_norm(np.ones((0, 4, 3), np.float32))
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        instance_norm(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        instance_norm_forward(np.ones((2, 1, 4), np.float32), channel_axis=-1)
    with pytest.raises(ValueError, match="channel_axis must be 1 .* or -1"):
        instance_norm(np.ones((2, 3, 6, 4), np.float32), channel_axis=2)
    with pytest.raises(np.exceptions.AxisError, match="channel_axis"):
        instance_norm(x, channel_axis=3)
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        instance_norm(x, np.ones(6, np.float32))
    with pytest.raises(TypeError, match="bias must have dtype float32 for float32 x"):
        instance_norm(x, w, w.astype(np.float64))
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps must be finite and > 0"):
            instance_norm(x, eps=eps)
    with pytest.raises(ValueError, match="n_threads must be a non-zero integer"):
        instance_norm(x, n_threads=0)
    with pytest.raises(ValueError, match="mean and var must be given together"):
        instance_norm_forward(x, mean=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4, 6\)"):
        instance_norm(x, out=np.empty((2, 4, 5), np.float32))


def test_errors_running_stats_write_nothing():
    x = np.random.default_rng(0).normal(size=(2, 4, 6)).astype(np.float32)
    rm, rv = np.full(4, 0.5, np.float32), np.full(4, 2.0, np.float32)
    out = np.full_like(x, 7.0)
    nbt = np.array(2, np.int64)

    def unchanged():
        assert np.all(rm == 0.5) and np.all(rv == 2.0) and np.all(out == 7.0)
        assert int(nbt) == 2

    with pytest.raises(ValueError, match="running_mean and running_var must be given together"):
        instance_norm(x, None, None, rm, None, out=out)
    with pytest.raises(ValueError, match=r"running_var must have shape \(4,\)"):
        instance_norm(x, None, None, rm, np.ones(3, np.float32), out=out)
    with pytest.raises(TypeError, match="running_mean must have dtype float32"):
        instance_norm(x, None, None, rm.astype(np.float64), rv, out=out)
    with pytest.raises(TypeError, match="running_mean must be a numpy.ndarray"):
        instance_norm(x, None, None, [0.0] * 4, rv, out=out)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        instance_norm(x, None, None, rm, rv, momentum=1.5, out=out, num_batches_tracked=nbt)
    with pytest.raises(ValueError, match="momentum=None .* needs num_batches_tracked"):
        instance_norm(x, None, None, rm, rv, momentum=None, out=out)
    with pytest.raises(ValueError, match="use_input_stats=False needs running_mean"):
        instance_norm(x, use_input_stats=False, out=out)
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        instance_norm(x, np.ones(5, np.float32), None, rm, rv, out=out,
                      num_batches_tracked=nbt)
    with pytest.raises(ValueError, match="eps must be finite"):
        instance_norm(x, None, None, rm, rv, eps=-1.0, out=out, num_batches_tracked=nbt)
    with pytest.raises(ValueError, match="out must not overlap x"):
        instance_norm(x, None, None, rm, rv, out=x[:, :, ::-1], num_batches_tracked=nbt)
    ro = rm.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        instance_norm(x, None, None, ro, rv, out=out, num_batches_tracked=nbt)
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        instance_norm(np.ones((2, 4, 1), np.float32), None, None, rm, rv,
                      num_batches_tracked=nbt)
    unchanged()
    # read-only running statistics are fine when they are only read
    instance_norm(x, None, None, ro, rv, use_input_stats=False)


def test_errors_backward():
    x = np.ones((2, 4, 5), np.float32)
    dy = np.ones_like(x)
    _, s = instance_norm_forward(x)
    with pytest.raises(TypeError, match="grad_out must have the dtype of x"):
        instance_norm_backward(dy.astype(np.float64), x, None, s)
    with pytest.raises(ValueError, match="grad_out must have the shape of x"):
        instance_norm_backward(dy[:1], x, None, s)
    with pytest.raises(ValueError, match=r"saved.mean must have shape \(2, 4\)"):
        instance_norm_backward(dy, x, None, (s.mean[:1], s.invstd))
    with pytest.raises(ValueError, match=r"saved.invstd must have shape \(2, 4\)"):
        instance_norm_backward(dy, x, None, (s.mean, s.invstd[:, :2]))
    with pytest.raises(TypeError, match="saved must be an InstanceNormSaved"):
        instance_norm_backward(dy, x, None, None)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="out must not overlap grad_out"):
        instance_norm_backward(dy, x, None, s, out=dy)
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        instance_norm_backward(dy, x, np.ones(2, np.float32), s, out=out)
    assert np.all(out == 7.0)


# ---------------------------------------------------------------------------
# properties

@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DIDS[:2])
@pytest.mark.parametrize("shape,axis", [((4, 8, 30), 1), ((4, 30, 8), -1)])
def test_properties(shape, axis, dtype):
    x, w, b, dy = _data(shape, axis, dtype, loc=2.0, scale=3.0)
    y = np.moveaxis(instance_norm(x, eps=1e-12, channel_axis=axis).astype(np.float64),
                    axis, 1)
    assert np.allclose(y.mean(axis=2), 0, atol=1e-5)
    assert np.allclose(y.var(axis=2), 1, atol=1e-4)
    assert_close(instance_norm(x + dtype(8.0), w, b, channel_axis=axis),
                 instance_norm(x, w, b, channel_axis=axis), 10 * TOL[dtype])
    _, s = instance_norm_forward(x, channel_axis=axis)
    dx = instance_norm_backward(dy, x, None, s, channel_axis=axis).grad_input
    dxs = np.moveaxis(dx.astype(np.float64), axis, 1).sum(axis=2)
    assert np.allclose(dxs, 0, atol=1e-3 if dtype == np.float32 else 1e-10)


def test_matches_group_norm_with_one_channel_per_group():
    x, w, b, dy = _data((3, 20, 6), -1, np.float32)
    y, s = instance_norm_forward(x, w, b, channel_axis=-1)
    yg, sg = bnc.group_norm_forward(x, 6, w, b, channel_axis=-1)
    assert bit_equal(y, yg) and bit_equal(s.mean, sg.mean) and bit_equal(s.invstd, sg.invstd)


def test_exported_from_the_package():
    import bnc.instancenorm
    for name in ("instance_norm", "instance_norm_forward", "instance_norm_backward",
                 "InstanceNormSaved"):
        assert name in bnc.__all__ and getattr(bnc, name) is getattr(bnc.instancenorm, name)
