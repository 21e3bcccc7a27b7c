"""Bad input: exception type, a message naming the argument, and every array
passed in left untouched (API.md "Shared rules", DESIGN.md "Errors and bad
input"). Also NaN/Inf propagation."""

import re

import numpy as np
import pytest

import bnc
from conftest import (
    assert_close,
    bit_equal,
    make_params,
    make_x,
    ref_eval,
    ref_train,
    rng_for,
)

AxisError = np.exceptions.AxisError
ONE_VALUE = "Expected more than 1 value per channel when training"


def name(arg):
    """A regex matching the argument name as a word (running_mean does not match mean)."""
    return rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])"


def _arrays(args, kwargs):
    found = []

    def visit(label, v):
        if isinstance(v, np.ndarray):
            found.append((label, v, v.copy(), v.flags.writeable))
        elif isinstance(v, (tuple, list)):
            for i, item in enumerate(v):
                visit(f"{label}[{i}]", item)

    for i, a in enumerate(args):
        visit(f"arg{i}", a)
    for k, v in kwargs.items():
        visit(k, v)
    return found


def check_raises(exc, match, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises exc matching `match`; no array argument changed."""
    arrays = _arrays(args, kwargs)
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    for label, a, copy, writeable in arrays:
        assert a.dtype == copy.dtype and a.shape == copy.shape
        assert bit_equal(a, copy), f"{label} was modified by a call that raised"
        assert a.flags.writeable == writeable
    return info


# ---------------------------------------------------------------------------
# batch_norm: a valid training call with every array given, then one thing
# broken at a time.


def valid_call(dtype=np.float32, shape=(4, 3, 5), channel_axis=1):
    rng = rng_for("errors", np.dtype(dtype).name, shape)
    x = make_x(shape, dtype, rng)
    C = shape[channel_axis]
    w, b, rm, rv = make_params(C, dtype, rng)
    nbt = np.array(3, dtype=np.int64)
    out = np.full(shape, 7.0, dtype=dtype)
    args = [x, w, b, rm, rv]
    kwargs = dict(training=True, momentum=0.1, eps=1e-5, channel_axis=channel_axis,
                  num_batches_tracked=nbt, out=out)
    return args, kwargs


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _set(i, fn):
    def apply(args, kwargs):
        args[i] = fn(args[i])
    return apply


def _setx(fn):
    """Change x, and out the same way so that out still matches x."""
    def apply(args, kwargs):
        args[X] = fn(args[X])
        kwargs["out"] = fn(kwargs["out"])
    return apply


def _kw(**changes):
    def apply(args, kwargs):
        kwargs.update(changes)
    return apply


def _kwf(key, fn):
    def apply(args, kwargs):
        kwargs[key] = fn(kwargs[key])
    return apply


def _decay(value):
    """decay given and momentum left at its default."""
    def apply(args, kwargs):
        kwargs.pop("momentum")
        kwargs["decay"] = value
    return apply


def _drop(*keys):
    def apply(args, kwargs):
        for k in keys:
            if isinstance(k, int):
                args[k] = None
            else:
                kwargs.pop(k)
    return apply


X, W, B, RM, RV = range(5)

BN_CASES = [
    # dtypes
    ("x-int32", TypeError, "x", _setx(lambda a: a.astype(np.int32))),
    ("x-int64", TypeError, "x", _setx(lambda a: a.astype(np.int64))),
    ("x-uint8", TypeError, "x", _setx(lambda a: a.astype(np.uint8))),
    ("x-bool", TypeError, "x", _setx(lambda a: a > 0)),
    ("x-complex", TypeError, "x", _setx(lambda a: a.astype(np.complex64))),
    ("x-object", TypeError, "x", _setx(lambda a: a.astype(object))),
    ("x-longdouble", TypeError, "x", _setx(lambda a: a.astype(np.longdouble))),
    ("weight-f64", TypeError, "weight", _set(W, lambda a: a.astype(np.float64))),
    ("weight-int", TypeError, "weight", _set(W, lambda a: a.astype(np.int64))),
    ("bias-f64", TypeError, "bias", _set(B, lambda a: a.astype(np.float64))),
    ("running_mean-f64", TypeError, "running_mean", _set(RM, lambda a: a.astype(np.float64))),
    ("running_var-f64", TypeError, "running_var", _set(RV, lambda a: a.astype(np.float64))),
    ("running_mean-f16", TypeError, "running_mean", _set(RM, lambda a: a.astype(np.float16))),
    ("out-f64", TypeError, "out", _kwf("out", lambda a: a.astype(np.float64))),
    ("out-list", TypeError, "out", _kwf("out", lambda a: a.tolist())),
    # shapes
    ("weight-len", ValueError, "weight", _set(W, lambda a: np.ones(4, a.dtype))),
    ("weight-2d", ValueError, "weight", _set(W, lambda a: a.reshape(3, 1))),
    ("weight-scalar", ValueError, "weight", _set(W, lambda a: a[0])),
    ("bias-len", ValueError, "bias", _set(B, lambda a: a[:2])),
    ("running_mean-len", ValueError, "running_mean", _set(RM, lambda a: np.zeros(5, a.dtype))),
    ("running_var-len", ValueError, "running_var", _set(RV, lambda a: a[:1])),
    ("out-shape", ValueError, "out", _kwf("out", lambda a: np.zeros((4, 5, 3), a.dtype))),
    ("out-shape-size", ValueError, "out", _kwf("out", lambda a: np.zeros((4, 15), a.dtype))),
    # channel_axis
    ("axis-3", AxisError, "channel_axis", _kw(channel_axis=3)),
    ("axis--4", AxisError, "channel_axis", _kw(channel_axis=-4)),
    ("axis-float", TypeError, "channel_axis", _kw(channel_axis=1.0)),
    ("axis-str", TypeError, "channel_axis", _kw(channel_axis="1")),
    # ndim, empty
    ("x-1d", ValueError, "x", _setx(lambda a: a[0, 0])),
    ("x-0d", ValueError, "x", _setx(lambda a: a[0, 0, 0])),
    ("x-empty-batch", ValueError, "x", _setx(lambda a: a[:0])),
    ("x-empty-inner", ValueError, "x", _setx(lambda a: a[:, :, :0])),
    # one value per channel
    ("one-value", ValueError, re.escape(ONE_VALUE), _setx(lambda a: a[:1, :, :1])),
    # eps
    ("eps-0", ValueError, "eps", _kw(eps=0.0)),
    ("eps-neg", ValueError, "eps", _kw(eps=-1e-5)),
    ("eps-nan", ValueError, "eps", _kw(eps=float("nan"))),
    ("eps-inf", ValueError, "eps", _kw(eps=float("inf"))),
    # momentum / decay
    ("momentum-neg", ValueError, "momentum", _kw(momentum=-0.1)),
    ("momentum-big", ValueError, "momentum", _kw(momentum=1.5)),
    ("momentum-nan", ValueError, "momentum", _kw(momentum=float("nan"))),
    ("decay-neg", ValueError, "decay", _decay(-0.1)),
    ("decay-big", ValueError, "decay", _decay(1.01)),
    ("decay-nan", ValueError, "decay", _decay(float("nan"))),
    ("momentum-and-decay", TypeError, r"(?s)(?=.*momentum)(?=.*decay)",
     _kw(momentum=0.5, decay=0.5)),
    ("momentum-none-no-nbt", ValueError, "num_batches_tracked",
     _kw(momentum=None, num_batches_tracked=None)),
    # running statistics
    ("only-running_mean", ValueError, "running_var", _drop(RV)),
    ("only-running_var", ValueError, "running_mean", _drop(RM)),
    ("running_mean-readonly", ValueError, "running_mean", _set(RM, readonly)),
    ("running_var-readonly", ValueError, "running_var", _set(RV, readonly)),
    ("running_mean-list", TypeError, "running_mean", _set(RM, lambda a: a.tolist())),
    ("out-readonly", ValueError, "out", _kwf("out", readonly)),
    ("nbt-f64", TypeError, "num_batches_tracked",
     _kw(num_batches_tracked=np.array(3.0))),
    ("nbt-shape", ValueError, "num_batches_tracked",
     _kw(num_batches_tracked=np.array([3], dtype=np.int64))),
    ("nbt-int", TypeError, "num_batches_tracked", _kw(num_batches_tracked=3)),
    ("nbt-readonly", ValueError, "num_batches_tracked", _kwf("num_batches_tracked", readonly)),
    # threads
    ("n_threads-0", ValueError, "n_threads", _kw(n_threads=0)),
    ("n_threads-float", TypeError, "n_threads", _kw(n_threads=1.5)),
]


def test_valid_call_is_valid():
    """The base call of BN_CASES succeeds: each case breaks exactly one thing."""
    for dtype in (np.float32, np.float64, np.float16):
        args, kwargs = valid_call(dtype)
        y = bnc.batch_norm(*args, **kwargs)
        assert y is kwargs["out"]
        assert int(kwargs["num_batches_tracked"]) == 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("case,exc,match,change", BN_CASES, ids=[c[0] for c in BN_CASES])
def test_batch_norm_bad_input(case, exc, match, change, dtype):
    args, kwargs = valid_call(dtype)
    if dtype == np.float64:
        # mixed-dtype cases: float64 x with float32 parameters
        flip = {"weight-f64": (W, np.float32), "bias-f64": (B, np.float32),
                "running_mean-f64": (RM, np.float32), "running_var-f64": (RV, np.float32),
                "running_mean-f16": (RM, np.float16)}
        if case in flip:
            i, dt = flip[case]
            args[i] = args[i].astype(dt)
            change = None
        if case == "out-f64":
            change = _kwf("out", lambda a: a.astype(np.float32))
    if change is not None:
        change(args, kwargs)
    if match in ("x", "weight", "bias", "running_mean", "running_var", "out", "eps",
                 "momentum", "decay", "num_batches_tracked", "n_threads", "channel_axis"):
        match = name(match)
    check_raises(exc, match, bnc.batch_norm, *args, **kwargs)


@pytest.mark.parametrize("shape,channel_axis", [((1, 3), 1), ((1, 3, 1), 1), ((1, 1, 1, 4), -1),
                                                ((1, 5), -1), ((3, 1), 0)])
@pytest.mark.parametrize("with_stats", [True, False])
def test_one_value_per_channel_when_training(shape, channel_axis, with_stats):
    rng = rng_for("one-value", shape)
    x = make_x(shape, np.float32, rng)
    C = shape[channel_axis]
    w, b, rm, rv = make_params(C, np.float32, rng)
    if not with_stats:
        rm = rv = None
    info = check_raises(ValueError, re.escape(ONE_VALUE), bnc.batch_norm, x, w, b, rm, rv,
                        training=True, channel_axis=channel_axis)
    assert str(info.value).startswith(ONE_VALUE)
    # inference and N=1 with a spatial size are fine
    if with_stats:
        bnc.batch_norm(x, w, b, rm, rv, channel_axis=channel_axis)
    bnc.batch_norm(make_x((1, 3, 2), np.float32, rng), training=True)


def test_training_false_needs_running_stats():
    args, kwargs = valid_call()
    x, w, b = args[:3]
    check_raises(ValueError, f"{name('running_mean')}|{name('running_var')}", bnc.batch_norm,
                 x, w, b, training=False)
    check_raises(ValueError, f"{name('running_mean')}|{name('running_var')}", bnc.batch_norm,
                 x, w, b)


def test_empty_channels():
    x = np.empty((4, 0, 5), np.float32)
    check_raises(ValueError, name("x"), bnc.batch_norm, x, training=True)
    check_raises(ValueError, name("x"), bnc.batch_norm_stats, x)


def test_empty_inference():
    args, _ = valid_call()
    x, w, b, rm, rv = args
    check_raises(ValueError, name("x"), bnc.batch_norm, x[:0], w, b, rm, rv)


def test_readonly_inputs_are_fine():
    """Read-only x, weight and bias are accepted (they are only read)."""
    args, _ = valid_call(np.float64)
    x, w, b = (readonly(a) for a in args[:3])
    rm, rv = args[3:]
    y = bnc.batch_norm(x, w, b, rm, rv)
    assert_close(y, ref_eval(x, w, b, rm, rv), 1e-12)
    y = bnc.batch_norm(x, w, b, training=True)
    assert_close(y, ref_train(x, w, b, None, None)[0], 1e-12)
    y, saved = bnc.batch_norm_forward(x, w, b)
    bnc.batch_norm_backward(readonly(y), x, w, saved)


def test_readonly_running_stats_in_inference_are_fine():
    """Inference only reads the running statistics: read-only arrays are inputs like any other."""
    args, _ = valid_call(np.float64)
    x, w, b, rm, rv = args
    rm, rv = readonly(rm), readonly(rv)
    y = bnc.batch_norm(x, w, b, rm, rv)
    assert_close(y, ref_eval(x, w, b, rm, rv), 1e-12)


def test_decay_with_default_momentum_is_fine():
    args, kwargs = valid_call()
    kwargs.pop("momentum")
    bnc.batch_norm(*args, decay=0.9, **kwargs)


# ---------------------------------------------------------------------------
# batch_norm_forward / batch_norm_backward / stats / update / combine


def _fwd_call(dtype=np.float32):
    args, _ = valid_call(dtype)
    x, w, b, rm, rv = args
    return x, w, b, rm, rv


FWD_CASES = [
    ("mean-without-var", ValueError, "var", dict(mean="rm")),
    ("var-without-mean", ValueError, "mean", dict(var="rv")),
    ("mean-len", ValueError, "mean", dict(mean=np.zeros(4, np.float32), var="rv")),
    ("var-len", ValueError, "var", dict(mean="rm", var=np.ones(2, np.float32))),
    ("mean-f64", TypeError, "mean", dict(mean=np.zeros(3), var="rv")),
    ("eps-0", ValueError, "eps", dict(eps=0.0)),
    ("eps-nan", ValueError, "eps", dict(eps=float("nan"))),
    ("eps-neg", ValueError, "eps", dict(eps=-1.0)),
    ("axis", AxisError, "channel_axis", dict(channel_axis=3)),
    ("out-shape", ValueError, "out", dict(out=np.zeros((3, 4, 5), np.float32))),
    ("out-dtype", TypeError, "out", dict(out=np.zeros((4, 3, 5), np.float64))),
    ("out-readonly", ValueError, "out", dict(out=readonly(np.zeros((4, 3, 5), np.float32)))),
    ("n_threads-0", ValueError, "n_threads", dict(n_threads=0)),
    ("weight-len", ValueError, "weight", dict(weight=np.ones(2, np.float32))),
    ("weight-f64", TypeError, "weight", dict(weight=np.ones(3))),
]


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("case,exc,match,kw", FWD_CASES, ids=[c[0] for c in FWD_CASES])
def test_forward_bad_input(case, exc, match, kw, frozen):
    x, w, b, rm, rv = _fwd_call()
    kw = dict(kw)
    if frozen and "mean" not in kw and "var" not in kw:
        kw.update(mean=rm, var=rv)
    for k in ("mean", "var"):
        if isinstance(kw.get(k), str):
            kw[k] = {"rm": rm, "rv": rv}[kw[k]]
    weight = kw.pop("weight", w)
    check_raises(exc, name(match), bnc.batch_norm_forward, x, weight, b, **kw)


def test_forward_bad_x():
    x, w, b, rm, rv = _fwd_call()
    check_raises(TypeError, name("x"), bnc.batch_norm_forward, x.astype(np.int32), w, b)
    check_raises(ValueError, name("x"), bnc.batch_norm_forward, x[0, 0], w, b)
    check_raises(ValueError, name("x"), bnc.batch_norm_forward, x[:0], w, b)


def _bwd_call(dtype=np.float32):
    x, w, b, rm, rv = _fwd_call(dtype)
    g = make_x(x.shape, dtype, rng_for("bwd-g"))
    _, saved = bnc.batch_norm_forward(x, w, b)
    return g, x, w, saved


BWD_CASES = [
    ("grad_out-shape", ValueError, "grad_out", lambda g, x, w, s: ((g[:, :, :4], x, w, s), {})),
    ("grad_out-dtype", TypeError, "grad_out",
     lambda g, x, w, s: ((g.astype(np.float64), x, w, s), {})),
    ("grad_out-int", TypeError, "grad_out", lambda g, x, w, s: ((g.astype(np.int32), x, w, s), {})),
    ("x-int", TypeError, "x", lambda g, x, w, s: ((g, x.astype(np.int32), w, s), {})),
    ("weight-len", ValueError, "weight", lambda g, x, w, s: ((g, x, w[:2], s), {})),
    ("weight-dtype", TypeError, "weight", lambda g, x, w, s: ((g, x, w.astype(np.float64), s), {})),
    ("saved-len", ValueError, r"saved|mean|invstd",
     lambda g, x, w, s: ((g, x, w, type(s)(*(a[:2] for a in s))), {})),
    ("axis", AxisError, "channel_axis", lambda g, x, w, s: ((g, x, w, s), dict(channel_axis=-4))),
    ("out-shape", ValueError, "out",
     lambda g, x, w, s: ((g, x, w, s), dict(out=np.zeros((4, 3, 4), np.float32)))),
    ("out-dtype", TypeError, "out",
     lambda g, x, w, s: ((g, x, w, s), dict(out=np.zeros((4, 3, 5), np.float16)))),
    ("out-readonly", ValueError, "out",
     lambda g, x, w, s: ((g, x, w, s), dict(out=readonly(np.zeros((4, 3, 5), np.float32))))),
    ("n_threads-0", ValueError, "n_threads", lambda g, x, w, s: ((g, x, w, s), dict(n_threads=0))),
]


@pytest.mark.parametrize("use_batch_stats", [True, False])
@pytest.mark.parametrize("case,exc,match,make", BWD_CASES, ids=[c[0] for c in BWD_CASES])
def test_backward_bad_input(case, exc, match, make, use_batch_stats):
    args, kw = make(*_bwd_call())
    if match in ("grad_out", "x", "weight", "channel_axis", "out", "n_threads"):
        match = name(match)
    check_raises(exc, match, bnc.batch_norm_backward, *args, use_batch_stats=use_batch_stats, **kw)


def test_stats_bad_input():
    x = make_x((4, 3, 5), np.float32, rng_for("stats-bad"))
    check_raises(TypeError, name("x"), bnc.batch_norm_stats, x.astype(np.int16))
    check_raises(ValueError, name("x"), bnc.batch_norm_stats, x[0, 0])
    check_raises(ValueError, name("x"), bnc.batch_norm_stats, x[:0])
    check_raises(AxisError, name("channel_axis"), bnc.batch_norm_stats, x, channel_axis=3)
    check_raises(ValueError, name("n_threads"), bnc.batch_norm_stats, x, n_threads=0)


def _urs_call(dtype=np.float32):
    rng = rng_for("urs-bad")
    rm = rng.standard_normal(3).astype(dtype)
    rv = rng.uniform(1, 2, 3).astype(dtype)
    mean = rng.standard_normal(3).astype(dtype)
    var = rng.uniform(1, 2, 3).astype(dtype)
    return [rm, rv, mean, var, 10], dict(num_batches_tracked=np.array(2, np.int64))


URS_CASES = [
    ("mean-len", ValueError, "mean", lambda a, k: a.__setitem__(2, a[2][:2])),
    ("var-len", ValueError, "var", lambda a, k: a.__setitem__(3, np.ones(4, np.float32))),
    ("running_var-len", ValueError, "running_var", lambda a, k: a.__setitem__(1, a[1][:2])),
    ("running_mean-readonly", ValueError, "running_mean",
     lambda a, k: a.__setitem__(0, readonly(a[0]))),
    ("running_var-readonly", ValueError, "running_var",
     lambda a, k: a.__setitem__(1, readonly(a[1]))),
    ("momentum-big", ValueError, "momentum", lambda a, k: k.update(momentum=2.0)),
    ("momentum-neg", ValueError, "momentum", lambda a, k: k.update(momentum=-1.0)),
    ("decay-big", ValueError, "decay", lambda a, k: k.update(decay=2.0)),
    ("both", TypeError, r"(?s)(?=.*momentum)(?=.*decay)",
     lambda a, k: k.update(momentum=0.3, decay=0.7)),
    ("momentum-none-no-nbt", ValueError, "num_batches_tracked",
     lambda a, k: k.update(momentum=None, num_batches_tracked=None)),
    ("nbt-readonly", ValueError, "num_batches_tracked",
     lambda a, k: k.update(num_batches_tracked=readonly(np.array(2, np.int64)))),
    ("count-0", ValueError, "count", lambda a, k: a.__setitem__(4, 0)),
    ("count-le-correction", ValueError, "count|correction", lambda a, k: a.__setitem__(4, 1)),
]


@pytest.mark.parametrize("case,exc,match,change", URS_CASES, ids=[c[0] for c in URS_CASES])
def test_update_running_stats_bad_input(case, exc, match, change):
    args, kw = _urs_call()
    change(args, kw)
    if re.fullmatch(r"\w+", match):
        match = name(match)
    check_raises(exc, match, bnc.update_running_stats, *args, **kw)


def test_combine_stats_bad_input():
    m = np.zeros((2, 3))
    v = np.ones((2, 3))
    check_raises(ValueError, r"means|vars", bnc.combine_stats, m, np.ones((2, 4)), [3, 4])
    check_raises(ValueError, r"counts|means", bnc.combine_stats, m, v, [3, 4, 5])


def test_set_num_threads_zero(restore_threads):
    with pytest.raises(ValueError, match=r"n_threads|\bn\b|thread"):
        bnc.set_num_threads(0)
    assert bnc.get_num_threads() == restore_threads
    with pytest.raises(ValueError, match=r"n_threads|\bn\b|thread"):
        with bnc.num_threads(0):
            pass  # pragma: no cover
    assert bnc.get_num_threads() == restore_threads


# ---------------------------------------------------------------------------
# NaN / Inf propagate (no crash, no hang, no spreading to other channels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_early_in_a_block_gives_an_inf_mean(bad, dtype):
    """An inf among the first values of a block (those its one-pass shift is
    taken from) still gives the channel's or group's mean as that inf, as
    PyTorch's mean does, and a NaN variance; other channels stay finite."""
    x = np.random.default_rng(7).standard_normal((8, 3, 10, 10)).astype(dtype)
    x[1, 1, 0, 3] = bad  # second sample: in the block's first quarter, not its first value
    mean, var, _ = bnc.batch_norm_stats(x)
    assert mean[1] == bad and np.isnan(var[1])
    assert np.all(np.isfinite(np.delete(mean, 1))) and np.all(np.isfinite(np.delete(var, 1)))
    _, saved = bnc.group_norm_forward(x, 3, None, None)
    assert saved.mean[1, 1] == bad and np.isnan(saved.invstd[1, 1])
    assert np.isfinite(np.delete(saved.mean.ravel(), 4)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape,channel_axis", [((4, 3, 5), 1), ((8, 16, 32, 32), 1),
                                                ((8, 32, 32, 16), -1), ((4096, 16), 1)],
                         ids=["small", "nchw", "nhwc", "2d"])
