"""Property tests over every public function: random shapes (size-0 and
size-1 dimensions, ndim 2..5), memory layouts (slices, steps, negative steps,
transposes, unaligned data), dtypes, axes and thread counts.

Each example either matches ``bnc.reference`` (float64) within the documented
tolerance, or raises the documented exception: the test states, from the
shape alone, which calls are invalid and with what message, so a crash, a
wrong answer, a missing error and an unexpected error all fail it. Arrays a
call must not write are checked bit for bit afterwards.

BNC_PROPERTY_EXAMPLES sets the number of examples per test (default 400: a
few thousand in all).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bnc
from bnc import reference as R
from conftest import DTYPES, assert_close, assert_unchanged, snapshot, stat_dtype

EXAMPLES = int(os.environ.get("BNC_PROPERTY_EXAMPLES", "400"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Norm-wise relative tolerances against the float64 reference, with an
# absolute floor relative to the size of the terms: for outputs, statistics
# and gradients. float16 data is computed in float32 (its statistics are
# float32); its outputs are rounded to float16.
OUT_TOL = {np.float64: 1e-11, np.float32: 2e-5, np.float16: 2e-3}
STAT_TOL = {np.float64: 1e-11, np.float32: 2e-5, np.float16: 2e-5}
GRAD_TOL = {np.float64: 1e-10, np.float32: 2e-4, np.float16: 1e-2}


def _t(table, dtype):
    return table[np.dtype(dtype).type]


# ---------------------------------------------------------------------------
# strategies


@st.composite
def layouts(draw, ndim):
    """(perm, steps, unaligned): the memory order of a view, its step per axis
    (negative: reversed) and whether its data pointer is misaligned."""
    perm = draw(st.permutations(range(ndim)))
    steps = draw(st.lists(st.sampled_from([1, 1, 1, 2, -1, -2]), min_size=ndim,
                          max_size=ndim))
    return tuple(perm), tuple(steps), draw(st.booleans())


def as_view(a, layout):
    """A view holding the values of `a`, laid out as `layout` says; the gaps
    hold NaN, so reading outside the view shows in the results."""
    perm, steps, unaligned = layout
    inv = np.argsort(perm)
    mem_shape = [a.shape[p] * abs(steps[p]) for p in perm]
    n = int(np.prod(mem_shape))
    raw = np.empty(n * a.itemsize + (1 if unaligned else 0), np.uint8)
    buf = raw[1 if unaligned else 0:][: n * a.itemsize].view(a.dtype).reshape(mem_shape)
    buf[...] = np.nan
    view = buf.transpose(inv)  # axes back in a's order
    idx = tuple(slice(None, None, s) if s > 0 else slice(None, None, s) for s in steps)
    view = view[idx]
    view = view[tuple(slice(0, d) for d in a.shape)]
    view[...] = a
    assert view.shape == a.shape
    return view


@st.composite
def tensors(draw, min_ndim=2, max_ndim=5, min_side=0, max_side=5, dtypes=DTYPES):
    """(values, view, rng): C-contiguous values of a random shape and dtype,
    the same values in a random layout, and a generator for more data."""
    ndim = draw(st.integers(min_ndim, max_ndim))
    shape = tuple(draw(st.lists(st.integers(min_side, max_side), min_size=ndim,
                                max_size=ndim)))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.integers(-2, 2))
    loc = draw(st.sampled_from([0.0, 0.0, 1.0, -30.0]))
    values = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    return values, as_view(values, draw(layouts(ndim))), rng


threads = st.sampled_from([None, 1, 2, 3])


def like(values, rng, layout):
    """Another tensor of values' shape and dtype, in `layout`."""
    return as_view(rng.standard_normal(values.shape).astype(values.dtype), layout)


def params(rng, C, dtype, k=4):
    """k per-channel arrays: weight (signs mixed), bias, running mean, running var."""
    sd = stat_dtype(dtype)
    out = [(rng.uniform(0.5, 1.5, C) * rng.choice([-1.0, 1.0], C)).astype(sd),
           rng.standard_normal(C).astype(sd), (0.3 * rng.standard_normal(C)).astype(sd),
           rng.uniform(0.5, 2.0, C).astype(sd)]
    return out[:k]


