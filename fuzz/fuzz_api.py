"""Coverage-guided fuzzing of bnc's public Python API (atheris / libFuzzer).

Each input picks a public function and builds its arguments from the fuzzer's
bytes: arrays of any rank 0..5 with size-0 and size-1 dimensions, float16/32/64
and wrong dtypes, strided, transposed, reversed and misaligned views, NaN and
infinities; parameters of the right and wrong shapes and types; eps,
momentum, rmax, axes, group counts and thread counts from a list of edge
values. A call may return or raise ValueError / TypeError naming an argument;
anything else (another exception, a crash, a sanitizer report, a hang) is a
finding. atheris instruments bnc's Python modules; the C kernels are
exercised, not coverage-instrumented.

    pip install atheris
    python fuzz/fuzz_api.py -max_total_time=600 [corpus_dir]   # 10 minutes

CI runs it for 60 seconds (.ci/run). A finding writes crash-<hash> in the
working directory; `python fuzz/fuzz_api.py crash-<hash>` replays it, and
the fix gets a regression test in tests/.
"""
import sys

import atheris

with atheris.instrument_imports(include=["bnc"]):
    import bnc

import numpy as np

DTYPES = [np.float32, np.float64, np.float16, np.float32, np.float64, np.int32, np.bool_,
          np.complex64, np.longdouble]
SCALARS = [1e-5, 1e-3, 0.1, 0.0, -1e-5, 1.0, 2.5, np.nan, np.inf, -np.inf, 1e300, 5e-324,
           None, True, 3, -1, 2**70, "1e-5", np.float32(1e-5), np.array(0.1), [0.1]]
THREADS = [None, 1, 2, 3, 0, -1, 64, 2**40, 1.5, "2", True]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 6e4, 1e-30]


def array(fdp, shape=None, dtype=None):
    """An array built from the fuzzer's bytes: shape, dtype, values, layout."""
    if shape is None:
        nd = fdp.ConsumeIntInRange(0, 5)
        shape = tuple(fdp.ConsumeIntInRange(0, 6) for _ in range(nd))
    if dtype is None:
        dtype = fdp.PickValueInList(DTYPES)
    rng = np.random.default_rng(fdp.ConsumeIntInRange(0, 2**32 - 1))
    values = rng.standard_normal(shape) * 10.0 ** fdp.ConsumeIntInRange(-3, 3)
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        if values.size:
            values.flat[fdp.ConsumeIntInRange(0, values.size - 1)] = fdp.PickValueInList(SPECIAL)
    with np.errstate(all="ignore"):
        a = values.astype(dtype)
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 1 and a.ndim:  # steps / reversal along one axis
        ax = fdp.ConsumeIntInRange(0, a.ndim - 1)
        step = fdp.PickValueInList([2, -1, -2])
        big = np.repeat(a, abs(step), axis=ax)
        idx = [slice(None)] * a.ndim
        idx[ax] = slice(None, None, step)
        a = big[tuple(idx)]
    elif kind == 2 and a.ndim > 1:  # transposed
        a = a.T
    elif kind == 3 and a.itemsize > 1:  # misaligned data pointer
        raw = np.empty(a.nbytes + 1, np.uint8)
        b = raw[1:].view(a.dtype).reshape(a.shape)
        b[...] = a
        a = b
    elif kind == 4:  # read-only
        a.flags.writeable = False
    elif kind == 5 and a.ndim:  # broadcast view (zero strides)
        a = np.broadcast_to(a[(slice(0, 1),) * a.ndim], a.shape)
    return a


def vector(fdp, C):
    """A per-channel argument: usually (C,), sometimes wrong or missing."""
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind <= 5:
        return array(fdp, (C,), fdp.PickValueInList([np.float32, np.float64, np.float32,
                                                      np.float16, np.int64]))
    if kind == 6:
        return None
    if kind == 7:
        return array(fdp, (max(C + fdp.ConsumeIntInRange(-2, 2), 0),))
    if kind == 8:
        return [1.0] * C
    return fdp.PickValueInList(SCALARS)


