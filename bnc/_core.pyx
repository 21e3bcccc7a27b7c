"""bnc._core - the compiled module: validate -> canonical view -> nogil C call.

Every public kernel here follows the same order (see STYLE.md): check every
argument and raise naming it, build the canonical (outer, C, inner) view and
allocate outputs, resolve the thread count, dispatch on dtype, call C without
the GIL, and map the status code to an exception.
"""
import operator
import os

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t

from bnc._cbnc cimport *

cnp.import_array()

from numpy.lib.array_utils import normalize_axis_index

__all__ = [
    "batch_norm_stats", "batch_norm_forward_raw", "batch_norm_backward_raw",
    "batch_norm_backward_reduce", "batch_norm_backward_elemt",
    "get_num_threads", "set_num_threads", "openmp_enabled", "c_version",
]

# ---------------------------------------------------------------- threads ---

cdef object _global_threads = None  # set_num_threads() value, or None


def _env_threads():
    value = os.environ.get("BNC_NUM_THREADS")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"BNC_NUM_THREADS must be an integer, got {value!r}") from None
    return _count_back(n, "BNC_NUM_THREADS")


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _count_back(n, name):
    if n == 0:
        raise ValueError(f"{name} must be a non-zero integer, got 0")
    if n < 0:
        return max(1, _usable_cores() + 1 + n)
    return n


cdef object _env_default = _env_threads()  # BNC_NUM_THREADS, read once at import


def get_num_threads():
    """Number of threads a kernel call uses when n_threads is None.

    The value set by `set_num_threads`, else BNC_NUM_THREADS (read at import),
    else OpenMP's default (OMP_NUM_THREADS, a threadpoolctl limit, or the
    usable cores). OpenMP's default is shared by every library in the process
    that uses the same OpenMP runtime: torch.set_num_threads changes it too.
    """
    if _global_threads is not None:
        return _global_threads
    if _env_default is not None:
        return _env_default
    return bnc_default_threads()


def set_num_threads(n):
    """Set the default thread count (None restores the default); returns the previous.

    n < 0 counts back from the usable cores (-1: all of them); 0 is a ValueError.
    """
    global _global_threads
    previous = get_num_threads()
    _global_threads = None if n is None else _count_back(_as_int(n, "n"), "n")
    return previous


cdef int _threads(object n_threads) except -1:
    if n_threads is None:
        return get_num_threads()
    return _count_back(_as_int(n_threads, "n_threads"), "n_threads")


def openmp_enabled():
    """True if the C core was built with OpenMP."""
    return bool(bnc_openmp_enabled())


def c_version():
    """Version string of the compiled C core."""
    return bnc_version().decode()


# ------------------------------------------------------------- validation ---

cdef object _as_int(object v, str name):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}") from None


cdef object _as_input(object v, str name):
    """v as a float16/32/64 ndarray in native byte order, at least 2-D, not empty."""
    a = v if type(v) is np.ndarray else np.asarray(v)
    dt = a.dtype
    if dt.kind != "f" or dt.itemsize not in (2, 4, 8):
        raise TypeError(f"{name} must be a float16, float32 or float64 array, got dtype {dt}")
    if not dt.isnative:
        a = a.astype(dt.newbyteorder("="))
    if a.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (N, C, ...), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    return a


_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def stat_dtype(dtype):
    """dtype of per-channel arrays for data of `dtype`: float64 for float64, else float32."""
    return np.dtype(np.float64) if np.dtype(dtype).itemsize == 8 else np.dtype(np.float32)


cdef object _param(object v, str name, int64_t C, object xdt):
    """A per-channel input (weight, bias, mean, ...) as a contiguous (C,) array."""
    if v is None:
        return None
    pdt = _F64 if xdt.itemsize == 8 else _F32
    if (type(v) is np.ndarray and v.dtype == pdt and v.ndim == 1 and v.shape[0] == C
            and (<cnp.ndarray>v).flags.c_contiguous):
        return v  # the common case, without a call into NumPy
    if isinstance(v, np.ndarray):
        if v.dtype != pdt and v.dtype != xdt:
            raise TypeError(f"{name} must have dtype {pdt} for {xdt} x, got {v.dtype}")
    else:
        v = np.asarray(v)
        if v.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {v.dtype}")
    if v.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},), one value per channel, got {v.shape}")
    return np.ascontiguousarray(v, dtype=pdt)


