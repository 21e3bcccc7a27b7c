# _layernorm.pxi - layer norm and RMS norm bindings, included at the end of
# _core.pyx (it uses that module's validation helpers and thread resolution).
#
# The C kernels take `rows` C-contiguous rows of D elements: the axes from
# `axis` on are the row. Non-C-contiguous x (or grad_out) is copied to a
# C-contiguous array first; an `out=` that is not C-contiguous receives a copy
# of the result.

cdef extern from "bnc/bnc.h" nogil:
    int bnc_layernorm_fwd_f32(int64_t rows, int64_t D, const float *x, const float *weight, const float *bias, double eps, float *y, float *save_mean, float *save_invstd, int n_threads)
    int bnc_layernorm_bwd_f32(int64_t rows, int64_t D, const float *dy, const float *x, const float *weight, const float *mean, const float *invstd, float *dx, float *dweight, float *dbias, int n_threads)
    int bnc_rmsnorm_fwd_f32(int64_t rows, int64_t D, const float *x, const float *weight, double eps, float *y, float *save_invrms, int n_threads)
    int bnc_rmsnorm_bwd_f32(int64_t rows, int64_t D, const float *dy, const float *x, const float *weight, const float *invrms, float *dx, float *dweight, int n_threads)
    int bnc_layernorm_fwd_f64(int64_t rows, int64_t D, const double *x, const double *weight, const double *bias, double eps, double *y, double *save_mean, double *save_invstd, int n_threads)
    int bnc_layernorm_bwd_f64(int64_t rows, int64_t D, const double *dy, const double *x, const double *weight, const double *mean, const double *invstd, double *dx, double *dweight, double *dbias, int n_threads)
    int bnc_rmsnorm_fwd_f64(int64_t rows, int64_t D, const double *x, const double *weight, double eps, double *y, double *save_invrms, int n_threads)
    int bnc_rmsnorm_bwd_f64(int64_t rows, int64_t D, const double *dy, const double *x, const double *weight, const double *invrms, double *dx, double *dweight, int n_threads)
    int bnc_layernorm_fwd_f16(int64_t rows, int64_t D, const bnc_f16_t *x, const float *weight, const float *bias, double eps, bnc_f16_t *y, float *save_mean, float *save_invstd, int n_threads)
    int bnc_layernorm_bwd_f16(int64_t rows, int64_t D, const bnc_f16_t *dy, const bnc_f16_t *x, const float *weight, const float *mean, const float *invstd, bnc_f16_t *dx, float *dweight, float *dbias, int n_threads)
    int bnc_rmsnorm_fwd_f16(int64_t rows, int64_t D, const bnc_f16_t *x, const float *weight, double eps, bnc_f16_t *y, float *save_invrms, int n_threads)
    int bnc_rmsnorm_bwd_f16(int64_t rows, int64_t D, const bnc_f16_t *dy, const bnc_f16_t *x, const float *weight, const float *invrms, bnc_f16_t *dx, float *dweight, int n_threads)


cdef int _ln_fwd_call(int isz, bint rms, int64_t rows, int64_t D, void *px, void *pw, void *pb,
                      double e, void *py, void *pm, void *pi, int nt) noexcept:
    """The layer norm (rms: RMS norm) forward kernel of x's itemsize; its status."""
    cdef int st
    with nogil:
        if isz == 2:
            if rms:
                st = bnc_rmsnorm_fwd_f16(rows, D, <bnc_f16_t *>px, <float *>pw, e,
                                         <bnc_f16_t *>py, <float *>pi, nt)
            else:
                st = bnc_layernorm_fwd_f16(rows, D, <bnc_f16_t *>px, <float *>pw,
                                           <float *>pb, e, <bnc_f16_t *>py, <float *>pm,
                                           <float *>pi, nt)
        elif isz == 8:
            if rms:
                st = bnc_rmsnorm_fwd_f64(rows, D, <double *>px, <double *>pw, e,
                                         <double *>py, <double *>pi, nt)
            else:
                st = bnc_layernorm_fwd_f64(rows, D, <double *>px, <double *>pw,
                                           <double *>pb, e, <double *>py, <double *>pm,
                                           <double *>pi, nt)
        else:
            if rms:
                st = bnc_rmsnorm_fwd_f32(rows, D, <float *>px, <float *>pw, e,
                                         <float *>py, <float *>pi, nt)
            else:
                st = bnc_layernorm_fwd_f32(rows, D, <float *>px, <float *>pw,
                                           <float *>pb, e, <float *>py, <float *>pm,
                                           <float *>pi, nt)
    return st


