"""No partial updates: every function that writes user arrays (out=, running
statistics, num_batches_tracked) is called with one argument broken at a
time, in every way this file knows to break an argument; each such call must
raise TypeError or ValueError, and every array passed to it, written or not,
must be bit for bit what it was.

The breakages are generic (wrong shape, dtype, type, read-only, aliasing,
non-finite or out-of-range scalars), so a new argument or check is covered
without a new case; each function must see a minimum number of them raise.
"""
import numpy as np
import pytest

import bnc
from conftest import bit_equal

RNG = np.random.default_rng(7)
SHAPE = (4, 6, 5)
C = 6


def _x(dtype=np.float32):
    return RNG.standard_normal(SHAPE).astype(dtype)


def _v(value=None, n=C, dtype=np.float32):
    return (RNG.uniform(0.5, 1.5, n) if value is None else np.full(n, value)).astype(dtype)


def _valid_calls():
    """name -> (function, positional args, keyword args), each valid and
    writing to at least one user array."""
    x, g = _x(), _x()
    saved = bnc.batch_norm_forward(x, _v(), _v())[1]
    rsaved = bnc.batch_renorm_forward(x, _v(), _v(), _v(0.0), _v(1.0), rmax=2.0, dmax=1.0)[1]
    lsaved = bnc.layer_norm_forward(x, axis=1)[1]
    rmsaved = bnc.rms_norm_forward(x, axis=2)[1]
    gsaved = bnc.group_norm_forward(x, 3, _v(), _v())[1]
    isaved = bnc.instance_norm_forward(x, _v(), _v())[1]
    nbt = lambda: np.array(2, np.int64)  # noqa: E731
    return {
        "batch_norm": (bnc.batch_norm, [x, _v(), _v(), _v(0.0), _v(1.0)],
                       dict(training=True, momentum=0.1, eps=1e-5, out=np.empty(SHAPE, np.float32),
                            num_batches_tracked=nbt(), n_threads=2)),
        "batch_norm-infer": (bnc.batch_norm, [x, _v(), _v(), _v(0.0), _v(1.0)],
                             dict(out=np.empty(SHAPE, np.float32), n_threads=2)),
        "batch_norm_forward": (bnc.batch_norm_forward, [x, _v(), _v()],
                               dict(out=np.empty(SHAPE, np.float32), eps=1e-5)),
        "batch_norm_backward": (bnc.batch_norm_backward, [g, x, _v(), saved],
                                dict(out=np.empty(SHAPE, np.float32))),
        "batch_norm_backward_elemt": (bnc.batch_norm_backward_elemt,
                                      [g, x, _v(), saved.mean, saved.invstd, _v(n=C, dtype=np.float64),
                                       _v(n=C, dtype=np.float64), 20],
                                      dict(out=np.empty(SHAPE, np.float32))),
        "update_running_stats": (bnc.update_running_stats, [_v(0.0), _v(1.0), _v(), _v(), 20],
                                 dict(momentum=0.1, num_batches_tracked=nbt())),
        "batch_renorm": (bnc.batch_renorm, [x, _v(), _v(), _v(0.0), _v(1.0)],
                         dict(training=True, rmax=2.0, dmax=1.0, out=np.empty(SHAPE, np.float32),
                              num_batches_tracked=nbt())),
        "batch_renorm_forward": (bnc.batch_renorm_forward, [x, _v(), _v(), _v(0.0), _v(1.0)],
                                 dict(rmax=2.0, dmax=1.0, out=np.empty(SHAPE, np.float32))),
        "batch_renorm_backward": (bnc.batch_renorm_backward, [g, x, _v(), rsaved],
                                  dict(out=np.empty(SHAPE, np.float32))),
        "layer_norm_forward": (bnc.layer_norm_forward, [x, np.ones((6, 5), np.float32),
                                                        np.zeros((6, 5), np.float32)],
                               dict(axis=1, out=np.empty(SHAPE, np.float32))),
        "layer_norm_backward": (bnc.layer_norm_backward, [g, x, None, lsaved],
                                dict(axis=1, out=np.empty(SHAPE, np.float32))),
        "rms_norm_forward": (bnc.rms_norm_forward, [x, np.ones(5, np.float32)],
                             dict(axis=2, out=np.empty(SHAPE, np.float32))),
        "rms_norm_backward": (bnc.rms_norm_backward, [g, x, None, rmsaved],
                              dict(axis=2, out=np.empty(SHAPE, np.float32))),
        "group_norm_forward": (bnc.group_norm_forward, [x, 3, _v(), _v()],
                               dict(out=np.empty(SHAPE, np.float32))),
        "group_norm_backward": (bnc.group_norm_backward, [g, x, 3, _v(), gsaved],
                                dict(out=np.empty(SHAPE, np.float32))),
        "instance_norm": (bnc.instance_norm, [x, _v(), _v(), _v(0.0), _v(1.0)],
                          dict(momentum=0.1, out=np.empty(SHAPE, np.float32),
                               num_batches_tracked=nbt())),
        "instance_norm_backward": (bnc.instance_norm_backward, [g, x, _v(), isaved],
                                   dict(out=np.empty(SHAPE, np.float32))),
    }


