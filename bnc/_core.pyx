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
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.object cimport PyObject, PyTypeObject
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.float cimport DBL_EPSILON, DBL_MAX, DBL_MIN, FLT_EPSILON, FLT_MAX, FLT_MIN
from libc.limits cimport INT_MAX
from libc.math cimport INFINITY, fabs, sqrt
from libc.stdint cimport INT64_MAX, int64_t

from bnc._cbnc cimport *

cnp.import_array()

from numpy.lib.array_utils import normalize_axis_index

__all__ = [
    "batch_norm_stats", "batch_norm_forward_raw", "batch_renorm_forward_raw",
    "batch_norm_backward_raw",
    "batch_norm_backward_reduce", "batch_norm_backward_elemt",
    "get_num_threads", "set_num_threads", "openmp_enabled", "c_version",
]

# ---------------------------------------------------------------- threads ---

cdef object _global_threads = None  # set_num_threads() value, or None
cdef int _global_nt = 0  # the same as a C int: 0 if None, -1 if it does not fit


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
    if n > INT_MAX:  # the C core takes an int (and runs at most BNC_MAX_TEAM)
        raise ValueError(f"{name} must be at most {INT_MAX}, got {n}")
    if n < 0:
        return max(1, _usable_cores() + 1 + n)
    return n


cdef int _c_threads(object n) noexcept:
    """A thread count (None or a Python int >= 1) as a C int: 0 for None, -1 if
    it does not fit in an int (the generic path then raises OverflowError)."""
    if n is None:
        return 0
    return n if 0 < n <= INT_MAX else -1


cdef object _env_default = _env_threads()  # BNC_NUM_THREADS, read once at import
cdef int _env_nt = _c_threads(_env_default)


cdef inline int _default_threads() noexcept:
    """get_num_threads() without a Python call; -1 if that does not fit an int."""
    if _global_nt != 0:
        return _global_nt
    if _env_nt != 0:
        return _env_nt
    return bnc_default_threads()  # omp_get_max_threads(): follows OMP/threadpoolctl


cdef extern from *:
    """
    int64_t bnc_set_stream_min_bytes(int64_t bytes); /* csrc/internal.h */
    """
    int64_t bnc_set_stream_min_bytes(int64_t nbytes) nogil


def _set_stream_min_bytes(nbytes):
    """For tests: calls that read and write at least nbytes in all stream
    their output past the caches (nbytes < 0: the default, the last-level
    cache's size). Returns the previous threshold."""
    return bnc_set_stream_min_bytes(nbytes)


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
    global _global_threads, _global_nt
    previous = get_num_threads()
    value = None if n is None else _count_back(_as_int(n, "n"), "n")
    _global_threads, _global_nt = value, _c_threads(value)
    return previous


cdef int _threads(object n_threads) except -1:
    cdef int nt
    if n_threads is None:
        nt = _default_threads()
        return nt if nt > 0 else get_num_threads()
    return _count_back(_as_int(n_threads, "n_threads"), "n_threads")


def openmp_enabled():
    """True if the C core was built with OpenMP."""
    return bool(bnc_openmp_enabled())


def c_version():
    """Version string of the compiled C core."""
    return bnc_version().decode()


# ------------------------------------------------------------- validation ---

cdef object _as_int(object v, str name):
    if type(v) is int:
        return v
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


def check_param(v, name, C, xdtype):
    """A per-channel input as a contiguous (C,) array of the statistics dtype
    of `xdtype` (None stays None); TypeError/ValueError naming `name`."""
    return _param(v, name, C, np.dtype(xdtype))