def expect(error, fn):
    """fn() when error is None; else fn must raise ValueError matching error."""
    if error is None:
        return fn()
    with pytest.raises(ValueError, match=error):
        fn()
    return None


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def term_scale(*arrays):
    """Size of the terms a result is made of: norms multiplied."""
    s = 1.0
    for a in arrays:
        s *= float(np.linalg.norm(np.asarray(a, np.float64).ravel()))
    return s


# ---------------------------------------------------------------------------
# batch norm and batch renorm


def _channels(values, ca):
    nd = values.ndim
    ax = ca % nd
    C = values.shape[ax]
    return ax, C, (values.size // C if C else 0)


@SETTINGS
@given(tensors(), st.data(), threads)
def test_batch_norm(t, data, nt):
    values, x, rng = t
    ca = data.draw(st.integers(-values.ndim, values.ndim - 1), "channel_axis")
    training = data.draw(st.booleans(), "training")
    momentum = data.draw(st.sampled_from([0.1, 0.0, 1.0, 0.37]), "momentum")
    correction = data.draw(st.sampled_from([0, 1]), "correction")
    ax, C, count = _channels(values, ca)
    w, b, rm, rv = params(rng, C, values.dtype)
    error = ("must not be empty" if values.size == 0 else
             "more than 1 value per channel" if training and count == 1 else None)
    copies = snapshot(x, w, b)
    rm_ref, rv_ref = f64(rm).copy(), f64(rv).copy()
    y = expect(error, lambda: bnc.batch_norm(
        x, w, b, rm, rv, training=training, momentum=momentum, correction=correction,
        channel_axis=ca, n_threads=nt))
    assert_unchanged([x, w, b], copies, ["x", "weight", "bias"])
    if error:
        assert np.array_equal(rm, rm_ref.astype(rm.dtype))
        return
    y_ref = R.batch_norm(f64(values), f64(w), f64(b), rm_ref, rv_ref, training=training,
                         momentum=momentum, correction=correction, channel_axis=ca)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close(y, y_ref, _t(OUT_TOL, values.dtype), "y")
    assert_close(rm, rm_ref, _t(STAT_TOL, values.dtype), "running_mean")
    assert_close(rv, rv_ref, _t(STAT_TOL, values.dtype), "running_var")


@SETTINGS
@given(tensors(), st.data(), threads)
def test_batch_norm_forward_backward(t, data, nt):
    values, x, rng = t
    ca = data.draw(st.integers(-values.ndim, values.ndim - 1), "channel_axis")
    frozen = data.draw(st.booleans(), "frozen")
    ax, C, count = _channels(values, ca)
    w, b, rm, rv = params(rng, C, values.dtype)
    mean, var = (rm, rv) if frozen else (None, None)
    error = ("must not be empty" if values.size == 0 else
             "more than 1 value per channel" if not frozen and count == 1 else None)
    res = expect(error, lambda: bnc.batch_norm_forward(x, w, b, mean=mean, var=var,
                                                       channel_axis=ca, n_threads=nt))
    if error:
        return
    y, saved = res
    y_ref, s_ref = R.batch_norm_forward(f64(values), f64(w), f64(b), mean=f64(mean),
                                        var=f64(var), channel_axis=ca)
    dt = values.dtype
    assert_close(y, y_ref, _t(OUT_TOL, dt), "y")
    assert_close(saved.mean, s_ref.mean, _t(STAT_TOL, dt), "mean")
    assert_close(saved.invstd, s_ref.invstd, _t(STAT_TOL, dt), "invstd")
    g_values = rng.standard_normal(values.shape).astype(dt)
    g = as_view(g_values, data.draw(layouts(values.ndim), "grad layout"))
    copies = snapshot(x, g)
    grads = bnc.batch_norm_backward(g, x, w, saved, channel_axis=ca,
                                    use_batch_stats=not frozen, n_threads=nt)
    ref = R.batch_norm_backward(f64(g_values), f64(values), f64(w), s_ref, channel_axis=ca,
                                use_batch_stats=not frozen)
    _check_grads(grads, ref, dt, g_values, s_ref.invstd, w)
    assert_unchanged([x, g], copies, ["x", "grad_out"])
    # the split backward (reduce, then elementwise) gives the same gradients
    if not frozen:
        sdy, sdyx = bnc.batch_norm_backward_reduce(g, x, saved.mean, saved.invstd,
                                                   channel_axis=ca, n_threads=nt)
        assert_close(sdy, ref.grad_bias, _t(GRAD_TOL, dt), "sum_dy",
                     atol=_t(GRAD_TOL, dt) * term_scale(g_values))
        dx = bnc.batch_norm_backward_elemt(g, x, w, saved.mean, saved.invstd, sdy, sdyx,
                                           count, channel_axis=ca, n_threads=nt)
        assert_close(dx, grads.grad_input, _t(GRAD_TOL, dt), "elemt grad_input",
                     atol=_t(GRAD_TOL, dt) * term_scale(g_values) * float(np.max(
                         np.abs(f64(w)) * f64(saved.invstd))))


def _check_grads(grads, ref, dt, g_values, invstd, w):
    """Gradients vs the reference; few values per channel make grad_input a
    difference of nearly equal terms, so its error is measured against them."""
    tol = _t(GRAD_TOL, dt)
    gn = term_scale(g_values)
    amp = float(np.max(np.abs(f64(invstd)), initial=0.0))
    if w is not None:
        amp *= float(np.max(np.abs(f64(w)), initial=1.0))
    assert grads.grad_input.shape == g_values.shape and grads.grad_input.dtype == dt
    assert_close(grads.grad_input, ref.grad_input, tol, "grad_input", atol=tol * gn * amp)
    if ref.grad_bias is not None:
        assert_close(grads.grad_bias, ref.grad_bias, tol, "grad_bias", atol=tol * gn)
    assert_close(grads.grad_weight, ref.grad_weight, tol, "grad_weight", atol=tol * gn * 10)


@SETTINGS
@given(tensors(dtypes=(np.float32, np.float64)), st.data(), threads)
def test_batch_norm_fused(t, data, nt):
    """activation="relu" and residual=: the fused forward and backward against
    the reference's fused twin (float16 rounds y once where the reference
    composes in float64; the mask then differs near zero, so it is left to
    tests/test_fusion.py)."""
    values, x, rng = t
    ca = data.draw(st.integers(-values.ndim, values.ndim - 1), "channel_axis")
    frozen = data.draw(st.booleans(), "frozen")
    act = data.draw(st.sampled_from([None, "relu"]), "activation")
    with_res = data.draw(st.booleans(), "residual")
    ax, C, count = _channels(values, ca)
    dt = values.dtype
    w, b, rm, rv = params(rng, C, dt)
    r_values = rng.standard_normal(values.shape).astype(dt) if with_res else None
    r = as_view(r_values, data.draw(layouts(values.ndim), "residual layout")) if with_res else None
    mean, var = (rm, rv) if frozen else (None, None)
    error = ("must not be empty" if values.size == 0 else
             "more than 1 value per channel" if not frozen and count == 1 else None)
    res = expect(error, lambda: bnc.batch_norm_forward(
        x, w, b, mean=mean, var=var, channel_axis=ca, activation=act, residual=r,
        n_threads=nt))
    if error:
        return
    y, saved = res
    y_ref, s_ref = R.batch_norm_forward(f64(values), f64(w), f64(b), mean=f64(mean),
                                        var=f64(var), channel_axis=ca, activation=act,
                                        residual=f64(r_values))
    assert_close(y, y_ref, _t(OUT_TOL, dt), "y")
    g_values = rng.standard_normal(values.shape).astype(dt)
    g = as_view(g_values, data.draw(layouts(values.ndim), "grad layout"))
    grads = bnc.batch_norm_backward(g, x, w, saved, channel_axis=ca,
                                    use_batch_stats=not frozen, activation=act,
                                    y=y if act else None, residual=with_res, n_threads=nt)
    # the reference takes the mask from bnc's y, so both see the same mask
    ref = R.batch_norm_backward(f64(g_values), f64(values), f64(w), s_ref, channel_axis=ca,
                                use_batch_stats=not frozen, activation=act,
                                y=f64(y) if act else None, residual=with_res)
    _check_grads(grads, ref, dt, g_values, s_ref.invstd, w)
    if with_res:
        assert_close(grads.grad_residual, ref.grad_residual, 0.0, "grad_residual")


@SETTINGS
@given(tensors(), st.data(), threads)
def test_batch_norm_stats(t, data, nt):
    values, x, rng = t
    ca = data.draw(st.integers(-values.ndim, values.ndim - 1), "channel_axis")
    error = "must not be empty" if values.size == 0 else None
    res = expect(error, lambda: bnc.batch_norm_stats(x, channel_axis=ca, n_threads=nt))
    if error:
        return
    mean, var, count = res
    m_ref, v_ref, c_ref = R.batch_norm_stats(f64(values), channel_axis=ca)
    assert count == c_ref
    assert_close(mean, m_ref, _t(STAT_TOL, values.dtype), "mean")
    assert_close(var, v_ref, _t(STAT_TOL, values.dtype), "var",
                 atol=_t(STAT_TOL, values.dtype) * float(np.max(m_ref ** 2, initial=0)))


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 6), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**32 - 1), st.sampled_from([0.1, None]), st.sampled_from([0, 1]))
def test_combine_and_update_running_stats(k, C, dtype, seed, momentum, correction):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, C)).astype(dtype)
    vars_ = rng.uniform(0, 3, (k, C)).astype(dtype)
    counts = rng.integers(1, 20, k)
    m, v, n = bnc.combine_stats(means, vars_, counts)
    m_ref, v_ref, n_ref = R.combine_stats(f64(means), f64(vars_), counts)
    assert n == n_ref
    assert_close(m, m_ref, _t(STAT_TOL, dtype), "mean")
    assert_close(v, v_ref, _t(STAT_TOL, dtype), "var")
    rm, rv = params(rng, C, dtype)[2:]
    nbt = np.array(rng.integers(0, 5), dtype=np.int64)
    rm_ref, rv_ref, nbt_ref = f64(rm).copy(), f64(rv).copy(), nbt.copy()
    # the new running mean is a weighted sum of the old one and m that can
    # cancel: its error is relative to the size of those terms
    mean_terms = max(np.abs(f64(rm)).max(), np.abs(f64(m)).max())
    error = "must be larger than correction" if correction and n == 1 else None
    kw = dict(momentum=momentum, correction=correction)
    expect(error, lambda: bnc.update_running_stats(rm, rv, m, v, n, num_batches_tracked=nbt,
                                                   **kw))
    if error:
        return
    R.update_running_stats(rm_ref, rv_ref, f64(m), f64(v), n, num_batches_tracked=nbt_ref, **kw)
    assert int(nbt) == int(nbt_ref)
    assert_close(rm, rm_ref, _t(STAT_TOL, dtype), "running_mean",
                 atol=_t(STAT_TOL, dtype) * mean_terms)
    assert_close(rv, rv_ref, _t(STAT_TOL, dtype), "running_var")


