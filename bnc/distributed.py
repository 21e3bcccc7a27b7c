"""Synchronized batch norm across processes over MPI (mpi4py), and exact
dataset statistics with Dask.

Data-parallel training splits each batch over processes ("ranks"); batch
norm must then normalize with the statistics of the whole batch. Forward:
each rank reduces its shard with bnc's one-pass kernel to (count, mean, M2)
per channel; the ranks exchange these (an allgather of 2C + 1 numbers each)
and every rank merges them in rank order with Chan's exact formula, in
float64: no sum / sum-of-squares in working precision, and every rank holds
bitwise-identical statistics (the same inputs merged in the same order by the
same code). Each rank then normalizes its shard with the global statistics
and applies the same running-statistics update. Backward: each rank computes
sum(dy) and sum(dy * xhat) of its shard (`batch_norm_backward_reduce`: one
read of dy and x), the sums are exchanged and added in rank order, and the
elementwise pass (`batch_norm_backward_elemt`: one more read) uses the global
count. A rank may hold zero samples.

Errors: before any data is exchanged, every rank validates its arguments and
the ranks compare channel counts and dtypes (one small allgather); a bad
argument on any rank, a mismatch, or an empty global batch raises the same
ValueError on every rank, naming the rank, instead of leaving the others
waiting in a collective.

grad_weight and grad_bias returned by the backward are those of the whole
global batch (already summed over the ranks, equal on every rank): do not
all-reduce them again.

mpi4py is imported on first use (``pip install "bnc[mpi]"`` installs it and
the MPICH wheel); Dask only by `dataset_stats` (``pip install "bnc[dask]"``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

import bnc
from bnc import _core
from bnc.layers import BatchNorm, _Cache
from bnc.batchnorm import (
    _MOMENTUM_NOT_GIVEN,
    Grads,
    _apply_running,
    _check_count,
    _check_running,
)

__all__ = ["SyncBatchNorm", "SyncBatchNormSaved", "sync_batch_norm_forward",
           "sync_batch_norm_backward", "dataset_stats"]


class SyncBatchNormSaved(NamedTuple):
    """What the synchronized forward saves: global per-channel statistics
    (float64 for float64 x, else float32) and the global count."""

    mean: np.ndarray
    invstd: np.ndarray
    var: np.ndarray
    count: int


def _world(comm):
    if comm is not None:
        return comm
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError("bnc.distributed needs mpi4py: pip install \"bnc[mpi]\"") from e
    return MPI.COMM_WORLD


def _local_info(x, channel_axis):
    """(x as an ndarray, channel axis index, C, local count) without the
    non-empty rule of the local kernels: a rank may hold zero samples."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind != "f" or x.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"x must have dtype float16, float32 or float64, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    ax = _core.axis_index(channel_axis, x.ndim, "channel_axis")
    C = x.shape[ax]
    if C == 0:
        raise ValueError(f"x must have at least one channel, got shape {x.shape}")
    return x, ax, C, x.size // C


def _agree(comm, err, C, dtype, what):
    """Every rank learns every rank's (error, C, dtype): raises the same
    ValueError everywhere if any rank failed or the ranks disagree."""
    infos = comm.allgather((None if err is None else f"{type(err).__name__}: {err}", C,
                            None if dtype is None else np.dtype(dtype).str))
    for r, (e, _, _) in enumerate(infos):
        if e is not None:
            raise ValueError(f"{what}: rank {r} failed: {e}")
    Cs = [c for _, c, _ in infos]
    if len(set(Cs)) != 1:
        raise ValueError(f"{what}: the ranks disagree on the number of channels: {Cs}")
    dts = [d for _, _, d in infos]
    if len(set(dts)) != 1:
        raise ValueError(f"{what}: the ranks disagree on the dtype of x: {dts}")


def _gather_rows(comm, row):
    """Allgather of one float64 row per rank: (size, len(row)), rank order."""
    out = np.empty((comm.Get_size(), row.size), np.float64)
    comm.Allgather(np.ascontiguousarray(row, dtype=np.float64), out)
    return out


