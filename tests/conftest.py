"""Shared helpers for the bnc test suite.

The test modules import these helpers with ``from conftest import ...``
(tests/ is a rootdir-style test directory without ``__init__.py``, so pytest
puts it on ``sys.path``).

Tolerances are norm-wise relative errors,
``np.linalg.norm(actual - expected) <= tol * np.linalg.norm(expected)``,
against the float64 oracle ``bnc.reference`` evaluated on the same input
values upcast to float64.
"""

import zlib

import numpy as np
import pytest

DTYPES = (np.float32, np.float64, np.float16)
DTYPE_IDS = ("f32", "f64", "f16")

# Outputs of dtype x vs the float64 oracle.
TOL = {np.float64: 1e-12, np.float32: 1e-5, np.float16: 1e-3}
# Statistics (mean/var/invstd, gradients of weight and bias, running stats):
# float16 input is computed in float32 and its statistics are float32.
STAT_TOL = {np.float64: 1e-12, np.float32: 1e-5, np.float16: 1e-5}


def tol(dtype):
    return TOL[np.dtype(dtype).type]


def stat_tol(dtype):
    return STAT_TOL[np.dtype(dtype).type]


def stat_dtype(dtype):
    """dtype of statistics, weight, bias and running stats for inputs of `dtype`."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def f64(a):
    """A float64 copy (None stays None)."""
    return None if a is None else np.array(a, dtype=np.float64, copy=True)


def _scaled_norms(a, e):
    """(norm(a - e), norm(e)) computed without overflow/underflow."""
    s = max(float(np.max(np.abs(e), initial=0.0)), float(np.max(np.abs(a), initial=0.0)))
    if s == 0.0 or not np.isfinite(s):
        s = 1.0
    a = a / s
    e = e / s
    return np.linalg.norm((a - e).ravel()) * s, np.linalg.norm(e.ravel()) * s


def rel_err(actual, expected):
    num, den = _scaled_norms(np.asarray(actual, dtype=np.float64),
                             np.asarray(expected, dtype=np.float64))
    return num / den if den > 0 else num


def numeric_grad(f, a, h=1e-5):
    """Central differences of the scalar function f() with respect to the array
    a, which f reads and this perturbs in place (restored afterwards)."""
    g = np.empty_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def assert_close(actual, expected, tol, what="result", atol=0.0):
    """Norm-wise relative comparison; NaN and +-Inf must be at the same places.

    Passes when norm(actual - expected) <= tol * norm(expected) + atol over the
    finite entries.
    """
    assert actual is not None, f"{what}: got None"
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(e)), f"{what}: NaN at different places"
    inf_e = np.isinf(e)
    assert np.array_equal(np.isinf(a), inf_e), f"{what}: Inf at different places"
    assert np.array_equal(a[inf_e], e[inf_e]), f"{what}: Inf of different sign"
    fin = np.isfinite(e)
    num, den = _scaled_norms(a[fin], e[fin])
    assert num <= tol * den + atol, (
        f"{what}: norm-wise relative error {num / den if den else num:.3e} > {tol:.1e} "
        f"(abs {num:.3e}, |expected| {den:.3e}, atol {atol:.1e})"
    )


def bit_equal(a, b):
    """Bit-for-bit equality (distinguishes -0.0 from 0.0, NaN payloads match)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.hasobject:
        return bool(np.all(a == b))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def rng_for(*key):
    """A deterministic generator for a test case (key: anything with a stable repr)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_x(shape, dtype, rng, loc=0.0, scale=1.0):
    """Normal data; each channel gets its own offset so stats differ by channel."""
    x = loc + scale * rng.standard_normal(shape)
    return x.astype(dtype)


def make_params(C, dtype, rng):
    """weight, bias, running_mean, running_var in the statistics dtype of `dtype`."""
    sd = stat_dtype(dtype)
    weight = (rng.uniform(0.5, 1.5, C) * rng.choice([-1.0, 1.0], C)).astype(sd)
    bias = rng.standard_normal(C).astype(sd)
    running_mean = (0.3 * rng.standard_normal(C)).astype(sd)
    running_var = rng.uniform(0.5, 2.0, C).astype(sd)
    return weight, bias, running_mean, running_var


def norm_axis(channel_axis, ndim):
    return channel_axis % ndim


def per_channel_count(shape, channel_axis):
    return int(np.prod(shape)) // shape[norm_axis(channel_axis, len(shape))]


# ---------------------------------------------------------------------------
# Memory layouts: views holding the same values as a C-contiguous `a`.

LAYOUTS = (
    "C",
    "F",
    "sliced_last",  # x[..., 1:-1]
    "sliced_mid",  # x[:, :, 1:-1] (axis 2, or the last axis for 2-D)
    "sliced_channels",  # a slice along the channel axis
    "step_first",  # x[::2]
    "step_last",  # x[..., ::2]
    "reversed_first",  # x[::-1]
    "reversed_last",  # x[..., ::-1]
    "reversed_mid",  # x[:, :, ::-1] (axis 2, or the last axis for 2-D)
    "reversed_channels",
    "transposed",  # axes rotated in memory
    "channels_last",  # channel axis innermost in memory (NHWC viewed as NCHW)
    "unaligned",  # a C-contiguous array whose data pointer is not aligned
)


def _strided_along(a, axis, step=2, pad=0):
    shape = list(a.shape)
    shape[axis] = shape[axis] * step + 2 * pad
    buf = np.full(shape, np.nan, dtype=a.dtype)
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(pad, pad + a.shape[axis] * step, step)
    view = buf[tuple(idx)]
    view[...] = a
    return view


def _reversed_along(a, axis):
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(None, None, -1)
    idx = tuple(idx)
    return np.ascontiguousarray(a[idx])[idx]


def as_layout(a, layout, channel_axis=1):
    """A view with the values of `a` in the given memory layout.

    Padding/gaps of the underlying buffer hold NaN so that reading outside the
    view shows up in the results.
    """
    a = np.ascontiguousarray(a)
    nd = a.ndim
    ca = norm_axis(channel_axis, nd)
    if layout == "C":
        out = a.copy()
    elif layout == "F":
        out = np.asfortranarray(a)
    elif layout == "sliced_last":
        out = _strided_along(a, nd - 1, step=1, pad=1)
    elif layout == "sliced_mid":
        out = _strided_along(a, 2 if nd > 2 else nd - 1, step=1, pad=1)
    elif layout == "sliced_channels":
        out = _strided_along(a, ca, step=1, pad=1)
    elif layout == "step_first":
        out = _strided_along(a, 0)
    elif layout == "step_last":
        out = _strided_along(a, nd - 1)
    elif layout == "reversed_first":
        out = _reversed_along(a, 0)
    elif layout == "reversed_last":
        out = _reversed_along(a, nd - 1)
    elif layout == "reversed_mid":
        out = _reversed_along(a, 2 if nd > 2 else nd - 1)
    elif layout == "reversed_channels":
        out = _reversed_along(a, ca)
    elif layout == "transposed":
        perm = tuple(range(1, nd)) + (0,)
        out = np.ascontiguousarray(a.transpose(perm)).transpose(np.argsort(perm))
    elif layout == "channels_last":
        out = np.moveaxis(np.ascontiguousarray(np.moveaxis(a, ca, -1)), -1, ca)
    elif layout == "unaligned":
        raw = np.empty(a.nbytes + a.itemsize, dtype=np.uint8)
        out = raw[1 : 1 + a.nbytes].view(a.dtype).reshape(a.shape)
        out[...] = a
        if a.itemsize > 1:
            assert not out.flags.aligned
    else:  # pragma: no cover
        raise AssertionError(layout)
    assert out.shape == a.shape
    assert np.array_equal(out, a, equal_nan=True)
    return out


# ---------------------------------------------------------------------------
# Inputs-unchanged checks


def snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(arrays, copies, names=None):
    names = names or [f"argument {i}" for i in range(len(arrays))]
    for a, c, n in zip(arrays, copies, names):
        if a is None:
            continue
        a = np.asarray(a)
        assert a.dtype == c.dtype and a.shape == c.shape, f"{n} changed dtype/shape"
        assert bit_equal(a, c), f"{n} was modified"


# ---------------------------------------------------------------------------
# Oracle wrappers (bnc.reference works in float64).


def ref_module():
    from bnc import reference

    return reference


def ref_train(x, weight, bias, running_mean, running_var, *, channel_axis=1,
              num_batches_tracked=None, **kw):
    """y, running_mean', running_var', num_batches_tracked' from the reference.

    `kw` (momentum, decay, eps, correction) is passed on as given, exactly as a
    user of the public API would pass it.
    """
    ref = ref_module()
    rm, rv = f64(running_mean), f64(running_var)
    nbt = None if num_batches_tracked is None else np.array(num_batches_tracked, copy=True)
    with np.errstate(all="ignore"):  # NaN/Inf test data
        y = ref.batch_norm(f64(x), f64(weight), f64(bias), rm, rv, training=True,
                           channel_axis=channel_axis, num_batches_tracked=nbt, **kw)
    return y, rm, rv, nbt


def ref_eval(x, weight, bias, running_mean, running_var, *, eps=1e-5, channel_axis=1):
    ref = ref_module()
    with np.errstate(all="ignore"):  # NaN/Inf test data
        return ref.batch_norm(f64(x), f64(weight), f64(bias), f64(running_mean),
                              f64(running_var), training=False, eps=eps,
                              channel_axis=channel_axis)


@pytest.fixture
def restore_threads():
    """Restore bnc's global thread count after a test that changes it."""
    import bnc

    before = bnc.get_num_threads()
    yield before
    bnc.set_num_threads(before)


@pytest.fixture
def streamed():
    """A function calling f() with every call streaming its output
    (non-temporal stores, normally for calls larger than the last-level
    cache) and returning f()'s result; the threshold is restored after."""
    from bnc import _core

    def run(f):
        old = _core._set_stream_min_bytes(0)
        try:
            return f()
        finally:
            _core._set_stream_min_bytes(old)

    return run