def check_eps(eps):
    """eps as a float; ValueError unless finite and > 0."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}") from None
    if not (e > 0 and e != float("inf")):
        raise ValueError(f"eps must be finite and > 0, got {eps!r}")
    return e


def axis_index(v, ndim, name):
    """v (an integer of any size, negative counting from the end) as an axis
    index in [0, ndim); TypeError or AxisError (a ValueError) naming `name`."""
    n = _as_int(v, name)
    if not -ndim <= n < ndim:  # before any C conversion: 2**70 is out of range too
        raise np.exceptions.AxisError(n, ndim, name)
    return normalize_axis_index(n, ndim, name)


cdef int _axis(object channel_axis, int ndim) except -1:
    return axis_index(channel_axis, ndim, "channel_axis")


cdef object _c_aligned(object a, object dtype=None):
    """a as a C-contiguous array whose data pointer is aligned for its dtype
    (a copy only when needed): the C kernels load whole elements, and a
    misaligned pointer to them is undefined behaviour in C."""
    return np.require(a, dtype, ("C", "A"))


cdef bint _writable_in_place(object out):
    """Can a kernel taking C-contiguous arrays write `out` directly (else it
    writes a new array, copied into out afterwards)?"""
    return out is not None and out.flags.c_contiguous and out.flags.aligned


def real_vector(v, name, C):
    """v as a C-contiguous float64 array of shape (C,): TypeError naming `name`
    if its values are not real numbers (complex, strings, objects)."""
    a = np.asarray(v)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},), got {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float64)


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
    """ValueError if out shares memory with an input (other than `allowed`
    itself, one array or a tuple of them, as the very same view)."""
    cdef tuple ok = allowed if type(allowed) is tuple else (allowed,)
    for other, oname in inputs:
        if other is None:
            continue
        if allowed is not None and any([other is a for a in ok]) and _same_view(out, other):
            continue
        if np.may_share_memory(out, other) and np.shares_memory(out, other):
            raise ValueError(f"{name} must not overlap {oname}"
                             + (f" (only out={oname} exactly is allowed)"
                                if any([other is a for a in ok]) else ""))


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
        b = _output_like(self.x)
        np.copyto(b, a)
        return b, self.layout.fit(b, s)

    cdef tuple target(self, object out, bnc_strides_t *s):
        """(the array the kernel writes: out if it fits, else a scratch twin, offsets)."""
        off = self.layout.fit(out, s)
        if off is not None:
            return out, off
        return self.like_x(_output_like(self.x), s)


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
                    void *b, double eps, void *r, bnc_strides_t rs, int act, void *y,
                    bnc_strides_t ys, void *sm, void *si, void *sv, int nt) noexcept nogil:
    """The training forward, fused with residual r (NULL: none) and activation
    act (BNC_ACT_NONE: batch norm's own kernel, bit for bit)."""
    if isz == 4:
        return bnc_batchnorm_fwd_train_fused_f32(d, <float *>x, xs, <float *>w, <float *>b,
                                                 eps, <float *>r, rs, act, <float *>y, ys,
                                                 <float *>sm, <float *>si, <float *>sv, nt)
    if isz == 8:
        return bnc_batchnorm_fwd_train_fused_f64(d, <double *>x, xs, <double *>w,
                                                 <double *>b, eps, <double *>r, rs, act,
                                                 <double *>y, ys, <double *>sm, <double *>si,
                                                 <double *>sv, nt)
    return bnc_batchnorm_fwd_train_fused_f16(d, <bnc_f16_t *>x, xs, <float *>w, <float *>b,
                                             eps, <bnc_f16_t *>r, rs, act, <bnc_f16_t *>y,
                                             ys, <float *>sm, <float *>si, <float *>sv, nt)


cdef int _renorm_train(int isz, bnc_dims_t d, void *x, bnc_strides_t xs, void *w,
                       void *b, void *rm, void *rv, double rmax, double dmax, double eps,
                       void *y, bnc_strides_t ys, void *sm, void *si, void *sv, void *sr,
                       void *sd, int nt) noexcept nogil:
    if isz == 4:
        return bnc_batchrenorm_fwd_train_f32(d, <float *>x, xs, <float *>w, <float *>b,
                                             <float *>rm, <float *>rv, rmax, dmax, eps,
                                             <float *>y, ys, <float *>sm, <float *>si,
                                             <float *>sv, <float *>sr, <float *>sd, nt)
    if isz == 8:
        return bnc_batchrenorm_fwd_train_f64(d, <double *>x, xs, <double *>w,
                                             <double *>b, <double *>rm, <double *>rv,
                                             rmax, dmax, eps, <double *>y, ys,
                                             <double *>sm, <double *>si, <double *>sv,
                                             <double *>sr, <double *>sd, nt)
    return bnc_batchrenorm_fwd_train_f16(d, <bnc_f16_t *>x, xs, <float *>w, <float *>b,
                                         <float *>rm, <float *>rv, rmax, dmax, eps,
                                         <bnc_f16_t *>y, ys, <float *>sm, <float *>si,
                                         <float *>sv, <float *>sr, <float *>sd, nt)


cdef int _fwd_eval(int isz, bnc_dims_t d, void *x, bnc_strides_t xs, void *w,
                   void *b, void *m, void *v, double eps, void *r, bnc_strides_t rs, int act,
                   void *y, bnc_strides_t ys, int nt) noexcept nogil:
    """The inference forward, fused as _fwd_train."""
    if isz == 4:
        return bnc_batchnorm_fwd_eval_fused_f32(d, <float *>x, xs, <float *>w, <float *>b,
                                                <float *>m, <float *>v, eps, <float *>r, rs,
                                                act, <float *>y, ys, nt)
    if isz == 8:
        return bnc_batchnorm_fwd_eval_fused_f64(d, <double *>x, xs, <double *>w,
                                                <double *>b, <double *>m, <double *>v, eps,
                                                <double *>r, rs, act, <double *>y, ys, nt)
    return bnc_batchnorm_fwd_eval_fused_f16(d, <bnc_f16_t *>x, xs, <float *>w, <float *>b,
                                            <float *>m, <float *>v, eps, <bnc_f16_t *>r, rs,
                                            act, <bnc_f16_t *>y, ys, nt)


ctypedef int (*_bwd_f32_t)(bnc_dims_t, const float *, bnc_strides_t, const float *,
                           bnc_strides_t, int, const float *, bnc_strides_t, const float *,
                           const float *, const float *, float *, bnc_strides_t, float *,
                           bnc_strides_t, float *, float *, int) noexcept nogil
ctypedef int (*_bwd_f64_t)(bnc_dims_t, const double *, bnc_strides_t, const double *,
                           bnc_strides_t, int, const double *, bnc_strides_t, const double *,
                           const double *, const double *, double *, bnc_strides_t,
                           double *, bnc_strides_t, double *, double *, int) noexcept nogil
ctypedef int (*_bwd_f16_t)(bnc_dims_t, const bnc_f16_t *, bnc_strides_t, const bnc_f16_t *,
                           bnc_strides_t, int, const bnc_f16_t *, bnc_strides_t,
                           const float *, const float *, const float *, bnc_f16_t *,
                           bnc_strides_t, bnc_f16_t *, bnc_strides_t, float *, float *,
                           int) noexcept nogil


cdef int _bwd(int isz, bint train, bnc_dims_t d, void *dy, bnc_strides_t dys, void *y,
              bnc_strides_t ys, int act, void *x, bnc_strides_t xs, void *w, void *m,
              void *s, void *dx, bnc_strides_t dxs, void *dr, bnc_strides_t drs, void *dw,
              void *db, int nt) noexcept nogil:
    """Both backwards (train: through the batch statistics), fused with the
    ReLU's mask read from y (act) and the residual's gradient dr (NULL: none);
    with BNC_ACT_NONE and no dr, batch norm's own kernels, bit for bit."""
    cdef _bwd_f32_t f32 = (bnc_batchnorm_bwd_train_fused_f32 if train
                           else bnc_batchnorm_bwd_eval_fused_f32)
    cdef _bwd_f64_t f64 = (bnc_batchnorm_bwd_train_fused_f64 if train
                           else bnc_batchnorm_bwd_eval_fused_f64)
    cdef _bwd_f16_t f16 = (bnc_batchnorm_bwd_train_fused_f16 if train
                           else bnc_batchnorm_bwd_eval_fused_f16)
    if isz == 4:
        return f32(d, <float *>dy, dys, <float *>y, ys, act, <float *>x, xs, <float *>w,
                   <float *>m, <float *>s, <float *>dx, dxs, <float *>dr, drs, <float *>dw,
                   <float *>db, nt)
    if isz == 8:
        return f64(d, <double *>dy, dys, <double *>y, ys, act, <double *>x, xs, <double *>w,
                   <double *>m, <double *>s, <double *>dx, dxs, <double *>dr, drs,
                   <double *>dw, <double *>db, nt)
    return f16(d, <bnc_f16_t *>dy, dys, <bnc_f16_t *>y, ys, act, <bnc_f16_t *>x, xs,
               <float *>w, <float *>m, <float *>s, <bnc_f16_t *>dx, dxs, <bnc_f16_t *>dr, drs,
               <float *>dw, <float *>db, nt)


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
    cdef _Fast k
    if _fast_view(&k, x, channel_axis):
        k.nt = _fast_threads(n_threads)
        if k.nt > 0:
            return _stats_fast(&k, x)
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
                           n_threads, bint training, activation=None, residual=None):
    """Forward kernel behind bnc.batch_norm_forward and bnc.batch_norm.

    training=True: batch statistics (mean/var must be None); returns
    (y, save_mean, save_invstd, save_var). training=False: the given mean/var;
    returns (y, None, None, None). y = act(bn(x) + residual) when activation
    ("relu") or residual is given. Every argument is validated before
    anything is written.
    """
    return _forward_raw(x, weight, bias, mean, var, eps, channel_axis, out, n_threads,
                        training, None, None, 1.0, 0.0, check_activation(activation),
                        residual)[:4]


def check_activation(activation):
    """The C code of activation= (None or "relu"); ValueError otherwise."""
    if activation is None:
        return BNC_ACT_NONE
    if isinstance(activation, str) and activation == "relu":
        return BNC_ACT_RELU
    raise ValueError(f'activation must be None or "relu", got {activation!r}')