def sync_batch_norm_forward(x, weight=None, bias=None, *, comm=None, running_mean=None,
                            running_var=None, momentum=_MOMENTUM_NOT_GIVEN, eps=1e-5,
                            channel_axis=1, correction=1, num_batches_tracked=None,
                            out=None, n_threads=None):
    """Training forward of batch norm over the batch split across `comm`'s ranks.

    Every rank calls it with its shard x (any number of samples, zero
    included; same channels and dtype on every rank). Normalizes with the
    global batch statistics and, when running statistics are given, updates
    them (identically on every rank) with the global mean and unbiased
    variance, as `bnc.batch_norm(training=True)` would on the concatenated
    batch.

    Returns (y, SyncBatchNormSaved(mean, invstd, var, count)).
    """
    comm = _world(comm)
    what = "sync_batch_norm_forward"
    err, C, dtype, row = None, None, None, None
    try:
        x, ax, C, count = _local_info(x, channel_axis)
        dtype = x.dtype
        e = _core.check_eps(eps)
        if running_mean is not None or running_var is not None:
            if running_mean is None or running_var is None:
                raise ValueError("running_mean and running_var must be given together")
            m, corr = _check_running(running_mean, running_var, momentum, None, correction,
                                     num_batches_tracked, C, dtype)
        if count:
            # validates weight, bias, out and the rest on a one-row slice before
            # anything is exchanged; the data pass comes after the exchange
            probe = np.take(x, [0], axis=0 if ax != 0 else 1)
            sd = _core.stat_dtype(dtype)
            bnc.batch_norm_forward(probe, weight, bias, mean=np.zeros(C, sd),
                                   var=np.ones(C, sd), eps=e, channel_axis=ax)
            if out is not None:
                _check_out(out, x)
            mean, var, _ = bnc.batch_norm_stats(x, channel_axis=ax, n_threads=n_threads)
            row = np.concatenate([[count], mean, var])
        else:
            row = np.zeros(2 * C + 1)
    except (TypeError, ValueError) as exc:
        err = exc
    _agree(comm, err, C, dtype, what)

    rows = _gather_rows(comm, row)
    counts = rows[:, 0].astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"{what}: the global batch is empty (every rank holds 0 samples)")
    if total == 1:
        raise ValueError(f"{what}: Expected more than 1 value per channel when training, "
                         f"got 1 in the global batch")
    if running_mean is not None:  # every rank raises alike, before anything is written
        _check_count(total, corr)
    gmean, gvar, _ = bnc.combine_stats(rows[:, 1:C + 1], rows[:, C + 1:], counts)
    sd = _core.stat_dtype(dtype)
    if count:
        y, _ = bnc.batch_norm_forward(x, weight, bias, mean=gmean.astype(sd),
                                      var=gvar.astype(sd), eps=e, channel_axis=ax, out=out,
                                      n_threads=n_threads)
    else:
        y = np.empty_like(x) if out is None else out
    if running_mean is not None:
        _apply_running(running_mean, running_var, gmean, gvar, total, m, corr,
                       num_batches_tracked)
    invstd = (1.0 / np.sqrt(gvar + e)).astype(sd)
    return y, SyncBatchNormSaved(gmean.astype(sd), invstd, gvar.astype(sd), total)


def _check_out(out, x):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"out must have x's shape {x.shape} and dtype {x.dtype}, got "
                         f"{out.shape} {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")


def sync_batch_norm_backward(grad_out, x, weight, saved, *, comm=None, channel_axis=1,
                             out=None, n_threads=None):
    """Backward of `sync_batch_norm_forward` (through the global statistics).

    Returns Grads(grad_input (this rank's shard), grad_weight, grad_bias);
    grad_weight and grad_bias are the global batch's, equal on every rank.
    """
    comm = _world(comm)
    what = "sync_batch_norm_backward"
    err, C, dtype, row = None, None, None, None
    try:
        x, ax, C, count = _local_info(x, channel_axis)
        dtype = x.dtype
        if not isinstance(saved, SyncBatchNormSaved):
            raise TypeError("saved must be the SyncBatchNormSaved of sync_batch_norm_forward")
        g = np.asarray(grad_out)
        if g.shape != x.shape or g.dtype != x.dtype:
            raise ValueError(f"grad_out must have x's shape {x.shape} and dtype {x.dtype}, "
                             f"got {g.shape} {g.dtype}")
        if count:
            if out is not None:
                _check_out(out, x)
            sdy, sdyx = bnc.batch_norm_backward_reduce(g, x, saved.mean, saved.invstd,
                                                       channel_axis=ax, n_threads=n_threads)
            # validates weight and the rest on a one-row slice, before the exchange
            probe = [np.take(a, [0], axis=0 if ax != 0 else 1) for a in (g, x)]
            bnc.batch_norm_backward_elemt(probe[0], probe[1], weight, saved.mean,
                                          saved.invstd, sdy, sdyx, saved.count,
                                          channel_axis=ax)
            row = np.concatenate([sdy, sdyx])
        else:
            row = np.zeros(2 * C)
    except (TypeError, ValueError) as exc:
        err = exc
    _agree(comm, err, C, dtype, what)

    rows = _gather_rows(comm, row)
    sums = np.zeros(2 * C)
    for r in range(rows.shape[0]):  # rank order: the same bits on every rank
        sums += rows[r]
    sdy, sdyx = sums[:C], sums[C:]
    if count:
        dx = bnc.batch_norm_backward_elemt(g, x, weight, saved.mean, saved.invstd, sdy, sdyx,
                                           saved.count, channel_axis=ax, out=out,
                                           n_threads=n_threads)
    else:
        dx = np.empty_like(x) if out is None else out
    sd = _core.stat_dtype(dtype)
    return Grads(dx, sdyx.astype(sd), sdy.astype(sd))