def axis(fdp, nd):
    return fdp.PickValueInList([1, -1, 0, nd - 1, nd, -nd - 1, 2, "1", 1.0, None, 2**70, -2**63])


def shape_of(x):
    return getattr(x, "shape", ())


def channels(x, ax):
    s = shape_of(x)
    try:
        return s[ax] if s else 3
    except (IndexError, TypeError):
        return 3


def fuzz_batch_norm(fdp):
    x = array(fdp)
    ax = axis(fdp, len(shape_of(x)))
    C = channels(x, ax)
    kw = dict(training=fdp.ConsumeBool(), momentum=fdp.PickValueInList(SCALARS),
              eps=fdp.PickValueInList(SCALARS), channel_axis=ax,
              correction=fdp.PickValueInList([0, 1, 2, -1, 1.0]),
              n_threads=fdp.PickValueInList(THREADS))
    if fdp.ConsumeBool():
        kw["num_batches_tracked"] = fdp.PickValueInList(
            [np.array(0, np.int64), np.array([1]), np.array(2.0), 3, None])
    if fdp.ConsumeBool():
        kw["out"] = fdp.PickValueInList([x, np.empty_like(x), np.empty(3)])
    if fdp.ConsumeBool():
        kw["activation"] = fdp.PickValueInList(["relu", None, "gelu", 1])
    if fdp.ConsumeBool():
        kw["residual"] = array(fdp, shape_of(x) if fdp.ConsumeBool() else None)
    bnc.batch_norm(x, vector(fdp, C), vector(fdp, C), vector(fdp, C), vector(fdp, C), **kw)


def fuzz_forward_backward(fdp):
    x = array(fdp)
    ax = axis(fdp, len(shape_of(x)))
    C = channels(x, ax)
    nt = fdp.PickValueInList(THREADS)
    w = vector(fdp, C)
    frozen = fdp.ConsumeBool()
    act = fdp.PickValueInList([None, None, "relu", "tanh"])
    res = array(fdp, shape_of(x)) if fdp.ConsumeBool() else None
    y, saved = bnc.batch_norm_forward(x, w, vector(fdp, C),
                                      mean=vector(fdp, C) if frozen else None,
                                      var=vector(fdp, C) if frozen else None,
                                      eps=fdp.PickValueInList(SCALARS), channel_axis=ax,
                                      activation=act, residual=res, n_threads=nt)
    g = array(fdp, shape_of(x) if fdp.ConsumeBool() else None)
    which = fdp.ConsumeIntInRange(0, 2)
    if which == 0:
        bnc.batch_norm_backward(g, x, w, saved, channel_axis=ax, use_batch_stats=not frozen,
                                activation=act, y=y if fdp.ConsumeBool() else g,
                                residual=res is not None, n_threads=nt)
    elif which == 1:
        sdy, sdyx = bnc.batch_norm_backward_reduce(g, x, saved.mean, saved.invstd,
                                                   channel_axis=ax, n_threads=nt)
        bnc.batch_norm_backward_elemt(g, x, w, saved.mean, vector(fdp, C), sdy, sdyx,
                                      fdp.PickValueInList([1, 0, -1, 10**20, 2.0, x.size]),
                                      channel_axis=ax, n_threads=nt)
    else:
        bnc.batch_norm_stats(g, channel_axis=ax, n_threads=nt)


def fuzz_renorm(fdp):
    x = array(fdp)
    ax = axis(fdp, len(shape_of(x)))
    C = channels(x, ax)
    w = vector(fdp, C)
    kw = dict(rmax=fdp.PickValueInList(SCALARS), dmax=fdp.PickValueInList(SCALARS),
              eps=fdp.PickValueInList(SCALARS), channel_axis=ax,
              n_threads=fdp.PickValueInList(THREADS))
    y, saved = bnc.batch_renorm_forward(x, w, vector(fdp, C), vector(fdp, C),
                                        vector(fdp, C), **kw)
    bnc.batch_renorm_backward(array(fdp, shape_of(x)), x, w, saved, channel_axis=ax)