cdef object _like_input(object a, object x, str name):
    """An input of x's shape and dtype (residual=, y=): an ndarray must have
    x's dtype (no silent cast), other array_likes are converted to it."""
    if isinstance(a, np.ndarray):
        if a.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {a.dtype}")
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
    else:
        try:
            a = np.asarray(a, dtype=x.dtype)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an array of real numbers like x") from None
    if a.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {x.shape}, got {a.shape}")
    return a


def batch_renorm_forward_raw(x, weight, bias, running_mean, running_var, rmax, dmax, eps,
                             channel_axis, out, n_threads):
    """Training forward of batch renorm behind bnc.batch_renorm_forward:
    (y, save_mean, save_invstd, save_var, r, d). running_mean/running_var are
    only read. Every argument is validated before anything is written."""
    if running_mean is None or running_var is None:
        raise ValueError("batch renorm needs running_mean and running_var (r and d are "
                         "taken against them)")
    return _forward_raw(x, weight, bias, None, None, eps, channel_axis, out, n_threads,
                        True, running_mean, running_var, check_rmax(rmax), check_dmax(dmax))


def check_rmax(rmax):
    """rmax as a float; ValueError unless >= 1 (+inf: r is not clipped)."""
    r = _real(rmax, "rmax")
    if not r >= 1.0:
        raise ValueError(f"rmax must be >= 1 (r is clipped to [1/rmax, rmax]), got {rmax!r}")
    return r


def check_dmax(dmax):
    """dmax as a float; ValueError unless >= 0 (+inf: d is not clipped)."""
    d = _real(dmax, "dmax")
    if not d >= 0.0:
        raise ValueError(f"dmax must be >= 0 (d is clipped to [-dmax, dmax]), got {dmax!r}")
    return d


cdef double _real(object v, str name) except? -1.0:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool")
    if isinstance(v, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}") from None


cdef tuple _forward_raw(x, weight, bias, mean, var, eps, channel_axis, out, n_threads,
                        bint training, rmean, rvar, double rmax, double dmax, int act=0,
                        residual=None):
    """Both forwards: batch norm (rmean None) or, in training, batch renorm
    against rmean/rvar; batch norm fused with act and residual.
    Returns (y, save_mean, save_invstd, save_var, r, d)."""
    x = _as_input(x, "x")
    cdef int axis = _axis(channel_axis, x.ndim)
    cdef double e = check_eps(eps)
    cdef int64_t C = x.shape[axis]
    cdef bint renorm = rmean is not None
    xdt = x.dtype
    if training and x.size // C < 2:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {x.shape}")
    weight = _param(weight, "weight", C, xdt)
    bias = _param(bias, "bias", C, xdt)
    if not training:
        mean = _param(mean, "mean", C, xdt)
        var = _param(var, "var", C, xdt)
    if renorm:
        rmean = _param(rmean, "running_mean", C, xdt)
        rvar = _param(rvar, "running_var", C, xdt)
    if residual is not None:
        residual = _like_input(residual, x, "residual")
    cdef int nt = _threads(n_threads)
    if out is not None:
        _check_out(out, x, "out")
        # out may be x or residual exactly (in place: y is computed elementwise)
        _refuse_overlap(out, "out", [(x, "x"), (residual, "residual"), (weight, "weight"),
                                     (bias, "bias"), (mean, "mean"), (var, "var"),
                                     (rmean, "running_mean"), (rvar, "running_var")],
                        (x, residual))

    cdef _View v = _View(x, axis)
    cdef bnc_dims_t d = v.layout.d
    cdef bnc_strides_t ys
    cdef bnc_strides_t rs = v.xs
    y = _output_like(x) if out is None else out
    target, yoff = v.target(y, &ys)
    roff = yoff
    if residual is not None:
        residual, roff = v.like_x(residual, &rs)
    sdt = stat_dtype(xdt)
    save_mean = save_invstd = save_var = save_r = save_d = None
    if training and v.npieces > 1:
        # statistics piece by piece, merged; then the normalizing pass
        m64, v64 = _stats_f64(v, nt)
        mean, var = m64.astype(sdt), v64.astype(sdt)
        save_mean, save_var = mean, var
        save_invstd = (1.0 / np.sqrt(v64 + e)).astype(sdt)
        if renorm:
            # r and d as the C kernel computes them (float64), folded into
            # the affine parameters of the normalizing pass
            weight, bias, save_r, save_d = _renorm_affine(m64, v64, rmean, rvar, rmax,
                                                          dmax, e, weight, bias, sdt)
        training = False
    cdef int isz = x.itemsize, st = BNC_OK
    cdef Py_ssize_t i, n = v.npieces
    cdef const int64_t[::1] xo = v.xoff, yo = yoff, ro = roff
    cdef char *r_b = <char *>_ptr_or_null(residual)
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pb = _ptr_or_null(bias)
    cdef void *pm
    cdef void *pv
    cdef void *pi
    cdef void *pr
    cdef void *pd
    cdef void *prm
    cdef void *prv
    cdef char *xa_b = <char *>_ptr(v.x)
    cdef char *target_b = <char *>_ptr(target)
    if training:
        save_mean, save_invstd, save_var = (np.empty(C, sdt), np.empty(C, sdt),
                                            np.empty(C, sdt))
        pm, pi, pv = _ptr(save_mean), _ptr(save_invstd), _ptr(save_var)
        if renorm:
            save_r, save_d = np.empty(C, sdt), np.empty(C, sdt)
            pr, pd, prm, prv = _ptr(save_r), _ptr(save_d), _ptr(rmean), _ptr(rvar)
            with nogil:
                st = _renorm_train(isz, d, xa_b + xo[0], v.xs, pw, pb, prm, prv, rmax,
                                   dmax, e, target_b + yo[0], ys, pm, pi, pv, pr, pd, nt)
        else:
            with nogil:
                st = _fwd_train(isz, d, xa_b + xo[0], v.xs, pw, pb, e,
                                r_b + ro[0] if r_b != NULL else NULL, rs, act,
                                target_b + yo[0], ys, pm, pi, pv, nt)
    else:
        pm, pv = _ptr(mean), _ptr(var)
        with nogil:
            for i in range(n):
                st = _fwd_eval(isz, d, xa_b + xo[i], v.xs, pw, pb, pm, pv, e,
                               r_b + ro[i] if r_b != NULL else NULL, rs, act,
                               target_b + yo[i], ys, nt)
                if st != BNC_OK:
                    break
    _check(st)
    if target is not y:
        np.copyto(y, target)
    return y, save_mean, save_invstd, save_var, save_r, save_d


