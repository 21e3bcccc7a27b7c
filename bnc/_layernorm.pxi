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
        y = np.empty(x.shape, xdt)
    mean = None if rms else np.empty(lead, sdt)
    invstd = np.empty(lead, sdt)
    cdef void *px = _ptr(xc)
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pb = _ptr_or_null(bias)
    cdef void *py = _ptr(y)
    cdef void *pm = _ptr_or_null(mean)
    cdef void *pi = _ptr(invstd)
    cdef int st
    cdef int isz = xdt.itemsize
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
    _check(st)
    if out is not None and y is not out:
        np.copyto(out, y)
        y = out
    elif out is None and not x.flags.c_contiguous:
        res = np.empty_like(x)
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
    dx = out if _writable_in_place(out) else np.empty(x.shape, xdt)
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
    cdef int st
    cdef int isz = xdt.itemsize
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
    _check(st)
    if out is not None and dx is not out:
        np.copyto(out, dx)
        dx = out
    elif out is None and not x.flags.c_contiguous:
        res = np.empty_like(x)
        if not res.flags.c_contiguous:
            np.copyto(res, dx)
            dx = res
    return dx, dweight, dbias