class SyncBatchNorm(BatchNorm):
    """`bnc.layers.BatchNorm` whose training forward and backward use the
    statistics of the batch split across `comm`'s ranks (default
    MPI.COMM_WORLD, looked up at the first call).

    Same interface as BatchNorm (modes, freeze, state dicts with PyTorch's
    keys, pickling; `comm` is not pickled: an unpickled layer uses
    COMM_WORLD). In eval mode or frozen it normalizes with the running
    statistics and exchanges nothing. Every rank must call forward and
    backward together (they are collective). grad_weight and grad_bias are
    the global batch's, equal on every rank. No ghost batches
    (virtual_batch_size) here.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, comm=None, channel_axis=1, correction=1,
                 dtype=np.float32, n_threads=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         channel_axis=channel_axis, correction=correction, dtype=dtype,
                         n_threads=n_threads)
        self.comm = comm

    def _config(self):
        cfg = super()._config()
        del cfg["virtual_batch_size"]
        return cfg

    def forward(self, x):
        """y = batch norm of x with the global batch statistics (training) or
        the running statistics (eval, frozen)."""
        xa = self._input(x)
        self._channels(xa, self.channel_axis, self.num_features)
        if not self._batch_stats():
            return self._eval_forward(xa)
        update = self._updates()
        y, saved = sync_batch_norm_forward(
            xa, self.weight, self.bias, comm=self.comm,
            running_mean=self.running_mean if update else None,
            running_var=self.running_var if update else None, momentum=self.momentum,
            eps=self.eps, channel_axis=self.channel_axis, correction=self.correction,
            num_batches_tracked=self.num_batches_tracked if update else None,
            n_threads=self.n_threads)
        self._cache = _Cache(xa, saved, True)
        return y

    def _backward(self, cache, g):
        if not cache.batch_stats:
            return self._eval_backward(cache, g)
        return sync_batch_norm_backward(g, cache.x, self.weight, cache.saved, comm=self.comm,
                                        channel_axis=self.channel_axis,
                                        n_threads=self.n_threads)


def dataset_stats(data, *, channel_axis=1):
    """Exact per-channel population statistics of a Dask array (larger than
    memory): each block is reduced by bnc's kernel to (count, mean, M2) per
    channel, and the blocks' results are merged exactly (Chan's formula, in
    float64) in a pairwise tree of Dask tasks, in block order.

    Returns (mean, var, count): float64 arrays of shape (C,) (biased
    variance) and the number of values per channel; ``var * count /
    (count - 1)`` is the unbiased variance of running statistics.
    """
    try:
        import dask
        import dask.array as da
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError("dataset_stats needs dask: pip install \"bnc[dask]\"") from e
    if not isinstance(data, da.Array):
        raise TypeError(f"data must be a dask.array.Array, got {type(data).__name__}")
    if data.dtype.kind != "f" or data.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"data must have dtype float16, float32 or float64, got {data.dtype}")
    if data.ndim < 2:
        raise ValueError(f"data must have at least 2 dimensions, got shape {data.shape}")
    ax = _core.axis_index(channel_axis, data.ndim, "channel_axis")
    if data.size == 0:
        raise ValueError(f"data must not be empty, got shape {data.shape}")
    # each block holds every channel, so that its result is per channel
    blocks = data.rechunk({ax: data.shape[ax]}).to_delayed().ravel()
    parts = [dask.delayed(_block_stats)(b, ax) for b in blocks]
    while len(parts) > 1:
        parts = [dask.delayed(_merge)(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    n, mean, m2 = dask.compute(parts[0])[0]
    return mean, m2 / n, int(n)


def _block_stats(block, ax):
    """(count, mean, M2) of one block, float64."""
    if block.size == 0:
        C = block.shape[ax]
        return 0, np.zeros(C), np.zeros(C)
    mean, var, n = bnc.batch_norm_stats(block, channel_axis=ax)
    return n, mean.astype(np.float64), var.astype(np.float64) * n


def _merge(a, b):
    """Chan et al.'s exact merge of two (count, mean, M2) triples."""
    na, ma, qa = a
    nb, mb, qb = b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), qa + qb + delta * delta * (na * nb / n)