def _readonly(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def _breakages(value):
    """Ways to break one argument, by what it is."""
    if isinstance(value, np.ndarray):
        out = [
            value.astype(np.int32), value.astype(np.complex64), value.reshape(-1)[:-1],
            np.concatenate([value.reshape(-1), value.reshape(-1)[:1]]),
            value[None], value.tolist() if value.ndim == 0 else "an array", None,
        ]
        if value.ndim >= 1 and value.size > 1:
            out.append(value.reshape(-1)[::-1].reshape(value.shape)[..., :1])
        if value.ndim:
            out.append(_readonly(value))  # read-only: an error for arrays written to
        return out
    if isinstance(value, tuple):  # saved statistics
        return [value[:1], tuple(np.asarray(v)[:-1] for v in value), None, 3]
    if isinstance(value, bool):
        return ["yes", None, 2.5]
    if isinstance(value, (int, np.integer)):
        return [0, -3, 2.5, "3", None, 2**70]
    if isinstance(value, float):
        return [np.nan, np.inf, -1.0, 0.0, 2.0, "0.1", [0.1]]
    if value is None:
        return ["an array", np.ones(1)]
    return []


def _arrays(args, kwargs):
    return [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]


MIN_RAISING = 6


@pytest.mark.parametrize("name", sorted(_valid_calls()))
def test_a_failed_call_writes_nothing(name):
    fn, args, kwargs = _valid_calls()[name]
    fn(*args, **kwargs)  # the base call is valid
    raised = 0
    for pos in list(range(len(args))) + list(kwargs):
        base = args[pos] if isinstance(pos, int) else kwargs[pos]
        for bad in _breakages(base):
            fn, a, kw = _valid_calls()[name]
            if isinstance(pos, int):
                a = list(a)
                a[pos] = bad
            else:
                kw = dict(kw, **{pos: bad})
            arrays = _arrays(a, kw)
            before = [np.array(v, copy=True) for v in arrays]
            try:
                with np.errstate(all="ignore"):
                    fn(*a, **kw)
            except (TypeError, ValueError):
                raised += 1
                for v, b in zip(arrays, before):
                    assert bit_equal(v, b), (
                        f"{name}: argument {pos!r} = {bad!r:.60} raised, but an array was "
                        f"written")
    assert raised >= MIN_RAISING, f"{name}: only {raised} broken calls raised"


def test_out_overlapping_an_input_writes_nothing():
    """out= sharing memory with an input it does not replace element for
    element raises before anything is written."""
    x = _x()
    g = _x()
    buf = np.concatenate([x.reshape(-1), x.reshape(-1)[:1]])
    shifted = buf[1:].reshape(SHAPE)  # x's values, one element off
    shifted[...] = x
    calls = {
        "batch_norm_backward": lambda: bnc.batch_norm_backward(
            g, x, None, bnc.batch_norm_forward(x)[1], out=x),
        "layer_norm_backward": lambda: bnc.layer_norm_backward(
            g, x, None, bnc.layer_norm_forward(x)[1], out=x),
        "group_norm_backward": lambda: bnc.group_norm_backward(
            g, x, 3, None, bnc.group_norm_forward(x, 3)[1], out=x),
        "batch_norm-shifted": lambda: bnc.batch_norm(
            buf[:-1].reshape(SHAPE), training=True, out=shifted),
    }
    for name, call in calls.items():
        before = x.copy(), g.copy(), buf.copy()
        with pytest.raises(ValueError, match="overlap"):
            call()
        assert bit_equal(x, before[0]) and bit_equal(g, before[1]), name
        assert bit_equal(buf, before[2]), name