@SETTINGS
@given(tensors(), st.data(), threads)
def test_batch_renorm(t, data, nt):
    values, x, rng = t
    ca = data.draw(st.integers(-values.ndim, values.ndim - 1), "channel_axis")
    rmax = data.draw(st.sampled_from([1.0, 1.5, 3.0, np.inf]), "rmax")
    dmax = data.draw(st.sampled_from([0.0, 0.5, 5.0]), "dmax")
    ax, C, count = _channels(values, ca)
    w, b, rm, rv = params(rng, C, values.dtype)
    error = ("must not be empty" if values.size == 0 else
             "more than 1 value per channel" if count == 1 else None)
    res = expect(error, lambda: bnc.batch_renorm_forward(
        x, w, b, rm, rv, rmax=rmax, dmax=dmax, channel_axis=ca, n_threads=nt))
    if error:
        return
    y, saved = res
    dt = values.dtype
    y_ref, s_ref = R.batch_renorm_forward(f64(values), f64(w), f64(b), f64(rm), f64(rv),
                                          rmax=rmax, dmax=dmax, channel_axis=ca)
    assert_close(y, y_ref, _t(OUT_TOL, dt) * 10, "y")
    g_values = rng.standard_normal(values.shape).astype(dt)
    g = as_view(g_values, data.draw(layouts(values.ndim), "grad layout"))
    grads = bnc.batch_renorm_backward(g, x, w, saved, channel_axis=ca, n_threads=nt)
    ref = R.batch_renorm_backward(f64(g_values), f64(values), f64(w), s_ref, channel_axis=ca)
    _check_grads(grads, ref, dt, g_values, f64(s_ref.invstd) * f64(s_ref.r), w)
    # the one-call form updates the running statistics like the reference
    rm_ref, rv_ref = f64(rm).copy(), f64(rv).copy()
    y2 = bnc.batch_renorm(x, w, b, rm, rv, training=True, rmax=rmax, dmax=dmax,
                          channel_axis=ca, n_threads=nt)
    y2_ref = R.batch_renorm(f64(values), f64(w), f64(b), rm_ref, rv_ref, training=True,
                            rmax=rmax, dmax=dmax, channel_axis=ca)
    assert_close(y2, y2_ref, _t(OUT_TOL, dt) * 10, "y")
    assert_close(rm, rm_ref, _t(STAT_TOL, dt), "running_mean")
    assert_close(rv, rv_ref, _t(STAT_TOL, dt), "running_var")