def test_nonfinite_training(shape, channel_axis, bad, dtype):
    rng = rng_for("nonfinite", shape, np.dtype(dtype).name)
    x = make_x(shape, dtype, rng)
    C = shape[channel_axis]
    w, b, rm, rv = make_params(C, dtype, rng)
    c = 1
    idx = [0] * len(shape)
    idx[channel_axis] = c
    idx[0] = shape[0] - 1
    x[tuple(idx)] = bad
    y_ref, rm_ref, rv_ref, _ = ref_train(x, w, b, rm, rv, channel_axis=channel_axis)
    y = bnc.batch_norm(x, w, b, rm, rv, training=True, channel_axis=channel_axis)
    yc = np.moveaxis(y, channel_axis, 0)
    assert np.all(np.isnan(yc[c])), "a NaN/Inf gives NaN in its channel"
    others = np.delete(yc, c, axis=0)
    assert np.all(np.isfinite(others)), "and nowhere else"
    assert_close(y, y_ref, 1e-3 if dtype == np.float16 else 1e-5)
    assert np.isnan(rm[c]) or np.isinf(rm[c])
    assert np.isnan(rv[c])
    assert np.all(np.isfinite(np.delete(rm, c))) and np.all(np.isfinite(np.delete(rv, c)))
    mean, var, _ = bnc.batch_norm_stats(x, channel_axis=channel_axis)
    assert not np.isfinite(mean[c]) and np.isnan(var[c])
    assert np.all(np.isfinite(np.delete(mean, c))) and np.all(np.isfinite(np.delete(var, c)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inference(bad, dtype):
    rng = rng_for("nonfinite-eval", np.dtype(dtype).name)
    x = make_x((8, 16, 32, 32), dtype, rng)
    w, b, rm, rv = make_params(16, dtype, rng)
    w = np.abs(w)
    x[3, 5, 7, 9] = bad
    y = bnc.batch_norm(x, w, b, rm, rv)
    mask = np.zeros(x.shape, bool)
    mask[3, 5, 7, 9] = True
    if np.isnan(bad):
        assert np.isnan(y[3, 5, 7, 9])
    else:
        assert y[3, 5, 7, 9] == bad
    assert np.all(np.isfinite(y[~mask]))
    assert_close(y, ref_eval(x, w, b, rm, rv), 1e-3 if dtype == np.float16 else 1e-5)
    # NaN in a running statistic: that channel only
    rv2 = rv.copy()
    rv2[2] = np.nan
    y = bnc.batch_norm(x, w, b, rm, rv2)
    assert np.all(np.isnan(y[:, 2]))
    assert np.sum(~np.isfinite(y)) == y[:, 2].size + 1  # + the bad element of channel 5


@pytest.mark.parametrize("use_batch_stats", [True, False])
def test_nonfinite_backward(use_batch_stats):
    rng = rng_for("nonfinite-bwd")
    x = make_x((8, 16, 32, 32), np.float32, rng)
    w, b, rm, rv = make_params(16, np.float32, rng)
    g = make_x(x.shape, np.float32, rng)
    g[2, 4, 1, 1] = np.nan
    m, v = (None, None) if use_batch_stats else (rm, rv)
    _, saved = bnc.batch_norm_forward(x, w, b, mean=m, var=v)
    gi, gw, gb = bnc.batch_norm_backward(g, x, w, saved, use_batch_stats=use_batch_stats)
    assert np.isnan(gw[4]) and np.isnan(gb[4])
    assert np.all(np.isfinite(np.delete(gw, 4))) and np.all(np.isfinite(np.delete(gb, 4)))
    if use_batch_stats:
        assert np.all(np.isnan(gi[:, 4]))
    else:
        assert np.isnan(gi[2, 4, 1, 1]) and np.sum(np.isnan(gi)) == 1
    assert np.all(np.isfinite(np.delete(gi, 4, axis=1)))


# ---------------------------------------------------------------------------
# findings of the property tests and the fuzzer (fuzz/fuzz_api.py): each was
# an OverflowError, a ComplexWarning or a silent cast instead of an error
# naming the argument


@pytest.mark.parametrize("bad", [2**70, -2**70, 2**63])
def test_huge_axes_name_the_argument(bad):
    x = np.ones((4, 3, 5), np.float32)
    calls = {
        "channel_axis": lambda: bnc.batch_norm(x, training=True, channel_axis=bad),
        "axis": lambda: bnc.layer_norm(x, axis=bad),
        "out_channel_axis": lambda: bnc.fold_batch_norm(
            x, None, np.zeros(4), np.ones(4), out_channel_axis=bad),
    }
    for name, call in calls.items():
        with pytest.raises(np.exceptions.AxisError, match=name):
            call()
    with pytest.raises(np.exceptions.AxisError, match="channel_axis"):
        bnc.group_norm(x, 3, channel_axis=bad)


def test_huge_count_names_the_argument():
    x = np.ones((4, 3, 5), np.float32)
    s = bnc.batch_norm_forward(x)[1]
    sums = np.zeros(3)
    for bad in (2**63, 2**70):
        with pytest.raises(ValueError, match="count"):
            bnc.batch_norm_backward_elemt(x, x, None, s.mean, s.invstd, sums, sums, bad)


def test_complex_statistics_are_refused():
    x = np.ones((4, 3, 5), np.float32)
    s = bnc.batch_norm_forward(x)[1]
    z = np.zeros(3, np.complex128)
    with pytest.raises(TypeError, match="sum_dy must hold real numbers"):
        bnc.batch_norm_backward_elemt(x, x, None, s.mean, s.invstd, z, np.zeros(3), 20)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    for kw in ({"mean": z}, {"var": z}):
        args = {"mean": np.zeros(3), "var": np.ones(3), **kw}
        with pytest.raises(TypeError, match="must hold real numbers"):
            bnc.update_running_stats(rm, rv, args["mean"], args["var"], 20)
        assert not rm.any() and (rv == 1).all()


def _misaligned(a):
    raw = np.empty(a.nbytes + 1, np.uint8)
    out = raw[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_misaligned_arrays_reach_c_aligned(dtype):
    """Misaligned x, grad_out, weight and out give the aligned results. The C
    kernels load whole elements: a misaligned pointer is undefined behaviour,
    which the sanitizer job (.ci/sanitize, UBSan) reported for layer and
    group norm before the bindings copied such arrays."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 5)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    sd = np.float64 if dtype == np.float64 else np.float32
    w = rng.uniform(0.5, 1.5, 5).astype(sd)
    wc = rng.uniform(0.5, 1.5, 6).astype(sd)
    cases = {
        "layer_norm": lambda x, g, out: (
            lambda y, s: (y, *bnc.layer_norm_backward(g, x, w, s, out=None)))(
                *bnc.layer_norm_forward(x, w, None, out=out)),
        "group_norm": lambda x, g, out: (
            lambda y, s: (y, *bnc.group_norm_backward(g, x, 3, wc, s)))(
                *bnc.group_norm_forward(x, 3, wc, None, out=out)),
        "instance_norm": lambda x, g, out: (
            lambda y, s: (y, *bnc.instance_norm_backward(g, x, wc, s)))(
                *bnc.instance_norm_forward(x, wc, None, out=out)),
    }
    for name, run in cases.items():
        expected = run(x, g, None)
        out = _misaligned(np.zeros_like(x))
        got = run(_misaligned(x), _misaligned(g), out)
        assert np.array_equal(out, expected[0]), name
        for a, b in zip(got, expected):
            if b is not None:
                assert np.array_equal(a, b), name