cdef int _ln_bwd_call(int isz, bint rms, int64_t rows, int64_t D, void *pdy, void *px,
                      void *pw, void *pm, void *pi, void *pdx, void *pdw, void *pdb,
                      int nt) noexcept:
    """The layer norm (rms: RMS norm) backward kernel of x's itemsize; its status."""
    cdef int st
    with nogil:
        if isz == 2:
            if rms:
                st = bnc_rmsnorm_bwd_f16(rows, D, <bnc_f16_t *>pdy, <bnc_f16_t *>px,
                                         <float *>pw, <float *>pi, <bnc_f16_t *>pdx,
                                         <float *>pdw, nt)
            else:
                st = bnc_layernorm_bwd_f16(rows, D, <bnc_f16_t *>pdy, <bnc_f16_t *>px,
                                           <float *>pw, <float *>pm, <float *>pi,
                                           <bnc_f16_t *>pdx, <float *>pdw, <float *>pdb, nt)
        elif isz == 8:
            if rms:
                st = bnc_rmsnorm_bwd_f64(rows, D, <double *>pdy, <double *>px,
                                         <double *>pw, <double *>pi, <double *>pdx,
                                         <double *>pdw, nt)
            else:
                st = bnc_layernorm_bwd_f64(rows, D, <double *>pdy, <double *>px,
                                           <double *>pw, <double *>pm, <double *>pi,
                                           <double *>pdx, <double *>pdw, <double *>pdb, nt)
        else:
            if rms:
                st = bnc_rmsnorm_bwd_f32(rows, D, <float *>pdy, <float *>px, <float *>pw,
                                         <float *>pi, <float *>pdx, <float *>pdw, nt)
            else:
                st = bnc_layernorm_bwd_f32(rows, D, <float *>pdy, <float *>px,
                                           <float *>pw, <float *>pm, <float *>pi,
                                           <float *>pdx, <float *>pdw, <float *>pdb, nt)
    return st


# ---- fast paths (see "fast paths" in _core.pyx: exact, C-contiguous, aligned
# ndarrays of the right dtypes and plain options go straight to the kernel;
# anything else returns None and the generic path validates as before) ----

cdef inline bint _ln_fast_arr(object v, int ptype, cnp.npy_intp *dims, int nd) noexcept:
    """v is None or an ndarray usable as it is: type ptype, native, C-contiguous,
    aligned, of shape dims[:nd]."""
    if v is None:
        return True
    if type(v) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>v
    cdef int i
    if not (cnp.PyArray_TYPE(a) == ptype and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_NDIM(a) == nd and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_ISALIGNED(a)):
        return False
    for i in range(nd):
        if cnp.PyArray_DIMS(a)[i] != dims[i]:
            return False
    return True


cdef inline int _ln_fast_axis(cnp.ndarray a, object axis) noexcept:
    """axis (a plain int) as an index in [0, ndim), or -1."""
    cdef int nd = cnp.PyArray_NDIM(a), overflow = 0
    if type(axis) is not int:
        return -1
    cdef long long ax = _as_ll(axis, &overflow)
    if overflow or ax < -nd or ax >= nd:
        return -1
    return <int>(ax + nd if ax < 0 else ax)


cdef object _ln_fwd_fast(object x, object weight, object bias, object axis, object eps,
                         object out, object n_threads, bint rms):
    """layer_norm_forward_raw's result on a call a fast path takes, else None."""
    global _n_fast
    if not _fast_x(x):
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int ax = _ln_fast_axis(a, axis), nd = cnp.PyArray_NDIM(a), i
    if ax < 0:
        return None
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(a)
    cdef int isz = <int>cnp.PyArray_ITEMSIZE(a)
    cdef int ptype = cnp.NPY_FLOAT64 if isz == 8 else cnp.NPY_FLOAT32
    cdef double e
    if rms and eps is None:  # the computing dtype's machine epsilon
        e = DBL_EPSILON if isz == 8 else FLT_EPSILON
    elif type(eps) is float:
        e = PyFloat_AS_DOUBLE(eps)
        if not (e > 0 and e < INFINITY):
            return None
    else:
        return None
    if rms and bias is not None:
        return None
    if not (_ln_fast_arr(weight, ptype, shape + ax, nd - ax)
            and _ln_fast_arr(bias, ptype, shape + ax, nd - ax)):
        return None
    cdef int nt = _fast_threads(n_threads)
    cdef int o = _fast_out(out, x)
    if nt < 1 or o < 0 or (o > 0 and not (_apart(out, weight) and _apart(out, bias))):
        return None
    cdef int64_t rows = 1, D = 1
    for i in range(ax):
        rows *= shape[i]
    for i in range(ax, nd):
        D *= shape[i]
    y = _output(a, 0, None, None) if o == 0 else out
    mean = None if rms else cnp.PyArray_EMPTY(ax, shape, ptype, 0)
    invstd = cnp.PyArray_EMPTY(ax, shape, ptype, 0)
    _check(_ln_fwd_call(isz, rms, rows, D, _ptr(x), _ptr_or_null(weight),
                        _ptr_or_null(bias), e, _ptr(y), _ptr_or_null(mean), _ptr(invstd), nt))
    _n_fast += 1
    return y, mean, invstd