# ---------------------------------------------------------------------------
# layer norm, RMS norm, group norm


@SETTINGS
@given(tensors(min_ndim=1), st.data(), threads, st.booleans())
def test_layer_and_rms_norm(t, data, nt, rms):
    values, x, rng = t
    axis = data.draw(st.integers(-values.ndim, values.ndim - 1), "axis")
    norm_shape = values.shape[axis % values.ndim:]
    dt = values.dtype
    sd = stat_dtype(dt)
    w = data.draw(st.sampled_from([None, "w"]), "weight")
    w = None if w is None else rng.uniform(0.5, 1.5, norm_shape).astype(sd)
    b = None if rms else rng.standard_normal(norm_shape).astype(sd)
    error = "must not be empty" if values.size == 0 else None
    if rms:
        res = expect(error, lambda: bnc.rms_norm_forward(x, w, axis=axis, n_threads=nt))
    else:
        res = expect(error, lambda: bnc.layer_norm_forward(x, w, b, axis=axis, n_threads=nt))
    if error:
        return
    y, saved = res
    if rms:
        y_ref, s_ref = R.rms_norm_forward(f64(values), f64(w), axis=axis,
                                          eps_dtype=stat_dtype(dt))  # torch: the computing dtype's eps
        inv = s_ref.invrms
    else:
        y_ref, s_ref = R.layer_norm_forward(f64(values), f64(w), f64(b), axis=axis)
        inv = s_ref.invstd
    assert_close(y, y_ref, _t(OUT_TOL, dt), "y")
    g_values = rng.standard_normal(values.shape).astype(dt)
    g = as_view(g_values, data.draw(layouts(values.ndim), "grad layout"))
    copies = snapshot(x, g)
    if rms:
        grads = bnc.rms_norm_backward(g, x, w, saved, axis=axis, n_threads=nt)
        ref = R.rms_norm_backward(f64(g_values), f64(values), f64(w), s_ref, axis=axis)
    else:
        grads = bnc.layer_norm_backward(g, x, w, saved, axis=axis, n_threads=nt)
        ref = R.layer_norm_backward(f64(g_values), f64(values), f64(w), s_ref, axis=axis)
    assert_unchanged([x, g], copies, ["x", "grad_out"])
    _check_grads(grads, ref, dt, g_values, inv, w)