cdef tuple _renorm_affine(object m64, object v64, object rmean, object rvar, double rmax,
                          double dmax, double e, object weight, object bias, object sdt):
    """Batch renorm for x in pieces: r and d (float64, the C kernel's formulas)
    and the affine parameters w*r, w*d + b of a batch norm with the batch
    statistics. d = 0 keeps b as it is, so rmax=1, dmax=0 is batch norm."""
    sigma = np.sqrt(rvar.astype(np.float64) + e)
    with np.errstate(all="ignore"):  # NaN/Inf propagate
        r = np.clip(np.sqrt(v64 + e) / sigma, 1.0 / rmax, rmax)
        dd = np.clip((m64 - rmean.astype(np.float64)) / sigma, -dmax, dmax) + 0.0
        w = np.ones_like(r) if weight is None else weight.astype(np.float64)
        b = np.zeros_like(r) if bias is None else bias.astype(np.float64)
        w2 = (w * r).astype(sdt)
        b2 = np.where(dd == 0, b, w * dd + b).astype(sdt)
    return w2, b2, r.astype(sdt), dd.astype(sdt)


def batch_norm_backward_raw(grad_out, x, weight, mean, invstd, channel_axis,
                            bint use_batch_stats, out, n_threads, activation=None, y=None,
                            bint residual=False):
    """Backward kernel behind bnc.batch_norm_backward: (dx, dweight, dbias,
    dresidual), dresidual None unless residual. With activation="relu", the
    gradient is first masked by the ReLU read from y (the fused forward's
    output); dresidual is that masked gradient."""
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
    cdef int act = check_activation(activation)
    if act == BNC_ACT_RELU:
        if y is None:
            raise ValueError('y (the output of the fused forward) is required with '
                             'activation="relu": the ReLU\'s mask is read from it')
        y = _like_input(y, x, "y")
    elif y is not None:
        raise ValueError('y is only used with activation="relu" (the ReLU\'s mask)')
    cdef int nt = _threads(n_threads)
    if out is not None:
        _check_out(out, x, "out")
        _refuse_overlap(out, "out", [(x, "x"), (dy, "grad_out"), (y, "y"),
                                     (weight, "weight"), (mean, "saved.mean"),
                                     (invstd, "saved.invstd")], None)

    cdef _View v = _View(x, axis)
    cdef bnc_strides_t dys, dxs, yss, drs
    dres = dres_t = None
    droff = yoff = None
    if v.npieces > 1 and (act == BNC_ACT_RELU or residual):
        # x in pieces (rare): the fused kernels have no split (reduce, elemt)
        # form; mask here (threshold_backward's values, exactly) and go unfused
        if act == BNC_ACT_RELU:
            dy = np.where(y <= 0, np.zeros((), xdt), dy)
            act = BNC_ACT_NONE
        if residual:
            dres = _output_like(x)
            np.copyto(dres, dy)
            residual = False
    dy, dyoff = v.like_x(dy, &dys)
    yss = dys
    if act == BNC_ACT_RELU:
        y, yoff = v.like_x(y, &yss)
    dx = _output_like(x) if out is None else out
    target, dxoff = v.target(dx, &dxs)
    drs = dxs
    if residual:
        dres = _output_like(x)
        dres_t, droff = v.target(dres, &drs)
    sdt = stat_dtype(xdt)
    if v.npieces > 1 and use_batch_stats:
        sdy, sdyx = _bwd_sums(v, dy, dyoff, dys, mean, invstd, nt)
        _bwd_elemt_pieces(v, dy, dyoff, dys, weight, mean, invstd, sdy, sdyx,
                          v.layout.d.outer * v.layout.d.inner * v.npieces, target, dxoff,
                          dxs, nt)
        dweight, dbias = sdyx.astype(sdt), sdy.astype(sdt)
    else:
        dweight, dbias = _bwd_pieces(v, dy, dyoff, dys, weight, mean, invstd, target,
                                     dxoff, dxs, use_batch_stats, nt, y, yoff, yss, act, dres_t,
                                     droff, drs)
    if target is not dx:
        np.copyto(dx, target)
    if dres_t is not None and dres_t is not dres:
        np.copyto(dres, dres_t)
    return dx, dweight, dbias, dres


cdef tuple _bwd_pieces(_View v, object dy, object dyoff, bnc_strides_t dys, object weight,
                       object mean, object invstd, object dx, object dxoff,
                       bnc_strides_t dxs, bint train, int nt, object y, object yoff,
                       bnc_strides_t yss, int act, object dr, object droff,
                       bnc_strides_t drs):
    """The fused backward kernel on every piece (train only with one piece);
    with the ReLU's mask from y (act) and the residual's gradient dr (None:
    none; y and dr with one piece only)."""
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
    cdef char *y_b = <char *>_ptr_or_null(y)
    cdef char *dr_b = <char *>_ptr_or_null(dr)
    if y_b != NULL:
        y_b += <int64_t>yoff[0]
    if dr_b != NULL:
        dr_b += <int64_t>droff[0]
    with nogil:
        for i in range(n):
            st = _bwd(isz, train, v.layout.d, dy_b + go[i], dys, y_b, yss, act, xa_b + xo[i],
                      v.xs, pw, pm, ps, dx_b + do[i], dxs, dr_b, drs, pdw + i * row,
                      pdb + i * row, nt)
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
    sum_dy = real_vector(sum_dy, "sum_dy", C)
    sum_dy_xhat = real_vector(sum_dy_xhat, "sum_dy_xhat", C)
    count = _as_int(count, "count")
    if not 1 <= count <= INT64_MAX:
        raise ValueError(f"count must be >= 1 (and fit in 64 bits), got {count}")
    cdef int64_t n = count
    cdef int nt = _threads(n_threads)
    if out is not None:
        _check_out(out, x, "out")
        _refuse_overlap(out, "out", [(x, "x"), (dy, "grad_out")], None)
    cdef _View v = _View(x, axis)
    cdef bnc_strides_t dys, dxs
    dy, dyoff = v.like_x(dy, &dys)
    dx = _output_like(x) if out is None else out
    target, dxoff = v.target(dx, &dxs)
    _bwd_elemt_pieces(v, dy, dyoff, dys, weight, mean, invstd, sum_dy, sum_dy_xhat, n,
                      target, dxoff, dxs, nt)
    if target is not dx:
        np.copyto(dx, target)
    return dx


# ------------------------------------------------------------- fast paths ---
#
# The common call - exact ndarrays, C-contiguous and aligned, of the right
# dtypes, plain Python int/float options - costs a few microseconds in the
# generic path above (Python attribute lookups, the layout analysis, NumPy
# calls to allocate). The functions below take such calls directly: every
# check is a C test on the array structs, and anything they do not recognize
# (a list, another dtype, a strided array, np.int64 options, a bad value) is
# left to the generic path, which then validates, raises or computes exactly
# as before. So a fast path never raises a validation error of its own and
# never writes before everything is known to be valid; given the same
# arrays, it makes the same C call as the generic path, bit for bit.

cdef extern from "Python.h":
    # exact ints only (checked before): never raises
    long long _as_ll "PyLong_AsLongLongAndOverflow"(object, int *)
    PyTypeObject PyTuple_Type

ctypedef object (*_newfunc)(PyTypeObject *, object, PyObject *)