def check_eps(eps):
    """eps as a float; ValueError unless finite and > 0."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}") from None
    if not (e > 0 and e != float("inf")):
        raise ValueError(f"eps must be finite and > 0, got {eps!r}")
    return e


cdef int _axis(object channel_axis, int ndim) except -1:
    return normalize_axis_index(_as_int(channel_axis, "channel_axis"), ndim,
                                "channel_axis")


def check_input(x, channel_axis, bint training):
    """Validate x and channel_axis: returns (x as an ndarray, C).

    Raises as the kernels would: TypeError/ValueError naming x, AxisError naming
    channel_axis, and PyTorch's error for one value per channel in training.
    """
    x = _as_input(x, "x")
    C = x.shape[_axis(channel_axis, x.ndim)]
    if training and x.size // C < 2:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {x.shape}")
    return x, C


def as_int(v, name):
    """v as a Python int; TypeError naming `name` otherwise."""
    return _as_int(v, name)


cdef object _check_out(object out, object x, str name):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != x.dtype:
        raise TypeError(f"{name} must have dtype {x.dtype}, got {out.dtype}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


cdef object _refuse_overlap(object out, str name, list inputs, object allowed):
    """ValueError if out shares memory with an input (other than `allowed` itself)."""
    for other, oname in inputs:
        if other is None:
            continue
        if allowed is not None and other is allowed and _same_view(out, other):
            continue
        if np.may_share_memory(out, other) and np.shares_memory(out, other):
            raise ValueError(f"{name} must not overlap {oname}"
                             + (" (only out=x exactly is allowed)" if allowed is not None else ""))


cdef bint _same_view(object a, object b):
    return (cnp.PyArray_DATA(<cnp.ndarray>a) == cnp.PyArray_DATA(<cnp.ndarray>b)
            and a.strides == b.strides and a.shape == b.shape)


# --------------------------------------------------------- canonical view ---
#
# The C kernels see (outer, C, inner) with a contiguous inner run and one
# stride for outer and one for channels. An array that folds so is passed as
# it is. One that does not (a slice of the last axis, say) is cut into pieces
# along its largest-stride axes so that every piece folds; the kernels then
# run piece by piece and the statistics are merged exactly. Pieces are used
# in the slab layout only, with inner runs of at least PIECE_MIN_RUN elements
# and pieces of at least PIECE_MIN_SIZE (a kernel call each); otherwise the
# array is copied: measured, one copy plus one call is then the faster way
# (README, "Layouts").

PIECE_MIN_RUN = 32
PIECE_MIN_SIZE = 1 << 14
_ONE_PIECE = np.zeros(1, np.int64)


cdef class _Layout:
    """Which axes of an array fold into outer and inner, as read off x; the
    `extra` axes are iterated over as pieces."""
    cdef public int axis
    cdef public tuple outer_axes, inner_axes, extra
    cdef bnc_dims_t d
    cdef bint contig  # x is C-contiguous: the common case, checked first

    def __init__(self, x, int axis, tuple extra=()):
        cdef cnp.ndarray a = x
        cdef int nd = a.ndim, i, j, n = 0, t
        cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(a)
        cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
        cdef int order[64]
        cdef Py_ssize_t ckey
        C = shape[axis]
        self.contig = not extra and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)
        if self.contig:
            self.axis = axis
            self.extra = extra
            self.d.channels = C
            self.d.outer = 1
            for i in range(axis):
                self.d.outer *= shape[i]
            self.d.inner = 1
            for i in range(axis + 1, nd):
                self.d.inner *= shape[i]
            if C == 1:  # one channel: every other axis inner
                self.outer_axes = ()
                self.inner_axes = tuple([i for i in range(nd) if i != axis and shape[i] > 1])
            else:
                self.outer_axes = tuple([i for i in range(axis) if shape[i] > 1])
                self.inner_axes = tuple([i for i in range(axis + 1, nd) if shape[i] > 1])
            return
        ckey = -1 if C == 1 else abs(st[axis])  # one channel: every other axis inner
        for i in range(nd):  # non-channel axes of size > 1, by |stride| descending
            if i == axis or shape[i] == 1 or i in extra:
                continue
            j = n
            while j > 0 and abs(st[order[j - 1]]) < abs(st[i]):
                order[j] = order[j - 1]
                j -= 1
            order[j] = i
            n += 1
        self.axis = axis
        self.extra = extra
        self.outer_axes = tuple([order[i] for i in range(n) if abs(st[order[i]]) > ckey >= 0])
        self.inner_axes = tuple([order[i] for i in range(n) if not abs(st[order[i]]) > ckey >= 0])
        self.d.channels = C
        self.d.outer = 1
        for t in self.outer_axes:
            self.d.outer *= shape[t]
        self.d.inner = 1
        for t in self.inner_axes:
            self.d.inner *= shape[t]

    cdef object fit(self, object arr, bnc_strides_t *s):
        """Byte offsets of arr's pieces (int64 array) with its element strides
        in *s, or None if arr does not fit this layout."""
        cdef Py_ssize_t isz = arr.itemsize
        cdef cnp.ndarray arr_nd = arr
        if (self.contig and cnp.PyArray_IS_C_CONTIGUOUS(arr_nd)
                and cnp.PyArray_ISALIGNED(arr_nd)):
            s.outer = self.d.channels * self.d.inner
            s.channel = self.d.inner
            return _ONE_PIECE
        if not arr.flags.aligned:
            return None
        shape, st = arr.shape, arr.strides
        expected = isz
        for a in reversed(self.inner_axes):  # inner: contiguous run
            if st[a] != expected:
                return None
            expected *= shape[a]
        for i in range(len(self.outer_axes) - 1):  # outer: one merged stride
            a, b = self.outer_axes[i], self.outer_axes[i + 1]
            if st[a] != st[b] * shape[b]:
                return None
        so = st[self.outer_axes[len(self.outer_axes) - 1]] if self.outer_axes else 0
        sc = st[self.axis] if self.d.channels > 1 else 0
        if so % isz or sc % isz:
            return None
        s.outer = so // isz
        s.channel = sc // isz
        if not self.extra:
            return _ONE_PIECE
        off = _ONE_PIECE
        for a in self.extra:
            off = (off[:, None] + np.arange(shape[a], dtype=np.int64) * st[a]).ravel()
        return off

    cdef bint efficient(self):
        """True if pieces in this layout beat a copy (see PIECE_MIN_RUN)."""
        size = self.d.outer * self.d.channels * self.d.inner
        return self.d.inner >= PIECE_MIN_RUN and size >= PIECE_MIN_SIZE


cdef class _View:
    """x in its canonical view (possibly in pieces); other arrays laid out to match."""
    cdef _Layout layout
    cdef public object x, xoff
    cdef bnc_strides_t xs
    cdef public Py_ssize_t npieces

    def __init__(self, x, int axis):
        self.layout = _Layout(x, axis)
        off = self.layout.fit(x, &self.xs)
        if off is None:
            off = self._try_pieces(x, axis)
        if off is None:
            # no efficient view: copy once, in x's own axis order
            x = np.copy(x, order="K")
            self.layout = _Layout(x, axis)
            off = self.layout.fit(x, &self.xs)
            if off is None:
                raise AssertionError("bnc: a copied array has no canonical view")
        self.x = x
        self.xoff = off
        self.npieces = len(off)

    cdef object _try_pieces(self, object x, int axis):
        """Cut x along its largest-stride axes until every piece folds."""
        cdef _Layout lay
        cdef bnc_strides_t s
        axes = self.layout.outer_axes + self.layout.inner_axes
        for e in range(1, len(axes)):
            lay = _Layout(x, axis, tuple(axes[:e]))
            off = lay.fit(x, &s)
            if off is not None:
                if not lay.efficient():
                    return None
                self.layout = lay
                self.xs = s
                return off
        return None

    cdef tuple like_x(self, object a, bnc_strides_t *s):
        """(a or a copy of it that fits the layout, its piece offsets)."""
        off = self.layout.fit(a, s)
        if off is not None:
            return a, off
        b = np.empty_like(self.x)
        np.copyto(b, a)
        return b, self.layout.fit(b, s)

    cdef tuple target(self, object out, bnc_strides_t *s):
        """(the array the kernel writes: out if it fits, else a scratch twin, offsets)."""
        off = self.layout.fit(out, s)
        if off is not None:
            return out, off
        return self.like_x(np.empty_like(self.x), s)


cdef inline void *_ptr(object a):
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline void *_ptr_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef int _raise_status(int status) except -1:
    if status == BNC_ERR_NOMEM:
        raise MemoryError(bnc_strerror(status).decode())
    raise RuntimeError(f"bnc C core: {bnc_strerror(status).decode()} (status {status})")


cdef inline int _check(int status) except -1:
    if status != BNC_OK:
        _raise_status(status)
    return 0


# ---------------------------------------------------- dtype dispatch (nogil) ---

cdef int _stats(int isz, bnc_dims_t d, void *x, bnc_strides_t xs, double *m,
                double *v, int nt) noexcept nogil:
    if isz == 4:
        return bnc_batchnorm_stats_f32(d, <float *>x, xs, m, v, nt)
    if isz == 8:
        return bnc_batchnorm_stats_f64(d, <double *>x, xs, m, v, nt)
    return bnc_batchnorm_stats_f16(d, <bnc_f16_t *>x, xs, m, v, nt)


cdef int _fwd_train(int isz, bnc_dims_t d, void *x, bnc_strides_t xs, void *w,
                    void *b, double eps, void *y, bnc_strides_t ys, void *sm,
                    void *si, void *sv, int nt) noexcept nogil:
    if isz == 4:
        return bnc_batchnorm_fwd_train_f32(d, <float *>x, xs, <float *>w, <float *>b,
                                           eps, <float *>y, ys, <float *>sm,
                                           <float *>si, <float *>sv, nt)
    if isz == 8:
        return bnc_batchnorm_fwd_train_f64(d, <double *>x, xs, <double *>w,
                                           <double *>b, eps, <double *>y, ys,
                                           <double *>sm, <double *>si, <double *>sv, nt)
    return bnc_batchnorm_fwd_train_f16(d, <bnc_f16_t *>x, xs, <float *>w, <float *>b,
                                       eps, <bnc_f16_t *>y, ys, <float *>sm,
                                       <float *>si, <float *>sv, nt)


cdef int _fwd_eval(int isz, bnc_dims_t d, void *x, bnc_strides_t xs, void *w,
                   void *b, void *m, void *v, double eps, void *y, bnc_strides_t ys,
                   int nt) noexcept nogil:
    if isz == 4:
        return bnc_batchnorm_fwd_eval_f32(d, <float *>x, xs, <float *>w, <float *>b,
                                          <float *>m, <float *>v, eps, <float *>y, ys, nt)
    if isz == 8:
        return bnc_batchnorm_fwd_eval_f64(d, <double *>x, xs, <double *>w,
                                          <double *>b, <double *>m, <double *>v, eps,
                                          <double *>y, ys, nt)
    return bnc_batchnorm_fwd_eval_f16(d, <bnc_f16_t *>x, xs, <float *>w, <float *>b,
                                      <float *>m, <float *>v, eps, <bnc_f16_t *>y, ys, nt)


ctypedef int (*_bwd_f32_t)(bnc_dims_t, const float *, bnc_strides_t, const float *,
                           bnc_strides_t, const float *, const float *, const float *,
                           float *, bnc_strides_t, float *, float *, int) noexcept nogil
ctypedef int (*_bwd_f64_t)(bnc_dims_t, const double *, bnc_strides_t, const double *,
                           bnc_strides_t, const double *, const double *, const double *,
                           double *, bnc_strides_t, double *, double *, int) noexcept nogil
ctypedef int (*_bwd_f16_t)(bnc_dims_t, const bnc_f16_t *, bnc_strides_t,
                           const bnc_f16_t *, bnc_strides_t, const float *, const float *,
                           const float *, bnc_f16_t *, bnc_strides_t, float *, float *,
                           int) noexcept nogil


cdef int _bwd(int isz, bint train, bnc_dims_t d, void *dy, bnc_strides_t dys,
              void *x, bnc_strides_t xs, void *w, void *m, void *s, void *dx,
              bnc_strides_t dxs, void *dw, void *db, int nt) noexcept nogil:
    cdef _bwd_f32_t f32 = bnc_batchnorm_bwd_train_f32 if train else bnc_batchnorm_bwd_eval_f32
    cdef _bwd_f64_t f64 = bnc_batchnorm_bwd_train_f64 if train else bnc_batchnorm_bwd_eval_f64
    cdef _bwd_f16_t f16 = bnc_batchnorm_bwd_train_f16 if train else bnc_batchnorm_bwd_eval_f16
    if isz == 4:
        return f32(d, <float *>dy, dys, <float *>x, xs, <float *>w, <float *>m,
                   <float *>s, <float *>dx, dxs, <float *>dw, <float *>db, nt)
    if isz == 8:
        return f64(d, <double *>dy, dys, <double *>x, xs, <double *>w, <double *>m,
                   <double *>s, <double *>dx, dxs, <double *>dw, <double *>db, nt)
    return f16(d, <bnc_f16_t *>dy, dys, <bnc_f16_t *>x, xs, <float *>w, <float *>m,
               <float *>s, <bnc_f16_t *>dx, dxs, <float *>dw, <float *>db, nt)


cdef int _bwd_reduce(int isz, bnc_dims_t d, void *dy, bnc_strides_t dys, void *x,
                     bnc_strides_t xs, void *m, void *s, double *sdy, double *sdyx,
                     int nt) noexcept nogil:
    if isz == 4:
        return bnc_batchnorm_bwd_reduce_f32(d, <float *>dy, dys, <float *>x, xs,
                                            <float *>m, <float *>s, sdy, sdyx, nt)
    if isz == 8:
        return bnc_batchnorm_bwd_reduce_f64(d, <double *>dy, dys, <double *>x, xs,
                                            <double *>m, <double *>s, sdy, sdyx, nt)
    return bnc_batchnorm_bwd_reduce_f16(d, <bnc_f16_t *>dy, dys, <bnc_f16_t *>x, xs,
                                        <float *>m, <float *>s, sdy, sdyx, nt)


cdef int _bwd_elemt(int isz, bnc_dims_t d, void *dy, bnc_strides_t dys, void *x,
                    bnc_strides_t xs, void *w, void *m, void *s, double *sdy,
                    double *sdyx, int64_t count, void *dx, bnc_strides_t dxs,
                    int nt) noexcept nogil:
    if isz == 4:
        return bnc_batchnorm_bwd_elemt_f32(d, <float *>dy, dys, <float *>x, xs,
                                           <float *>w, <float *>m, <float *>s, sdy,
                                           sdyx, count, <float *>dx, dxs, nt)
    if isz == 8:
        return bnc_batchnorm_bwd_elemt_f64(d, <double *>dy, dys, <double *>x, xs,
                                           <double *>w, <double *>m, <double *>s, sdy,
                                           sdyx, count, <double *>dx, dxs, nt)
    return bnc_batchnorm_bwd_elemt_f16(d, <bnc_f16_t *>dy, dys, <bnc_f16_t *>x, xs,
                                       <float *>w, <float *>m, <float *>s, sdy, sdyx,
                                       count, <bnc_f16_t *>dx, dxs, nt)


# ---------------------------------------------------------------- kernels ---
#
# Each kernel runs once per piece of the view (once, for any array that
# folds): `off` arrays hold the byte offset of every piece.

cdef object _pooled(object means, object vars_):
    """Exact merge of equal-count pieces: (K, C) float64 -> (C,) mean, var."""
    mean = means.mean(axis=0)
    return mean, (vars_ + (means - mean) ** 2).mean(axis=0)


def batch_norm_stats(x, *, channel_axis=1, n_threads=None):
    """Per-channel mean and biased variance of x, and the count per channel.

    Parameters
    ----------
    x : array_like, float16/float32/float64, shape (N, C, ...) with ndim >= 2
    channel_axis : int, the kept axis (default 1)
    n_threads : int or None

    Returns
    -------
    mean, var : ndarray (C,), float64 for float64 x, else float32
    count : int, the number of values per channel
    """
    x = _as_input(x, "x")
    cdef int axis = _axis(channel_axis, x.ndim)
    cdef int nt = _threads(n_threads)
    cdef _View v = _View(x, axis)
    mean, var = _stats_f64(v, nt)
    sdt = stat_dtype(x.dtype)
    return (mean.astype(sdt, copy=False), var.astype(sdt, copy=False),
            v.layout.d.outer * v.layout.d.inner * v.npieces)


cdef tuple _stats_f64(_View v, int nt):
    """float64 per-channel mean and biased variance of the view, all pieces."""
    cdef bnc_dims_t d = v.layout.d
    cdef Py_ssize_t i, n = v.npieces
    means = np.empty((n, d.channels), np.float64)
    vars_ = np.empty((n, d.channels), np.float64)
    cdef double[:, ::1] pm = means, pv = vars_
    cdef const int64_t[::1] xo = v.xoff
    cdef int isz = v.x.itemsize, st = BNC_OK
    x = v.x
    cdef char *x_b = <char *>_ptr(x)
    with nogil:
        for i in range(n):
            st = _stats(isz, d, x_b + xo[i], v.xs, &pm[i, 0], &pv[i, 0], nt)
            if st != BNC_OK:
                break
    _check(st)
    if n == 1:
        return means[0], vars_[0]
    return _pooled(means, vars_)


def batch_norm_forward_raw(x, weight, bias, mean, var, eps, channel_axis, out,
                           n_threads, bint training):
    """Forward kernel behind bnc.batch_norm_forward and bnc.batch_norm.

    training=True: batch statistics (mean/var must be None); returns
    (y, save_mean, save_invstd, save_var). training=False: the given mean/var;
    returns (y, None, None, None). Every argument is validated before anything
    is written.
    """
    x = _as_input(x, "x")
    cdef int axis = _axis(channel_axis, x.ndim)
    cdef double e = check_eps(eps)
    cdef int64_t C = x.shape[axis]
    xdt = x.dtype
    if training and x.size // C < 2:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {x.shape}")
    weight = _param(weight, "weight", C, xdt)
    bias = _param(bias, "bias", C, xdt)
    if not training:
        mean = _param(mean, "mean", C, xdt)
        var = _param(var, "var", C, xdt)
    cdef int nt = _threads(n_threads)
    if out is not None:
        _check_out(out, x, "out")
        _refuse_overlap(out, "out", [(x, "x"), (weight, "weight"), (bias, "bias"),
                                     (mean, "mean"), (var, "var")], x)

    cdef _View v = _View(x, axis)
    cdef bnc_dims_t d = v.layout.d
    cdef bnc_strides_t ys
    y = np.empty_like(x) if out is None else out
    target, yoff = v.target(y, &ys)
    sdt = stat_dtype(xdt)
    save_mean = save_invstd = save_var = None
    if training and v.npieces > 1:
        # statistics piece by piece, merged; then the normalizing pass
        m64, v64 = _stats_f64(v, nt)
        mean, var = m64.astype(sdt), v64.astype(sdt)
        save_mean, save_var = mean, var
        save_invstd = (1.0 / np.sqrt(v64 + e)).astype(sdt)
        training = False
    cdef int isz = x.itemsize, st = BNC_OK
    cdef Py_ssize_t i, n = v.npieces
    cdef const int64_t[::1] xo = v.xoff, yo = yoff
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pb = _ptr_or_null(bias)
    cdef void *pm
    cdef void *pv
    cdef void *pi
    cdef char *xa_b = <char *>_ptr(v.x)
    cdef char *target_b = <char *>_ptr(target)
    if training:
        save_mean, save_invstd, save_var = (np.empty(C, sdt), np.empty(C, sdt),
                                            np.empty(C, sdt))
        pm, pi, pv = _ptr(save_mean), _ptr(save_invstd), _ptr(save_var)
        with nogil:
            st = _fwd_train(isz, d, xa_b + xo[0], v.xs, pw, pb, e, target_b + yo[0], ys,
                            pm, pi, pv, nt)
    else:
        pm, pv = _ptr(mean), _ptr(var)
        with nogil:
            for i in range(n):
                st = _fwd_eval(isz, d, xa_b + xo[i], v.xs, pw, pb, pm, pv, e,
                               target_b + yo[i], ys, nt)
                if st != BNC_OK:
                    break
    _check(st)
    if target is not y:
        np.copyto(y, target)
    return y, save_mean, save_invstd, save_var


def batch_norm_backward_raw(grad_out, x, weight, mean, invstd, channel_axis,
                            bint use_batch_stats, out, n_threads):
    """Backward kernel behind bnc.batch_norm_backward: (dx, dweight, dbias)."""
    x = _as_input(x, "x")
    dy = _as_input(grad_out, "grad_out")
    if dy.dtype != x.dtype:
        raise TypeError(f"grad_out must have the dtype of x ({x.dtype}), got {dy.dtype}")
    if dy.shape != x.shape:
        raise ValueError(f"grad_out must have the shape of x {x.shape}, got {dy.shape}")
    cdef int axis = _axis(channel_axis, x.ndim)
    cdef int64_t C = x.shape[axis]
    xdt = x.dtype
    weight = _param(weight, "weight", C, xdt)
    mean = _param(mean, "saved.mean", C, xdt)
    invstd = _param(invstd, "saved.invstd", C, xdt)
    if mean is None or invstd is None:
        raise ValueError("saved must hold the forward's mean and invstd arrays")
    cdef int nt = _threads(n_threads)
    if out is not None:
        _check_out(out, x, "out")
        _refuse_overlap(out, "out", [(x, "x"), (dy, "grad_out"), (weight, "weight"),
                                     (mean, "saved.mean"), (invstd, "saved.invstd")],
                        None)

    cdef _View v = _View(x, axis)
    cdef bnc_strides_t dys, dxs
    dy, dyoff = v.like_x(dy, &dys)
    dx = np.empty_like(x) if out is None else out
    target, dxoff = v.target(dx, &dxs)
    sdt = stat_dtype(xdt)
    if v.npieces > 1 and use_batch_stats:
        sdy, sdyx = _bwd_sums(v, dy, dyoff, dys, mean, invstd, nt)
        _bwd_elemt_pieces(v, dy, dyoff, dys, weight, mean, invstd, sdy, sdyx,
                          v.layout.d.outer * v.layout.d.inner * v.npieces, target, dxoff,
                          dxs, nt)
        dweight, dbias = sdyx.astype(sdt), sdy.astype(sdt)
    else:
        dweight, dbias = _bwd_pieces(v, dy, dyoff, dys, weight, mean, invstd, target,
                                     dxoff, dxs, use_batch_stats, nt)
    if target is not dx:
        np.copyto(dx, target)
    return dx, dweight, dbias


cdef tuple _bwd_pieces(_View v, object dy, object dyoff, bnc_strides_t dys, object weight,
                       object mean, object invstd, object dx, object dxoff,
                       bnc_strides_t dxs, bint train, int nt):
    """The fused backward kernel on every piece (train only with one piece)."""
    cdef Py_ssize_t i, n = v.npieces
    sdt = stat_dtype(v.x.dtype)
    dws = np.empty((n, v.layout.d.channels), sdt)
    dbs = np.empty((n, v.layout.d.channels), sdt)
    cdef const int64_t[::1] xo = v.xoff, go = dyoff, do = dxoff
    cdef int isz = v.x.itemsize, st = BNC_OK
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pm = _ptr(mean)
    cdef void *ps = _ptr(invstd)
    cdef char *pdw = <char *>_ptr(dws)
    cdef char *pdb = <char *>_ptr(dbs)
    cdef Py_ssize_t row = dws.strides[0]
    xa = v.x
    cdef char *dy_b = <char *>_ptr(dy)
    cdef char *xa_b = <char *>_ptr(xa)
    cdef char *dx_b = <char *>_ptr(dx)
    with nogil:
        for i in range(n):
            st = _bwd(isz, train, v.layout.d, dy_b + go[i], dys, xa_b + xo[i], v.xs, pw,
                      pm, ps, dx_b + do[i], dxs, pdw + i * row, pdb + i * row, nt)
            if st != BNC_OK:
                break
    _check(st)
    if n == 1:
        return dws[0], dbs[0]
    return dws.sum(axis=0, dtype=np.float64).astype(sdt), dbs.sum(axis=0, dtype=np.float64).astype(sdt)


cdef tuple _bwd_sums(_View v, object dy, object dyoff, bnc_strides_t dys, object mean,
                     object invstd, int nt):
    """float64 sum(dy) and sum(dy * xhat) per channel, over all pieces."""
    cdef Py_ssize_t i, n = v.npieces
    sdy = np.empty((n, v.layout.d.channels), np.float64)
    sdyx = np.empty((n, v.layout.d.channels), np.float64)
    cdef double[:, ::1] a = sdy, b = sdyx
    cdef const int64_t[::1] xo = v.xoff, go = dyoff
    cdef int isz = v.x.itemsize, st = BNC_OK
    cdef void *pm = _ptr(mean)
    cdef void *ps = _ptr(invstd)
    xa = v.x
    cdef char *dy_b = <char *>_ptr(dy)
    cdef char *xa_b = <char *>_ptr(xa)
    with nogil:
        for i in range(n):
            st = _bwd_reduce(isz, v.layout.d, dy_b + go[i], dys, xa_b + xo[i], v.xs, pm,
                             ps, &a[i, 0], &b[i, 0], nt)
            if st != BNC_OK:
                break
    _check(st)
    return sdy.sum(axis=0), sdyx.sum(axis=0)


cdef int _bwd_elemt_pieces(_View v, object dy, object dyoff, bnc_strides_t dys,
                           object weight, object mean, object invstd, object sdy,
                           object sdyx, int64_t count, object dx, object dxoff,
                           bnc_strides_t dxs, int nt) except -1:
    cdef Py_ssize_t i, n = v.npieces
    cdef const int64_t[::1] xo = v.xoff, go = dyoff, do = dxoff
    cdef int isz = v.x.itemsize, st = BNC_OK
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pm = _ptr(mean)
    cdef void *ps = _ptr(invstd)
    cdef double *a = <double *>_ptr(sdy)
    cdef double *b = <double *>_ptr(sdyx)
    xa = v.x
    cdef char *dy_b = <char *>_ptr(dy)
    cdef char *xa_b = <char *>_ptr(xa)
    cdef char *dx_b = <char *>_ptr(dx)
    with nogil:
        for i in range(n):
            st = _bwd_elemt(isz, v.layout.d, dy_b + go[i], dys, xa_b + xo[i], v.xs, pw,
                            pm, ps, a, b, count, dx_b + do[i], dxs, nt)
            if st != BNC_OK:
                break
    return _check(st)


cdef tuple _grad_inputs(object grad_out, object x, object channel_axis):
    x = _as_input(x, "x")
    dy = _as_input(grad_out, "grad_out")
    if dy.dtype != x.dtype:
        raise TypeError(f"grad_out must have the dtype of x ({x.dtype}), got {dy.dtype}")
    if dy.shape != x.shape:
        raise ValueError(f"grad_out must have the shape of x {x.shape}, got {dy.shape}")
    return x, dy, _axis(channel_axis, x.ndim)


def batch_norm_backward_reduce(grad_out, x, mean, invstd, *, channel_axis=1,
                               n_threads=None):
    """First half of the training backward: per-channel float64 sums.

    Returns (sum_dy, sum_dy_xhat), each float64 of shape (C,), where
    xhat = (x - mean) * invstd. For synchronized batch norm these are summed
    across processes before `batch_norm_backward_elemt`.
    """
    x, dy, axis = _grad_inputs(grad_out, x, channel_axis)
    cdef int64_t C = x.shape[axis]
    mean = _param(mean, "mean", C, x.dtype)
    invstd = _param(invstd, "invstd", C, x.dtype)
    if mean is None or invstd is None:
        raise ValueError("mean and invstd are required")
    cdef int nt = _threads(n_threads)
    cdef _View v = _View(x, axis)
    cdef bnc_strides_t dys
    dy, dyoff = v.like_x(dy, &dys)
    return _bwd_sums(v, dy, dyoff, dys, mean, invstd, nt)


def batch_norm_backward_elemt(grad_out, x, weight, mean, invstd, sum_dy, sum_dy_xhat,
                              count, *, channel_axis=1, out=None, n_threads=None):
    """Second half of the training backward: grad_input from the (global) sums.

    dx = weight*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count).
    """
    x, dy, axis = _grad_inputs(grad_out, x, channel_axis)
    cdef int64_t C = x.shape[axis]
    weight = _param(weight, "weight", C, x.dtype)
    mean = _param(mean, "mean", C, x.dtype)
    invstd = _param(invstd, "invstd", C, x.dtype)
    if mean is None or invstd is None:
        raise ValueError("mean and invstd are required")
    sum_dy = np.ascontiguousarray(sum_dy, dtype=np.float64)
    sum_dy_xhat = np.ascontiguousarray(sum_dy_xhat, dtype=np.float64)
    if sum_dy.shape != (C,) or sum_dy_xhat.shape != (C,):
        raise ValueError(f"sum_dy and sum_dy_xhat must have shape ({C},)")
    cdef int64_t n = _as_int(count, "count")
    if n < 1:
        raise ValueError(f"count must be >= 1, got {n}")
    cdef int nt = _threads(n_threads)
    if out is not None:
        _check_out(out, x, "out")
        _refuse_overlap(out, "out", [(x, "x"), (dy, "grad_out")], None)
    cdef _View v = _View(x, axis)
    cdef bnc_strides_t dys, dxs
    dy, dyoff = v.like_x(dy, &dys)
    dx = np.empty_like(x) if out is None else out
    target, dxoff = v.target(dx, &dxs)
    _bwd_elemt_pieces(v, dy, dyoff, dys, weight, mean, invstd, sum_dy, sum_dy_xhat, n,
                      target, dxoff, dxs, nt)
    if target is not dx:
        np.copyto(dx, target)
    return dx