@SETTINGS
@given(tensors(), st.data(), threads)
def test_group_norm(t, data, nt):
    values, x, rng = t
    ca = data.draw(st.sampled_from([1, -1]), "channel_axis")
    C = values.shape[ca]
    G = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0] or [1]), "G")
    dt = values.dtype
    w, b = params(rng, C, dt, 2)
    error = "must not be empty" if values.size == 0 else None
    res = expect(error, lambda: bnc.group_norm_forward(x, G, w, b, channel_axis=ca,
                                                       n_threads=nt))
    if error:
        return
    y, saved = res
    y_ref, s_ref = R.group_norm_forward(f64(values), G, f64(w), f64(b), channel_axis=ca)
    assert_close(y, y_ref, _t(OUT_TOL, dt), "y")
    assert_close(saved.mean, s_ref.mean, _t(STAT_TOL, dt), "mean",
                 atol=_t(STAT_TOL, dt) * float(np.max(np.abs(values), initial=0)))
    g_values = rng.standard_normal(values.shape).astype(dt)
    g = as_view(g_values, data.draw(layouts(values.ndim), "grad layout"))
    grads = bnc.group_norm_backward(g, x, G, w, saved, channel_axis=ca, n_threads=nt)
    ref = R.group_norm_backward(f64(g_values), f64(values), G, f64(w), s_ref, channel_axis=ca)
    _check_grads(grads, ref, dt, g_values, s_ref.invstd, w)