cdef extern from "numpy/arrayobject.h":
    # np.empty_like(a): the layout and dtype of a (descr NULL)
    object _empty_like "PyArray_NewLikeArray"(cnp.ndarray, cnp.NPY_ORDER, void *, int)
    # the data allocator of the arrays created next in this context (returns the old)
    object PyDataMem_SetHandler(object)

cdef extern from "_outcache.h":
    # keeps the memory of large freed outputs for the next ones (see the file)
    object bnc_outcache_capsule()
    int64_t bnc_outcache_set_limit(int64_t)
    int64_t bnc_outcache_set_min(int64_t)
    int64_t bnc_outcache_held()
    size_t _outcache_min "bnc_outcache.min"
    size_t _outcache_limit "bnc_outcache.limit"

cdef object _outcache_handler = bnc_outcache_capsule()


cdef object _output(cnp.ndarray a, int subok, object shape, object dtype):
    """A new output array: np.empty_like(a) (subok as np.empty_like's), or
    with shape given, np.empty(shape, dtype). One of at least the output
    cache's minimum size comes through the cache (see _outcache.h): its
    memory is then reused by the next such output once this one is freed."""
    cdef Py_ssize_t nbytes
    if shape is None:
        nbytes = cnp.PyArray_NBYTES(a)
    else:  # the shape of an existing array: the product fits
        nbytes = np.dtype(dtype).itemsize
        for n in shape:
            nbytes *= n
    old = None
    if _outcache_limit != 0 and <size_t>nbytes >= _outcache_min:
        old = PyDataMem_SetHandler(_outcache_handler)
    try:
        if shape is None:
            return _empty_like(a, cnp.NPY_KEEPORDER, NULL, subok)
        return np.empty(shape, dtype)
    finally:
        if old is not None:
            PyDataMem_SetHandler(old)


cdef inline object _output_like(object a):
    """np.empty_like(a), through the output cache when large."""
    return _output(<cnp.ndarray>a, 1, None, None)


def output_like(a):
    """np.empty_like(a) for an output of bnc (a: an ndarray), through bnc's
    cache of large outputs' memory (see set_output_cache)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"a must be a numpy.ndarray, got {type(a).__name__}")
    return _output_like(a)


def set_output_cache(max_bytes):
    """Sets how many bytes of freed outputs bnc keeps for later outputs
    (0: none, releasing what is kept) and returns the previous setting."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(f"max_bytes must be an int, got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    if max_bytes > INT64_MAX:
        raise ValueError(f"max_bytes must fit in int64, got {max_bytes}")
    return bnc_outcache_set_limit(max_bytes)


def _output_cache_state(min_bytes=None):
    """For tests: (bytes held, minimum output size cached); min_bytes sets
    that minimum (the previous one is returned)."""
    old = bnc_outcache_set_min(-1 if min_bytes is None else min_bytes)
    return bnc_outcache_held(), old


# Python objects of bnc.batchnorm, registered at its import (see register_api)
cdef object _Saved = None        # BatchNormSaved
cdef object _Grads = None        # Grads
cdef object _MOMENTUM = None     # the default value of momentum= (a float 0.1)
cdef object _apply_running_numpy = None  # the running-statistics update in NumPy
cdef unsigned long long _n_fast = 0  # calls taken by a fast path (for the tests)


def register_api(saved, grads, momentum_default, apply_running_numpy):
    """Called once by bnc.batchnorm: the Python objects the fast paths use."""
    global _Saved, _Grads, _MOMENTUM, _apply_running_numpy
    _Saved, _Grads, _MOMENTUM = saved, grads, momentum_default
    _apply_running_numpy = apply_running_numpy


def fast_path_calls():
    """How many calls a fast path has taken in this process (for the tests)."""
    return _n_fast


cdef inline object _tuple3(object cls, object a, object b, object c):
    """cls(a, b, c) for a NamedTuple class cls: tuple.__new__(cls, (a, b, c)),
    without the Python-level __new__ of the class."""
    return (<_newfunc>PyTuple_Type.tp_new)(<PyTypeObject *>cls, ((a, b, c),), NULL)


cdef struct _Fast:
    int isz            # itemsize of x: 2, 4 or 8
    int ptype          # type number of the per-channel arrays: float or double
    bnc_dims_t d       # the canonical view of x
    bnc_strides_t s    # strides of x and of every C-contiguous twin of it
    double eps
    int nt


cdef inline bint _fast_x(object v) noexcept:
    """v is an exact ndarray usable as x as it is: float16/32/64 in native byte
    order, ndim >= 2, not empty, C-contiguous and aligned."""
    if type(v) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>v
    cdef int t = cnp.PyArray_TYPE(a)
    return ((t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64 or t == cnp.NPY_FLOAT16)
            and cnp.PyArray_ISNOTSWAPPED(a) and cnp.PyArray_NDIM(a) >= 2
            and cnp.PyArray_SIZE(a) > 0 and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_ISALIGNED(a))


cdef bint _fast_view(_Fast *k, object x, object channel_axis) noexcept:
    """Fills k from x and a plain int channel_axis in range; False otherwise."""
    if not _fast_x(x) or type(channel_axis) is not int:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(a), i, overflow = 0
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(a)
    cdef long long ax = _as_ll(channel_axis, &overflow)
    if overflow or ax < -nd or ax >= nd:
        return False
    if ax < 0:
        ax += nd
    k.isz = <int>cnp.PyArray_ITEMSIZE(a)
    k.ptype = cnp.NPY_FLOAT64 if k.isz == 8 else cnp.NPY_FLOAT32
    k.d.channels = shape[ax]
    k.d.outer = 1
    for i in range(ax):
        k.d.outer *= shape[i]
    k.d.inner = 1
    for i in range(ax + 1, nd):
        k.d.inner *= shape[i]
    k.s.outer = k.d.channels * k.d.inner
    k.s.channel = k.d.inner
    return True


cdef inline bint _fast_eps(_Fast *k, object eps) noexcept:
    """eps is a float, finite and > 0."""
    if type(eps) is not float:
        return False
    k.eps = PyFloat_AS_DOUBLE(eps)
    return k.eps > 0 and k.eps < INFINITY


cdef inline bint _fast_param(_Fast *k, object v) noexcept:
    """v is None or a per-channel array usable as it is: (C,) of the statistics
    dtype, native, C-contiguous and aligned."""
    if v is None:
        return True
    if type(v) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>v
    return (cnp.PyArray_TYPE(a) == k.ptype and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_DIMS(a)[0] == k.d.channels
            and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a))


cdef inline int _fast_threads(object n) noexcept:
    """The thread count for n_threads=n if n is None or an int >= 1, else -1."""
    cdef int overflow = 0
    cdef long long v
    if n is None:
        return _default_threads()
    if type(n) is not int:
        return -1
    v = _as_ll(n, &overflow)
    return <int>v if not overflow and 0 < v <= INT_MAX else -1


cdef inline bint _apart(object a, object b) noexcept:
    """a and b (None or C-contiguous ndarrays) share no byte of memory."""
    if a is None or b is None:
        return True
    cdef char *p = <char *>cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef char *q = <char *>cnp.PyArray_DATA(<cnp.ndarray>b)
    return (p + cnp.PyArray_NBYTES(<cnp.ndarray>a) <= q
            or q + cnp.PyArray_NBYTES(<cnp.ndarray>b) <= p)