def fuzz_layer_rms(fdp):
    x = array(fdp)
    ax = axis(fdp, len(shape_of(x)))
    nshape = shape_of(x)[ax:] if isinstance(ax, int) and -len(shape_of(x)) <= ax < len(
        shape_of(x)) else (3,)
    w = array(fdp, nshape) if fdp.ConsumeBool() else None
    nt = fdp.PickValueInList(THREADS)
    if fdp.ConsumeBool():
        y, s = bnc.layer_norm_forward(x, w, array(fdp, nshape) if fdp.ConsumeBool() else None,
                                      axis=ax, eps=fdp.PickValueInList(SCALARS), n_threads=nt)
        bnc.layer_norm_backward(array(fdp, shape_of(x)), x, w, s, axis=ax, n_threads=nt)
    else:
        y, s = bnc.rms_norm_forward(x, w, axis=ax, eps=fdp.PickValueInList(SCALARS),
                                    n_threads=nt)
        bnc.rms_norm_backward(array(fdp, shape_of(x)), x, w, s, axis=ax, n_threads=nt)


def fuzz_group_norm(fdp):
    x = array(fdp)
    ax = fdp.PickValueInList([1, -1, 0, 2])
    C = channels(x, ax)
    G = fdp.PickValueInList([1, 2, 3, 4, 0, -1, C, 2.0, None, True])
    w = vector(fdp, C)
    nt = fdp.PickValueInList(THREADS)
    y, s = bnc.group_norm_forward(x, G, w, vector(fdp, C), channel_axis=ax,
                                  eps=fdp.PickValueInList(SCALARS), n_threads=nt)
    bnc.group_norm_backward(array(fdp, shape_of(x)), x, G, w, s, channel_axis=ax, n_threads=nt)


def fuzz_instance_norm(fdp):
    x = array(fdp)
    ax = fdp.PickValueInList([1, -1, 0, 2])
    C = channels(x, ax)
    w = vector(fdp, C)
    nt = fdp.PickValueInList(THREADS)
    use = fdp.ConsumeBool()
    bnc.instance_norm(x, w, vector(fdp, C), vector(fdp, C), vector(fdp, C),
                      use_input_stats=use, momentum=fdp.PickValueInList(SCALARS),
                      eps=fdp.PickValueInList(SCALARS), channel_axis=ax, n_threads=nt)
    y, s = bnc.instance_norm_forward(x, w, vector(fdp, C),
                                     mean=None if use else vector(fdp, C),
                                     var=None if use else vector(fdp, C), channel_axis=ax,
                                     n_threads=nt)
    bnc.instance_norm_backward(array(fdp, shape_of(x)), x, w, s, use_input_stats=use,
                               channel_axis=ax, n_threads=nt)


def fuzz_stats_helpers(fdp):
    k, C = fdp.ConsumeIntInRange(0, 4), fdp.ConsumeIntInRange(0, 4)
    m, v, n = bnc.combine_stats(array(fdp, (k, C)), array(fdp, (k, C)),
                                fdp.PickValueInList([[1] * k, [0] * k, [-1] * k, list(range(k)),
                                                     np.ones(k), 3]))
    bnc.update_running_stats(vector(fdp, C), vector(fdp, C), m, v,
                             fdp.PickValueInList([n, 0, 1, -1, 2.5]),
                             momentum=fdp.PickValueInList(SCALARS),
                             correction=fdp.PickValueInList([0, 1, 2]))


def fuzz_fold(fdp):
    w = array(fdp)
    oax = fdp.PickValueInList([0, -1, 1, 5])
    O = channels(w, oax)
    bnc.fold_batch_norm(w, vector(fdp, O), vector(fdp, O), vector(fdp, O), vector(fdp, O),
                        vector(fdp, O), eps=fdp.PickValueInList(SCALARS), out_channel_axis=oax)


TARGETS = [fuzz_batch_norm, fuzz_forward_backward, fuzz_renorm, fuzz_layer_rms,
           fuzz_group_norm, fuzz_instance_norm, fuzz_stats_helpers, fuzz_fold]


def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.PickValueInList(TARGETS)
    try:
        with np.errstate(all="ignore"):
            target(fdp)
    except (ValueError, TypeError):
        pass  # documented: bad input names the argument


def main():
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