@SETTINGS
@given(tensors(), st.data(), threads)
def test_instance_norm(t, data, nt):
    values, x, rng = t
    ca = data.draw(st.sampled_from([1, -1]), "channel_axis")
    use_input_stats = data.draw(st.booleans(), "use_input_stats")
    C = values.shape[ca]
    spatial = values.size // (values.shape[0] * C) if values.size else 0
    dt = values.dtype
    w, b, rm, rv = params(rng, C, dt)
    error = ("must not be empty" if values.size == 0 else
             "more than 1 spatial element" if use_input_stats and spatial == 1 else None)
    rm_ref, rv_ref = f64(rm).copy(), f64(rv).copy()
    y = expect(error, lambda: bnc.instance_norm(x, w, b, rm, rv, use_input_stats=use_input_stats,
                                                channel_axis=ca, n_threads=nt))
    if error:
        assert np.array_equal(rm, rm_ref.astype(rm.dtype))
        return
    y_ref = R.instance_norm(f64(values), f64(w), f64(b), rm_ref, rv_ref,
                            use_input_stats=use_input_stats, channel_axis=ca)
    assert_close(y, y_ref, _t(OUT_TOL, dt), "y")
    assert_close(rm, rm_ref, _t(STAT_TOL, dt), "running_mean")
    assert_close(rv, rv_ref, _t(STAT_TOL, dt), "running_var")
    mean, var = (None, None) if use_input_stats else (rm, rv)
    y, saved = bnc.instance_norm_forward(x, w, b, mean=mean, var=var, channel_axis=ca,
                                         n_threads=nt)
    y_ref, s_ref = R.instance_norm_forward(f64(values), f64(w), f64(b), mean=f64(mean),
                                           var=f64(var), channel_axis=ca)
    assert_close(y, y_ref, _t(OUT_TOL, dt), "y (forward)")
    g_values = rng.standard_normal(values.shape).astype(dt)
    g = as_view(g_values, data.draw(layouts(values.ndim), "grad layout"))
    grads = bnc.instance_norm_backward(g, x, w, saved, use_input_stats=use_input_stats,
                                       channel_axis=ca, n_threads=nt)
    ref = R.instance_norm_backward(f64(g_values), f64(values), f64(w), s_ref,
                                   use_input_stats=use_input_stats, channel_axis=ca)
    _check_grads(grads, ref, dt, g_values, s_ref.invstd, w)


# ---------------------------------------------------------------------------
# stateful layers (bnc.layers): forward, backward and running statistics of a
# training step, then an eval forward, against the reference