cdef inline bint _same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef int i, nd = cnp.PyArray_NDIM(a)
    if cnp.PyArray_NDIM(b) != nd:
        return False
    for i in range(nd):
        if cnp.PyArray_DIMS(a)[i] != cnp.PyArray_DIMS(b)[i]:
            return False
    return True


cdef int _fast_out(object out, object x) noexcept:
    """0: out is None; 1: out is a writable C-contiguous twin of x apart from
    it; 2: out is x itself (the same view); -1: the generic path decides."""
    if out is None:
        return 0
    if type(out) is not cnp.ndarray:
        return -1
    cdef cnp.ndarray o = <cnp.ndarray>out, a = <cnp.ndarray>x
    cdef int i
    if not (cnp.PyArray_TYPE(o) == cnp.PyArray_TYPE(a) and cnp.PyArray_ISNOTSWAPPED(o)
            and cnp.PyArray_IS_C_CONTIGUOUS(o) and cnp.PyArray_ISALIGNED(o)
            and cnp.PyArray_ISWRITEABLE(o) and _same_shape(o, a)):
        return -1
    if cnp.PyArray_DATA(o) == cnp.PyArray_DATA(a):
        for i in range(cnp.PyArray_NDIM(a)):  # as _same_view
            if cnp.PyArray_STRIDES(o)[i] != cnp.PyArray_STRIDES(a)[i]:
                return -1
        return 2
    return 1 if _apart(out, x) else -1


cdef inline object _stat_empty(_Fast *k):
    cdef cnp.npy_intp n = k.d.channels
    return cnp.PyArray_EMPTY(1, &n, k.ptype, 0)


cdef object _fwd_run(_Fast *k, object x, object weight, object bias, object mean,
                     object var, object out, object sm, object si, object sv):
    """The forward kernel on an accepted call: training (batch statistics,
    written to sm, si, sv when not None) if mean is None, else inference."""
    global _n_fast
    y = _output(<cnp.ndarray>x, 0, None, None) if out is None else out
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pb = _ptr_or_null(bias)
    cdef void *pm = _ptr_or_null(mean)
    cdef void *pv = _ptr_or_null(var)
    cdef void *psm = _ptr_or_null(sm)
    cdef void *psi = _ptr_or_null(si)
    cdef void *psv = _ptr_or_null(sv)
    cdef int st
    if pm == NULL:
        with nogil:
            st = _fwd_train(k.isz, k.d, px, k.s, pw, pb, k.eps, NULL, k.s, BNC_ACT_NONE, py,
                            k.s, psm, psi, psv, k.nt)
    else:
        with nogil:
            st = _fwd_eval(k.isz, k.d, px, k.s, pw, pb, pm, pv, k.eps, NULL, k.s,
                           BNC_ACT_NONE, py, k.s, k.nt)
    _check(st)
    _n_fast += 1
    return y


# ---- running statistics and invstd in the precision NumPy uses -------------
#
# bnc.batchnorm computes these with NumPy ufuncs; the loops below give the same
# bits (same IEEE operations, same roundings, -ffp-contract=off) in one pass.
# NumPy also reports floating-point exceptions (overflow, underflow, invalid)
# as np.errstate says: a first pass checks that no step can raise one (every
# value zero or a finite normal number); when one might, NumPy does the work.

ctypedef fused real:
    float
    double

cdef enum:
    _LOOP_NOGIL = 16384  # channels from which these loops release the GIL


cdef inline bint _tame(real v) noexcept nogil:
    """v is zero or a finite normal number."""
    if real is float:
        return v == 0 or (fabs(v) >= FLT_MIN and fabs(v) <= FLT_MAX)
    else:
        return v == 0 or (fabs(v) >= DBL_MIN and fabs(v) <= DBL_MAX)


cdef inline bint _tame_product(real p, real a, real b) noexcept nogil:
    """p = a * b (tame factors) raised no exception: tame, and not 0 unless a factor is."""
    return _tame(p) and (p != 0 or a == 0 or b == 0)


cdef inline bint _ema_step(real *run, const real *batch, Py_ssize_t c, real a, real w,
                           bint write) noexcept nogil:
    """run[c] = run[c]*a + batch[c]*w with NumPy's roundings; write=False only
    checks that no step raises a floating-point exception."""
    cdef real r = run[c], u = batch[c]
    cdef real p = r * a
    cdef real q = u * w
    cdef real t = p + q
    if write:
        run[c] = t
        return True
    return (_tame(r) and _tame(u) and _tame_product(p, r, a)
            and _tame_product(q, u, w) and _tame(t))


cdef bint _running_pass(real *rm, real *rv, const real *mean, const real *var,
                        Py_ssize_t C, double m, double f, bint write) noexcept nogil:
    """rm = rm*(1-m) + mean*m and rv = rv*(1-m) + var*f, every product rounded to
    `real` and then the sum, as bnc.batchnorm._apply_running_numpy computes it.
    write=False only checks every step (False: one might raise); True writes."""
    cdef real a = <real>(1.0 - m), fm = <real>m, ff = <real>f
    cdef Py_ssize_t c
    if not write and not (_tame(a) and _tame(fm) and _tame(ff) and (fm != 0 or m == 0)
                          and (ff != 0 or f == 0)):
        return False
    for c in range(C):
        if not (_ema_step(rm, mean, c, a, fm, write) and _ema_step(rv, var, c, a, ff, write)):
            return False
    return True


cdef bint _running_update(object rm, object rv, object mean, object var, int64_t count,
                          double m, int64_t corr, object nbt, bint cumulative) noexcept:
    """The running-statistics update on checked C-contiguous arrays of one float
    dtype (nbt None or a 0-d int64 array): num_batches_tracked += 1, then with
    m (1/num_batches_tracked if cumulative) as bnc.batchnorm._apply_running_numpy.
    False, with nothing written, if a step might raise a floating-point exception."""
    cdef Py_ssize_t C = cnp.PyArray_DIMS(<cnp.ndarray>rm)[0]
    cdef int64_t *pn = NULL
    cdef void *prm = _ptr(rm)
    cdef void *prv = _ptr(rv)
    cdef void *pme = _ptr(mean)
    cdef void *pva = _ptr(var)
    cdef bint f32 = cnp.PyArray_TYPE(<cnp.ndarray>rm) == cnp.NPY_FLOAT32, ok
    cdef double f
    if nbt is not None:
        pn = <int64_t *>_ptr(nbt)
        if cumulative:
            m = 1.0 / <double>(pn[0] + 1)
    f = m * <double>count / <double>(count - corr)  # as Python: (m * count) / (count - corr)
    if C < _LOOP_NOGIL:
        return _running_passes(f32, prm, prv, pme, pva, C, m, f, pn)
    with nogil:
        ok = _running_passes(f32, prm, prv, pme, pva, C, m, f, pn)
    return ok