cdef object _ln_bwd_fast(object grad_out, object x, object weight, object mean,
                         object invstd, object axis, object out, object n_threads, bint rms):
    """layer_norm_backward_raw's result on a call a fast path takes, else None."""
    global _n_fast
    if not (_fast_x(x) and _fast_x(grad_out)):
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x, g = <cnp.ndarray>grad_out
    if cnp.PyArray_TYPE(g) != cnp.PyArray_TYPE(a) or not _same_shape(g, a):
        return None
    cdef int ax = _ln_fast_axis(a, axis), nd = cnp.PyArray_NDIM(a), i
    if ax < 0 or invstd is None or (mean is None) != rms:
        return None
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(a)
    cdef int isz = <int>cnp.PyArray_ITEMSIZE(a)
    cdef int ptype = cnp.NPY_FLOAT64 if isz == 8 else cnp.NPY_FLOAT32
    if not (_ln_fast_arr(weight, ptype, shape + ax, nd - ax)
            and _ln_fast_arr(mean, ptype, shape, ax) and _ln_fast_arr(invstd, ptype, shape, ax)):
        return None
    cdef int nt = _fast_threads(n_threads)
    cdef int o = _fast_out(out, x)
    if nt < 1 or o == -1 or o == 2 or (o == 1 and not (
            _apart(out, grad_out) and _apart(out, weight) and _apart(out, mean)
            and _apart(out, invstd))):
        return None
    cdef int64_t rows = 1, D = 1
    for i in range(ax):
        rows *= shape[i]
    for i in range(ax, nd):
        D *= shape[i]
    dx = _output(a, 0, None, None) if o == 0 else out
    dweight = cnp.PyArray_EMPTY(nd - ax, shape + ax, ptype, 0)
    dbias = None if rms else cnp.PyArray_EMPTY(nd - ax, shape + ax, ptype, 0)
    _check(_ln_bwd_call(isz, rms, rows, D, _ptr(grad_out), _ptr(x), _ptr_or_null(weight),
                        _ptr_or_null(mean), _ptr(invstd), _ptr(dx), _ptr(dweight),
                        _ptr_or_null(dbias), nt))
    _n_fast += 1
    return dx, dweight, dbias


cdef object _ln_input(object v, str name):
    """v as a float16/32/64 ndarray in native byte order, not empty."""
    a = v if type(v) is np.ndarray else np.asarray(v)
    dt = a.dtype
    if dt.kind != "f" or dt.itemsize not in (2, 4, 8):
        raise TypeError(f"{name} must be a float16, float32 or float64 array, got dtype {dt}")
    if not dt.isnative:
        a = a.astype(dt.newbyteorder("="))
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d array")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    return a


cdef object _ln_param(object v, str name, tuple shape, object xdt):
    """weight/bias (normalized shape) or saved statistics (leading shape) as a
    C-contiguous array of the statistics dtype (float64 for float64 x, else
    float32; float16 arrays are accepted for float16 x); None stays None."""
    if v is None:
        return None
    pdt = _F64 if xdt.itemsize == 8 else _F32
    if isinstance(v, np.ndarray):
        if v.dtype != pdt and v.dtype != xdt:
            raise TypeError(f"{name} must have dtype {pdt} for {xdt} x, got {v.dtype}")
    else:
        v = np.asarray(v)
        if v.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {v.dtype}")
    if v.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {v.shape}")
    return _c_aligned(v, pdt)


def layer_norm_check_axis(x_shape, axis):
    """axis (first normalized axis) as an index in [0, ndim)."""
    return axis_index(axis, len(x_shape), "axis")


cdef object _ln_out(object out, object x, list inputs):
    if out is None:
        return None
    _check_out(out, x, "out")
    _refuse_overlap(out, "out", inputs, x)
    return out