@SETTINGS
@given(tensors(min_side=1), st.data(), threads)
def test_layers(t, data, nt):
    values, x, rng = t
    dt = values.dtype
    ldt = np.float64 if dt == np.float64 else np.float32
    kind = data.draw(st.sampled_from(["batch", "group", "instance", "layer", "rms"]), "layer")
    ca = data.draw(st.sampled_from([1, -1]), "channel_axis")
    C = values.shape[ca]
    spatial = values.size // (values.shape[0] * C)
    f = f64(values)
    if kind == "batch":
        layer = bnc.layers.BatchNorm(C, channel_axis=ca, dtype=ldt, n_threads=nt)
        ok = values.size // C > 1
        rm, rv = np.zeros(C), np.ones(C)
        fwd = lambda: R.batch_norm_forward(f, channel_axis=ca)  # noqa: E731
        bwd = lambda g, s: R.batch_norm_backward(g, f, np.ones(C), s, channel_axis=ca)  # noqa
    elif kind == "instance":
        layer = bnc.layers.InstanceNorm(C, affine=True, track_running_stats=True,
                                        channel_axis=ca, dtype=ldt, n_threads=nt)
        ok = spatial > 1
        rm, rv = np.zeros(C), np.ones(C)
        fwd = lambda: R.instance_norm_forward(f, np.ones(C), np.zeros(C), channel_axis=ca)  # noqa
        bwd = lambda g, s: R.instance_norm_backward(g, f, np.ones(C), s, channel_axis=ca)  # noqa
    elif kind == "group":
        G = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]), "G")
        layer = bnc.layers.GroupNorm(G, C, channel_axis=ca, dtype=ldt, n_threads=nt)
        ok, rm = True, None
        fwd = lambda: R.group_norm_forward(f, G, np.ones(C), np.zeros(C), channel_axis=ca)  # noqa
        bwd = lambda g, s: R.group_norm_backward(g, f, G, np.ones(C), s, channel_axis=ca)  # noqa
    else:
        axis = data.draw(st.integers(1, values.ndim - 1), "axis")
        shape = values.shape[axis:]
        ok, rm = True, None
        if kind == "layer":
            layer = bnc.layers.LayerNorm(shape, dtype=ldt, n_threads=nt)
            fwd = lambda: R.layer_norm_forward(f, np.ones(shape), np.zeros(shape), axis=axis)  # noqa
            bwd = lambda g, s: R.layer_norm_backward(g, f, np.ones(shape), s, axis=axis)  # noqa
        else:
            layer = bnc.layers.RMSNorm(shape, dtype=ldt, n_threads=nt)
            fwd = lambda: R.rms_norm_forward(f, np.ones(shape), axis=axis, eps_dtype=ldt)  # noqa
            bwd = lambda g, s: R.rms_norm_backward(g, f, np.ones(shape), s, axis=axis)  # noqa
    state = {k: v.copy() for k, v in layer.state_dict().items()}
    if not ok:
        with pytest.raises(ValueError, match="more than 1"):
            layer.forward(x)
        for k, v in layer.state_dict().items():  # nothing written
            assert np.array_equal(v, state[k]), k
        return
    y = layer.forward(x)
    y_ref, s_ref = fwd()
    assert_close(y, y_ref, _t(OUT_TOL, dt), "y")
    g_values = rng.standard_normal(values.shape).astype(dt)
    dx = layer.backward(as_view(g_values, data.draw(layouts(values.ndim), "grad layout")))
    ref = bwd(f64(g_values), s_ref)
    inv = getattr(s_ref, "invstd", None)
    inv = s_ref.invrms if inv is None else inv
    _check_grads(type(ref)(dx, layer.grad_weight,
                           layer.grad_bias if ref.grad_bias is not None else None),
                 ref, dt, g_values, inv, None)
    if rm is not None:  # one update of the running statistics, momentum 0.1
        n = values.size // C if kind == "batch" else spatial
        m = f64(s_ref.mean).reshape(-1, C).mean(axis=0) if kind == "instance" else s_ref.mean
        v = (f64(s_ref.var).reshape(-1, C).mean(axis=0) if kind == "instance"
             else f64(s_ref.var))
        # instance norm averages per-instance means, which can cancel (means
        # of +-1000 give a running mean near 0): the error is relative to
        # the size of those terms, each rounded to the working precision
        terms = 0.1 * float(np.max(np.abs(f64(s_ref.mean)), initial=0)) * np.sqrt(C)
        assert_close(layer.running_mean, 0.9 * rm + 0.1 * m, _t(STAT_TOL, dt), "running_mean",
                     atol=_t(STAT_TOL, dt) * terms)
        assert_close(layer.running_var, 0.9 * rv + 0.1 * v * n / (n - 1), _t(STAT_TOL, dt),
                     "running_var")
        layer.eval()
        y2 = layer.forward(x)
        y2_ref = R.batch_norm_forward(f, mean=f64(layer.running_mean),
                                      var=f64(layer.running_var), channel_axis=ca)[0]
        assert_close(y2, y2_ref, _t(OUT_TOL, dt), "eval y")


# ---------------------------------------------------------------------------
# folding


@SETTINGS
@given(st.integers(1, 6), st.sampled_from([(1,), (3,), (2, 3), (3, 1, 2)]),
       st.sampled_from([0, -1]), st.booleans(), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**32 - 1))
def test_fold_batch_norm(O, rest, oax, has_bias, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (O,) + rest if oax == 0 else rest + (O,)
    weight = rng.standard_normal(shape).astype(dtype)
    bias = rng.standard_normal(O).astype(dtype) if has_bias else None
    bw, bb, rm, rv = params(rng, O, dtype)
    copies = snapshot(weight, bias, bw, bb, rm, rv)
    folded = bnc.fold_batch_norm(weight, bias, rm, rv, bw, bb, eps=1e-3, out_channel_axis=oax)
    assert_unchanged([weight, bias, bw, bb, rm, rv], copies)
    # independent: s = bn_w / sqrt(var + eps) per output channel, in float64
    s = f64(bw) / np.sqrt(f64(rv) + 1e-3)
    shp = [1] * len(shape)
    shp[oax] = O
    w_ref = f64(weight) * s.reshape(shp)
    b_ref = ((f64(bias) if has_bias else 0.0) - f64(rm)) * s + f64(bb)
    assert folded.weight.shape == weight.shape and folded.bias.shape == (O,)
    tol = 1e-15 if dtype == np.float64 else 1e-6
    assert_close(folded.weight, w_ref, tol, "weight")
    assert_close(folded.bias, b_ref, tol, "bias")