cdef bint _running_passes(bint f32, void *rm, void *rv, void *mean, void *var,
                          Py_ssize_t C, double m, double f, int64_t *nbt) noexcept nogil:
    """The checking pass, then (if it passed) nbt += 1 and the writing pass."""
    if f32:
        if not _running_pass(<float *>rm, <float *>rv, <float *>mean, <float *>var, C, m,
                             f, False):
            return False
    elif not _running_pass(<double *>rm, <double *>rv, <double *>mean, <double *>var, C, m,
                           f, False):
        return False
    if nbt != NULL:
        nbt[0] += 1
    if f32:
        _running_pass(<float *>rm, <float *>rv, <float *>mean, <float *>var, C, m, f, True)
    else:
        _running_pass(<double *>rm, <double *>rv, <double *>mean, <double *>var, C, m, f,
                      True)
    return True


cdef bint _fast_nbt(object nbt, bint write, bint cumulative) noexcept:
    """num_batches_tracked is None (unless cumulative) or a 0-d native int64
    array; if `write`, writable and below INT64_MAX (+= 1 wraps in NumPy); if
    cumulative, >= 0 (1/num_batches_tracked after the increment is in (0, 1])."""
    if nbt is None:
        return not cumulative
    if type(nbt) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>nbt
    if not (cnp.PyArray_TYPE(a) == cnp.NPY_INT64 and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_NDIM(a) == 0 and cnp.PyArray_ISALIGNED(a)
            and (cnp.PyArray_ISWRITEABLE(a) or not write)):
        return False
    cdef int64_t n = (<int64_t *>cnp.PyArray_DATA(a))[0]
    return (n < INT64_MAX or not write) and (n >= 0 or not cumulative)


cdef int _fast_momentum(object momentum, object decay, double *m) noexcept:
    """1: the weight of the new batch in *m; 2: momentum=None (cumulative);
    0: anything else (the generic path validates it)."""
    cdef double v
    if decay is None:
        if momentum is None:
            return 2
        if momentum is not _MOMENTUM and type(momentum) is not float:
            return 0
        v = PyFloat_AS_DOUBLE(momentum)
        m[0] = v
        return 1 if 0.0 <= v <= 1.0 else 0
    if momentum is not _MOMENTUM or type(decay) is not float:
        return 0
    v = PyFloat_AS_DOUBLE(decay)
    m[0] = 1.0 - v
    return 1 if 0.0 <= v <= 1.0 else 0


cdef inline bint _fast_int(object v, long long *out) noexcept:
    """v is a plain int >= 0 that fits in 64 bits."""
    cdef int overflow = 0
    if type(v) is not int:
        return False
    out[0] = _as_ll(v, &overflow)
    return not overflow and out[0] >= 0


def apply_running_fast(running_mean, running_var, mean, var, count, m, corr,
                       num_batches_tracked):
    """bnc.batchnorm._apply_running for C-contiguous arrays of one float dtype:
    True if done, False (nothing written) for NumPy to do it."""
    cdef _Fast k
    cdef long long n, c
    if not (type(running_mean) is cnp.ndarray and type(mean) is cnp.ndarray):
        return False
    k.ptype = cnp.PyArray_TYPE(<cnp.ndarray>running_mean)
    if k.ptype != cnp.NPY_FLOAT32 and k.ptype != cnp.NPY_FLOAT64:
        return False
    if cnp.PyArray_NDIM(<cnp.ndarray>running_mean) != 1:
        return False
    k.d.channels = cnp.PyArray_DIMS(<cnp.ndarray>running_mean)[0]
    if not (_fast_param(&k, running_mean) and _fast_param(&k, running_var)
            and _fast_param(&k, mean) and _fast_param(&k, var)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_mean)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_var)
            and _fast_int(count, &n) and _fast_int(corr, &c) and n > c
            and (m is None or type(m) is float)
            and _fast_nbt(num_batches_tracked, True, m is None)):
        return False
    # nothing read may be written: mean/var/nbt apart from the running arrays
    for out in (running_mean, running_var):
        for other in (mean, var, num_batches_tracked):
            if not _apart(out, other):
                return False
    if not _apart(running_mean, running_var):
        return False
    return _running_update(running_mean, running_var, mean, var, n,
                           0.0 if m is None else PyFloat_AS_DOUBLE(m), c,
                           num_batches_tracked, m is None)


cdef bint _invstd_pass(real *out, const real *var, Py_ssize_t C, double eps) noexcept nogil:
    """out = 1/sqrt(var + eps) in float64 rounded to `real`, as
    bnc.batch_norm_forward computes it with NumPy; False if a step might raise
    a floating-point exception (out then partly written)."""
    cdef double s, r
    cdef Py_ssize_t c
    for c in range(C):
        s = <double>var[c] + eps
        if not (s >= DBL_MIN and s <= DBL_MAX):
            return False
        r = 1.0 / sqrt(s)
        if real is float:
            if not (r >= FLT_MIN and r <= FLT_MAX):
                return False
        out[c] = <real>r
    return True


cdef bint _invstd(bint f64, void *out, void *var, Py_ssize_t C, double eps) noexcept nogil:
    if f64:
        return _invstd_pass(<double *>out, <double *>var, C, eps)
    return _invstd_pass(<float *>out, <float *>var, C, eps)


# ---- the entry points --------------------------------------------------------

def batch_norm_forward_fast(x, weight, bias, mean, var, eps, channel_axis, out,
                            n_threads):
    """bnc.batch_norm_forward for the common case: (y, BatchNormSaved), or None
    for the generic path (which validates and raises)."""
    cdef _Fast k
    cdef int omode
    if _Saved is None or (mean is None) != (var is None):
        return None
    if not (_fast_view(&k, x, channel_axis) and _fast_eps(&k, eps)
            and _fast_param(&k, weight) and _fast_param(&k, bias)
            and _fast_param(&k, mean) and _fast_param(&k, var)):
        return None
    if mean is None and k.d.outer * k.d.inner < 2:
        return None
    k.nt = _fast_threads(n_threads)
    omode = _fast_out(out, x)
    if k.nt < 1 or omode < 0:
        return None
    if omode and not (_apart(out, weight) and _apart(out, bias) and _apart(out, mean)
                      and _apart(out, var)):
        return None
    if mean is None:
        sm, si, sv = _stat_empty(&k), _stat_empty(&k), _stat_empty(&k)
        y = _fwd_run(&k, x, weight, bias, None, None, out, sm, si, sv)
        return (y, _tuple3(_Saved, sm, si, sv))
    si = _stat_empty(&k)
    cdef void *psi = _ptr(si)
    cdef void *pva = _ptr(var)
    cdef bint ok
    if k.d.channels < _LOOP_NOGIL:
        ok = _invstd(k.isz == 8, psi, pva, k.d.channels, k.eps)
    else:
        with nogil:
            ok = _invstd(k.isz == 8, psi, pva, k.d.channels, k.eps)
    if not ok:
        return None
    y = _fwd_run(&k, x, weight, bias, mean, var, out, None, None, None)
    return (y, _tuple3(_Saved, cnp.PyArray_NewCopy(<cnp.ndarray>mean, cnp.NPY_CORDER), si,
                       cnp.PyArray_NewCopy(<cnp.ndarray>var, cnp.NPY_CORDER)))