def layer_norm_forward_raw(x, weight, bias, axis, eps, out, n_threads, bint rms):
    """Kernel behind bnc.layer_norm_forward (rms=False) and bnc.rms_norm_forward.

    eps=None (RMS only) means np.finfo(x.dtype).eps. Returns (y, mean, invstd);
    mean is None for RMS norm, invstd is then the inverse RMS. Statistics have
    shape x.shape[:axis]. Everything is validated before anything is written.
    """
    r = _ln_fwd_fast(x, weight, bias, axis, eps, out, n_threads, rms)
    if r is not None:
        return r
    x = _ln_input(x, "x")
    cdef int ax = layer_norm_check_axis(x.shape, axis)
    xdt = x.dtype
    # eps=None: the machine epsilon of the computing dtype (float32 for float16
    # input), as torch.nn.functional.rms_norm does
    sdt = stat_dtype(xdt)
    cdef double e = np.finfo(sdt).eps if (rms and eps is None) else check_eps(eps)
    lead, norm = tuple(x.shape[:ax]), tuple(x.shape[ax:])
    weight = _ln_param(weight, "weight", norm, xdt)
    if rms and bias is not None:
        raise TypeError("rms_norm takes no bias")
    bias = _ln_param(bias, "bias", norm, xdt)
    cdef int nt = _threads(n_threads)
    out = _ln_out(out, x, [(x, "x"), (weight, "weight"), (bias, "bias")])
    cdef int64_t D = 1, rows = 1
    for s in norm:
        D *= s
    for s in lead:
        rows *= s
    xc = _c_aligned(x)
    if _writable_in_place(out) and (out is x or not
                                                        np.may_share_memory(out, xc)):
        y = out
    else:
        y = _output(None, 0, x.shape, xdt)
    mean = None if rms else np.empty(lead, sdt)
    invstd = np.empty(lead, sdt)
    cdef void *px = _ptr(xc)
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pb = _ptr_or_null(bias)
    cdef void *py = _ptr(y)
    cdef void *pm = _ptr_or_null(mean)
    cdef void *pi = _ptr(invstd)
    _check(_ln_fwd_call(xdt.itemsize, rms, rows, D, px, pw, pb, e, py, pm, pi, nt))
    if out is not None and y is not out:
        np.copyto(out, y)
        y = out
    elif out is None and not x.flags.c_contiguous:
        res = _output_like(x)
        if not res.flags.c_contiguous:
            np.copyto(res, y)
            y = res
    return y, mean, invstd


def layer_norm_backward_raw(grad_out, x, weight, mean, invstd, axis, out, n_threads,
                            bint rms):
    """Kernel behind bnc.layer_norm_backward / bnc.rms_norm_backward.

    Returns (dx, dweight, dbias); dbias is None for RMS norm. dweight (and
    dbias) are always computed, as if weight were ones when it is None.
    """
    r = _ln_bwd_fast(grad_out, x, weight, mean, invstd, axis, out, n_threads, rms)
    if r is not None:
        return r
    x = _ln_input(x, "x")
    dy = _ln_input(grad_out, "grad_out")
    xdt = x.dtype
    if dy.dtype != xdt:
        raise TypeError(f"grad_out must have the dtype of x ({xdt}), got {dy.dtype}")
    if dy.shape != x.shape:
        raise ValueError(f"grad_out must have the shape of x {x.shape}, got {dy.shape}")
    cdef int ax = layer_norm_check_axis(x.shape, axis)
    lead, norm = tuple(x.shape[:ax]), tuple(x.shape[ax:])
    weight = _ln_param(weight, "weight", norm, xdt)
    if rms:
        mean = None
        invstd = _ln_param(invstd, "saved.invrms", lead, xdt)
    else:
        mean = _ln_param(mean, "saved.mean", lead, xdt)
        invstd = _ln_param(invstd, "saved.invstd", lead, xdt)
        if mean is None:
            raise ValueError("saved must hold the forward's mean and invstd arrays")
    if invstd is None:
        raise ValueError("saved must hold the forward's statistics")
    cdef int nt = _threads(n_threads)
    if out is not None:
        _check_out(out, x, "out")
        _refuse_overlap(out, "out", [(x, "x"), (dy, "grad_out"), (weight, "weight"),
                                     (mean, "saved.mean"), (invstd, "saved.invstd")], None)
    cdef int64_t D = 1, rows = 1
    for s in norm:
        D *= s
    for s in lead:
        rows *= s
    xc = _c_aligned(x)
    dyc = _c_aligned(dy)
    dx = out if _writable_in_place(out) else _output(None, 0, x.shape, xdt)
    sdt = stat_dtype(xdt)
    dweight = np.empty(norm, sdt)
    dbias = None if rms else np.empty(norm, sdt)
    cdef void *px = _ptr(xc)
    cdef void *pdy = _ptr(dyc)
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pm = _ptr_or_null(mean)
    cdef void *pi = _ptr(invstd)
    cdef void *pdx = _ptr(dx)
    cdef void *pdw = _ptr(dweight)
    cdef void *pdb = _ptr_or_null(dbias)
    _check(_ln_bwd_call(xdt.itemsize, rms, rows, D, pdy, px, pw, pm, pi, pdx, pdw, pdb, nt))
    if out is not None and dx is not out:
        np.copyto(out, dx)
        dx = out
    elif out is None and not x.flags.c_contiguous:
        res = _output_like(x)
        if not res.flags.c_contiguous:
            np.copyto(res, dx)
            dx = res
    return dx, dweight, dbias
