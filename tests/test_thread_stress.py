"""Thread safety: every op runs from 8 Python threads at once (the kernels
release the GIL) for a fixed number of iterations, each thread with its own
output arrays, and every result equals the serial one bit for bit.

bnc keeps no global state in C; the only process-wide setting is the default
thread count (bnc.set_num_threads), which these calls do not touch. bnc does
not declare itself compatible with free-threaded CPython: this test has not
run on a free-threaded build (see README, "Threads").
"""
import threading

import numpy as np

import bnc
from conftest import bit_equal

THREADS = 8
ITERATIONS = 25


def _data():
    rng = np.random.default_rng(2026)
    x = rng.standard_normal((6, 8, 9, 10)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    rm = np.zeros(8, np.float32)
    rv = np.ones(8, np.float32)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))  # channels last
    x16 = x.astype(np.float16)
    x64 = x.astype(np.float64)
    return x, g, w, b, rm, rv, xl, x16, x64


def _ops():
    """name -> function(n_threads) returning a tuple of fresh result arrays;
    functions that update arrays in place get their own copies each call."""
    x, g, w, b, rm, rv, xl, x16, x64 = _data()
    gl = np.ascontiguousarray(np.moveaxis(g, 1, -1))

    def bn_train(nt):
        m, v, out = rm.copy(), rv.copy(), np.empty_like(x)
        nbt = np.array(0, np.int64)
        bnc.batch_norm(x, w, b, m, v, training=True, out=out, num_batches_tracked=nbt,
                       n_threads=nt)
        return out, m, v, nbt

    def bn_pair(nt):
        y, s = bnc.batch_norm_forward(xl, w, b, channel_axis=-1, n_threads=nt)
        return (y, *s, *bnc.batch_norm_backward(gl, xl, w, s, channel_axis=-1, n_threads=nt))

    def bn_split(nt):
        s = bnc.batch_norm_forward(x, w, b, n_threads=nt)[1]
        sdy, sdyx = bnc.batch_norm_backward_reduce(g, x, s.mean, s.invstd, n_threads=nt)
        dx = bnc.batch_norm_backward_elemt(g, x, w, s.mean, s.invstd, sdy, sdyx,
                                           x.size // 8, n_threads=nt)
        return sdy, sdyx, dx

    def renorm(nt):
        m, v = rm.copy(), rv.copy()
        y, s = bnc.batch_renorm_forward(x16, w, b, m, v, rmax=2.0, dmax=1.0, n_threads=nt)
        gr = bnc.batch_renorm_backward(g.astype(np.float16), x16, w, s, n_threads=nt)
        y2 = bnc.batch_renorm(x, w, b, m, v, training=True, rmax=2.0, dmax=1.0, n_threads=nt)
        return (y, *s, *gr, y2, m, v)

    def layer(nt):
        y, s = bnc.layer_norm_forward(x64, None, None, axis=2, n_threads=nt)
        return (y, *s, *bnc.layer_norm_backward(g.astype(np.float64), x64, None, s, axis=2,
                                                n_threads=nt))

    def rms(nt):
        y, s = bnc.rms_norm_forward(x, np.ones((9, 10), np.float32), axis=-2, n_threads=nt)
        return (y, *s, *bnc.rms_norm_backward(g, x, np.ones((9, 10), np.float32), s, axis=-2,
                                              n_threads=nt))

    def group(nt):
        y, s = bnc.group_norm_forward(xl, 4, w, b, channel_axis=-1, n_threads=nt)
        return (y, *s, *bnc.group_norm_backward(gl, xl, 4, w, s, channel_axis=-1, n_threads=nt))

    def instance(nt):
        m, v = rm.copy(), rv.copy()
        y = bnc.instance_norm(xl, w, b, m, v, channel_axis=-1, n_threads=nt)
        y2, s = bnc.instance_norm_forward(x, w, b, n_threads=nt)
        return (y, m, v, y2, *s, *bnc.instance_norm_backward(g, x, w, s, n_threads=nt))

    def stats(nt):
        mean, var, n = bnc.batch_norm_stats(x16, n_threads=nt)
        m, v = rm.copy(), rv.copy()
        bnc.update_running_stats(m, v, *bnc.combine_stats(np.stack([mean, mean]),
                                                          np.stack([var, var]), [n, n]))
        return mean, var, m, v

    def fold(nt):
        f = bnc.fold_batch_norm(np.ones((8, 3, 2, 2), np.float32), None, rm, rv, w, b)
        return f.weight, f.bias

    return {f.__name__: f for f in (bn_train, bn_pair, bn_split, renorm, layer, rms, group,
                                    instance, stats, fold)}


def test_every_op_from_eight_threads():
    ops = _ops()
    expected = {name: tuple(np.array(a, copy=True) for a in f(1)) for name, f in ops.items()}
    names = sorted(ops)
    failures = []
    start = threading.Barrier(THREADS)

    def worker(k):
        start.wait()
        for it in range(ITERATIONS):
            name = names[(k + it) % len(names)]
            nt = 1 + (k + it) % 2  # some calls use OpenMP threads too
            try:
                got = ops[name](nt)
            except Exception as e:  # pragma: no cover - reported below
                failures.append(f"{name}: {type(e).__name__}: {e}")
                continue
            for i, (a, e) in enumerate(zip(got, expected[name])):
                if not bit_equal(np.asarray(a), e):
                    failures.append(f"{name}: result {i} differs from the serial run")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not failures, failures[:10]