def batch_norm_fast(x, weight, bias, running_mean, running_var, training, momentum,
                    decay, eps, channel_axis, correction, num_batches_tracked, out,
                    n_threads):
    """bnc.batch_norm for the common case: y, or None for the generic path
    (which validates and raises). Running statistics are updated as there."""
    cdef _Fast k
    cdef double m = 0.0
    cdef int mode, omode
    cdef long long corr = 0
    cdef int64_t count
    cdef bint train, stats = running_mean is not None
    if training is True:
        train = True
    elif training is False:
        train = False
    else:
        return None
    if _Saved is None or stats != (running_var is not None):
        return None
    if not (_fast_view(&k, x, channel_axis) and _fast_eps(&k, eps)):
        return None
    mode = _fast_momentum(momentum, decay, &m)
    count = k.d.outer * k.d.inner
    if mode == 0 or (train and count < 2):
        return None
    if stats:
        if not (_fast_param(&k, running_mean) and _fast_param(&k, running_var)
                and _fast_int(correction, &corr)
                and _fast_nbt(num_batches_tracked, train, mode == 2)):
            return None
        if train and not (cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_mean)
                          and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_var)
                          and _apart(running_mean, running_var)
                          and _apart(running_mean, num_batches_tracked)
                          and _apart(running_var, num_batches_tracked)
                          and count > corr):
            return None
    elif not train or mode == 2:
        return None
    if not (_fast_param(&k, weight) and _fast_param(&k, bias)):
        return None
    k.nt = _fast_threads(n_threads)
    omode = _fast_out(out, x)
    if k.nt < 1 or omode < 0:
        return None
    if omode and not (_apart(out, weight) and _apart(out, bias)):
        return None
    if stats and omode and not (_apart(out, running_mean) and _apart(out, running_var)
                                and _apart(out, num_batches_tracked)):
        return None
    if not train:
        return _fwd_run(&k, x, weight, bias, running_mean, running_var, out, None, None,
                        None)
    if not stats:
        return _fwd_run(&k, x, weight, bias, None, None, out, None, None, None)
    mean, var = _stat_empty(&k), _stat_empty(&k)
    y = _fwd_run(&k, x, weight, bias, None, None, out, mean, None, var)
    if not _running_update(running_mean, running_var, mean, var, count, m, corr,
                           num_batches_tracked, mode == 2):
        _apply_running_numpy(running_mean, running_var, mean, var, count,
                             None if mode == 2 else m, corr, num_batches_tracked)
    return y


def batch_norm_backward_fast(grad_out, x, weight, saved, channel_axis, use_batch_stats,
                             out, n_threads):
    """bnc.batch_norm_backward for the common case: Grads, or None for the
    generic path (which validates and raises)."""
    global _n_fast
    cdef _Fast k
    cdef bint train
    if use_batch_stats is True:
        train = True
    elif use_batch_stats is False:
        train = False
    else:
        return None
    if _Grads is None or not (type(saved) is _Saved or type(saved) is tuple):
        return None
    if PyTuple_GET_SIZE(saved) < 2:
        return None
    mean, invstd = (<tuple>saved)[0], (<tuple>saved)[1]
    if not (_fast_view(&k, x, channel_axis) and _fast_x(grad_out)):
        return None
    if not (cnp.PyArray_TYPE(<cnp.ndarray>grad_out) == cnp.PyArray_TYPE(<cnp.ndarray>x)
            and _same_shape(<cnp.ndarray>grad_out, <cnp.ndarray>x)):
        return None
    if not (mean is not None and invstd is not None and _fast_param(&k, weight)
            and _fast_param(&k, mean) and _fast_param(&k, invstd)):
        return None
    k.nt = _fast_threads(n_threads)
    if k.nt < 1 or _fast_out(out, x) not in (0, 1):
        return None
    if out is not None and not (_apart(out, grad_out) and _apart(out, weight)
                                and _apart(out, mean) and _apart(out, invstd)):
        return None
    dx = _output(<cnp.ndarray>x, 0, None, None) if out is None else out
    dw, db = _stat_empty(&k), _stat_empty(&k)
    cdef void *pdy = _ptr(grad_out)
    cdef void *px = _ptr(x)
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pm = _ptr(mean)
    cdef void *ps = _ptr(invstd)
    cdef void *pdx = _ptr(dx)
    cdef void *pdw = _ptr(dw)
    cdef void *pdb = _ptr(db)
    cdef int st
    with nogil:
        st = _bwd(k.isz, train, k.d, pdy, k.s, NULL, k.s, BNC_ACT_NONE, px, k.s, pw, pm, ps,
                  pdx, k.s, NULL, k.s, pdw, pdb, k.nt)
    _check(st)
    _n_fast += 1
    return _tuple3(_Grads, dx, dw, db)


cdef bint _narrow(float *out, const double *a, Py_ssize_t n) noexcept nogil:
    """out = a rounded to float, as a.astype(np.float32); False if a value
    might raise a floating-point exception in that cast (out partly written)."""
    cdef Py_ssize_t i
    for i in range(n):
        if not (a[i] == 0 or (fabs(a[i]) >= FLT_MIN and fabs(a[i]) <= FLT_MAX)):
            return False
        out[i] = <float>a[i]
    return True


cdef tuple _stats_fast(_Fast *k, object x):
    """batch_norm_stats on an accepted call."""
    global _n_fast
    cdef cnp.npy_intp n = k.d.channels
    mean = cnp.PyArray_EMPTY(1, &n, cnp.NPY_FLOAT64, 0)
    var = cnp.PyArray_EMPTY(1, &n, cnp.NPY_FLOAT64, 0)
    cdef void *px = _ptr(x)
    cdef double *pm = <double *>_ptr(mean)
    cdef double *pv = <double *>_ptr(var)
    cdef int st
    with nogil:
        st = _stats(k.isz, k.d, px, k.s, pm, pv, k.nt)
    _check(st)
    _n_fast += 1
    count = k.d.outer * k.d.inner
    if k.isz == 8:
        return mean, var, count
    m32, v32 = _stat_empty(k), _stat_empty(k)
    cdef float *pm32 = <float *>_ptr(m32)
    cdef float *pv32 = <float *>_ptr(v32)
    cdef bint ok
    if n < _LOOP_NOGIL:
        ok = _narrow(pm32, pm, n) and _narrow(pv32, pv, n)
    else:
        with nogil:
            ok = _narrow(pm32, pm, n) and _narrow(pv32, pv, n)
    if not ok:
        m32, v32 = mean.astype(np.float32), var.astype(np.float32)
    return m32, v32, count

include "_layernorm.pxi"
include "_groupnorm.pxi"
