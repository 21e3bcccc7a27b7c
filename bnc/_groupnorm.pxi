# _groupnorm.pxi - group norm and instance norm bindings, included at the end
# of _core.pyx after _layernorm.pxi (it uses that file's _ln_param / _ln_out
# and _core's validation helpers and thread resolution). Instance norm is
# group norm with G = C: the same code below, other C entry points (which
# also save the variance and have a backward for constant statistics).
#
# The C kernels take x C-contiguous as (N, C, HW) (channel_axis=1) or
# (N, HW, C) (channel_axis=-1): channels-last data is used as it is, never
# transposed. Non-C-contiguous x (or grad_out) is copied to a C-contiguous
# array first; an `out=` that is not C-contiguous receives a copy.

cdef extern from "bnc/bnc.h" nogil:
    int bnc_groupnorm_fwd_f32(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last, const float *x, const float *weight, const float *bias, double eps, float *y, float *save_mean, float *save_invstd, int n_threads)
    int bnc_groupnorm_bwd_f32(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last, const float *dy, const float *x, const float *weight, const float *mean, const float *invstd, float *dx, float *dweight, float *dbias, int n_threads)
    int bnc_groupnorm_fwd_f64(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last, const double *x, const double *weight, const double *bias, double eps, double *y, double *save_mean, double *save_invstd, int n_threads)
    int bnc_groupnorm_fwd_f16(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last, const bnc_f16_t *x, const float *weight, const float *bias, double eps, bnc_f16_t *y, float *save_mean, float *save_invstd, int n_threads)
    int bnc_groupnorm_bwd_f16(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last, const bnc_f16_t *dy, const bnc_f16_t *x, const float *weight, const float *mean, const float *invstd, bnc_f16_t *dx, float *dweight, float *dbias, int n_threads)
    int bnc_groupnorm_bwd_f64(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last, const double *dy, const double *x, const double *weight, const double *mean, const double *invstd, double *dx, double *dweight, double *dbias, int n_threads)
    int bnc_instancenorm_fwd_f32(int64_t N, int64_t C, int64_t HW, int channels_last, const float *x, const float *weight, const float *bias, double eps, float *y, float *save_mean, float *save_invstd, float *save_var, int n_threads)
    int bnc_instancenorm_fwd_f64(int64_t N, int64_t C, int64_t HW, int channels_last, const double *x, const double *weight, const double *bias, double eps, double *y, double *save_mean, double *save_invstd, double *save_var, int n_threads)
    int bnc_instancenorm_fwd_f16(int64_t N, int64_t C, int64_t HW, int channels_last, const bnc_f16_t *x, const float *weight, const float *bias, double eps, bnc_f16_t *y, float *save_mean, float *save_invstd, float *save_var, int n_threads)
    int bnc_instancenorm_bwd_f32(int64_t N, int64_t C, int64_t HW, int channels_last, const float *dy, const float *x, const float *weight, const float *mean, const float *invstd, int input_stats, float *dx, float *dweight, float *dbias, int n_threads)
    int bnc_instancenorm_bwd_f64(int64_t N, int64_t C, int64_t HW, int channels_last, const double *dy, const double *x, const double *weight, const double *mean, const double *invstd, int input_stats, double *dx, double *dweight, double *dbias, int n_threads)
    int bnc_instancenorm_bwd_f16(int64_t N, int64_t C, int64_t HW, int channels_last, const bnc_f16_t *dy, const bnc_f16_t *x, const float *weight, const float *mean, const float *invstd, int input_stats, bnc_f16_t *dx, float *dweight, float *dbias, int n_threads)


cdef int _gn_fwd_call(int isz, bint inst, int64_t n, int64_t c, int64_t hw, int64_t g, int icl,
                      void *px, void *pw, void *pb, double e, void *py, void *pm, void *pi,
                      void *pv, int nt) noexcept:
    """The group norm (inst: instance norm, which also saves the variance to
    pv) forward kernel of x's itemsize; its status."""
    cdef int st
    with nogil:
        if inst:
            if isz == 2:
                st = bnc_instancenorm_fwd_f16(n, c, hw, icl, <bnc_f16_t *>px, <float *>pw,
                                              <float *>pb, e, <bnc_f16_t *>py, <float *>pm,
                                              <float *>pi, <float *>pv, nt)
            elif isz == 8:
                st = bnc_instancenorm_fwd_f64(n, c, hw, icl, <double *>px, <double *>pw,
                                              <double *>pb, e, <double *>py, <double *>pm,
                                              <double *>pi, <double *>pv, nt)
            else:
                st = bnc_instancenorm_fwd_f32(n, c, hw, icl, <float *>px, <float *>pw,
                                              <float *>pb, e, <float *>py, <float *>pm,
                                              <float *>pi, <float *>pv, nt)
        elif isz == 2:
            st = bnc_groupnorm_fwd_f16(n, c, hw, g, icl, <bnc_f16_t *>px, <float *>pw,
                                       <float *>pb, e, <bnc_f16_t *>py, <float *>pm,
                                       <float *>pi, nt)
        elif isz == 8:
            st = bnc_groupnorm_fwd_f64(n, c, hw, g, icl, <double *>px, <double *>pw,
                                       <double *>pb, e, <double *>py, <double *>pm,
                                       <double *>pi, nt)
        else:
            st = bnc_groupnorm_fwd_f32(n, c, hw, g, icl, <float *>px, <float *>pw,
                                       <float *>pb, e, <float *>py, <float *>pm,
                                       <float *>pi, nt)
    return st


cdef int _gn_bwd_call(int isz, bint inst, int64_t n, int64_t c, int64_t hw, int64_t g, int icl,
                      void *pdy, void *px, void *pw, void *pm, void *pi, int ist, void *pdx,
                      void *pdw, void *pdb, int nt) noexcept:
    """The group norm (inst: instance norm; ist: its statistics came from x)
    backward kernel of x's itemsize; its status."""
    cdef int st
    with nogil:
        if inst:
            if isz == 2:
                st = bnc_instancenorm_bwd_f16(n, c, hw, icl, <bnc_f16_t *>pdy, <bnc_f16_t *>px,
                                              <float *>pw, <float *>pm, <float *>pi, ist,
                                              <bnc_f16_t *>pdx, <float *>pdw, <float *>pdb, nt)
            elif isz == 8:
                st = bnc_instancenorm_bwd_f64(n, c, hw, icl, <double *>pdy, <double *>px,
                                              <double *>pw, <double *>pm, <double *>pi, ist,
                                              <double *>pdx, <double *>pdw, <double *>pdb, nt)
            else:
                st = bnc_instancenorm_bwd_f32(n, c, hw, icl, <float *>pdy, <float *>px,
                                              <float *>pw, <float *>pm, <float *>pi, ist,
                                              <float *>pdx, <float *>pdw, <float *>pdb, nt)
        elif isz == 2:
            st = bnc_groupnorm_bwd_f16(n, c, hw, g, icl, <bnc_f16_t *>pdy, <bnc_f16_t *>px,
                                       <float *>pw, <float *>pm, <float *>pi,
                                       <bnc_f16_t *>pdx, <float *>pdw, <float *>pdb, nt)
        elif isz == 8:
            st = bnc_groupnorm_bwd_f64(n, c, hw, g, icl, <double *>pdy, <double *>px,
                                       <double *>pw, <double *>pm, <double *>pi,
                                       <double *>pdx, <double *>pdw, <double *>pdb, nt)
        else:
            st = bnc_groupnorm_bwd_f32(n, c, hw, g, icl, <float *>pdy, <float *>px,
                                       <float *>pw, <float *>pm, <float *>pi,
                                       <float *>pdx, <float *>pdw, <float *>pdb, nt)
    return st


cdef tuple _gn_dims(object x, object num_groups, object channel_axis):
    """(N, C, HW, G, channels_last) for x, validating x's rank, channel_axis
    (1 or -1, i.e. first after the batch axis or last) and num_groups
    (dividing C; None: instance norm, G = C)."""
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    cdef int nd = x.ndim
    cdef int ax = axis_index(channel_axis, nd, "channel_axis")
    if ax != 1 and ax != nd - 1:
        raise ValueError(f"channel_axis must be 1 (channels first) or -1 (channels last), "
                         f"got {channel_axis} for a {nd}-d x")
    C = x.shape[ax]
    if num_groups is None:
        num_groups = C
    if isinstance(num_groups, (bool, np.bool_)) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    G = int(num_groups)
    if G < 1:
        raise ValueError(f"num_groups must be >= 1, got {G}")
    if C % G:
        raise ValueError(f"num_groups ({G}) must divide the number of channels ({C})")
    HW = 1
    for i, s in enumerate(x.shape):
        if i != 0 and i != ax:
            HW *= s
    return x.shape[0], C, HW, G, (ax == nd - 1 and nd > 2)


def group_norm_forward_raw(x, num_groups, weight, bias, channel_axis, eps, out, n_threads):
    """Kernel behind bnc.group_norm_forward: returns (y, mean, invstd), the
    statistics of shape (N, num_groups). Everything is validated before
    anything is written."""
    return _gn_forward(x, num_groups, weight, bias, channel_axis, eps, out, n_threads)[:3]


def instance_norm_dims(x, channel_axis):
    """x as a float ndarray and (N, C, HW) of instance norm, validated as
    the kernels do (TypeError/ValueError naming x or channel_axis)."""
    x = _ln_input(x, "x")
    N, C, HW, _, _ = _gn_dims(x, None, channel_axis)
    return x, N, C, HW


def instance_norm_forward_raw(x, weight, bias, channel_axis, eps, out, n_threads):
    """Kernel behind bnc.instance_norm_forward with statistics from x: returns
    (y, mean, invstd, var), the statistics of shape (N, C), var biased."""
    return _gn_forward(x, None, weight, bias, channel_axis, eps, out, n_threads)


# ---- fast paths (see "fast paths" in _core.pyx): exact, C-contiguous, aligned
# ndarrays of the right dtypes and plain int/float options go straight to the
# kernel; anything else returns None and the generic path validates as before.

cdef struct _GnDims:
    int64_t N, C, HW, G
    int cl


cdef bint _gn_fast_dims(_GnDims *d, cnp.ndarray a, object num_groups,
                        object channel_axis) noexcept:
    """Fills d as _gn_dims would for a plain int channel_axis (1 or -1 in
    effect) and a plain int num_groups dividing C (None: C); False otherwise."""
    cdef int nd = cnp.PyArray_NDIM(a), i, overflow = 0
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(a)
    cdef int ax = _ln_fast_axis(a, channel_axis)
    if ax != 1 and ax != nd - 1:  # -1 (not a plain int in range) included
        return False
    d.N, d.C, d.HW = shape[0], shape[ax], 1
    for i in range(1, nd):
        if i != ax:
            d.HW *= shape[i]
    d.cl = ax == nd - 1 and nd > 2
    if num_groups is None:
        d.G = d.C
        return True
    if type(num_groups) is not int:
        return False
    cdef long long g = _as_ll(num_groups, &overflow)
    if overflow or g < 1 or d.C % g:
        return False
    d.G = g
    return True


cdef object _gn_fwd_fast(object x, object num_groups, object weight, object bias,
                         object channel_axis, object eps, object out, object n_threads):
    """_gn_forward's result on a call a fast path takes, else None."""
    global _n_fast
    cdef _GnDims d
    if not (_fast_x(x) and _gn_fast_dims(&d, <cnp.ndarray>x, num_groups, channel_axis)):
        return None
    if type(eps) is not float:
        return None
    cdef double e = PyFloat_AS_DOUBLE(eps)
    if not (e > 0 and e < INFINITY):
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int isz = <int>cnp.PyArray_ITEMSIZE(a)
    cdef int ptype = cnp.NPY_FLOAT64 if isz == 8 else cnp.NPY_FLOAT32
    cdef cnp.npy_intp c = d.C
    cdef cnp.npy_intp sd[2]
    if not (_ln_fast_arr(weight, ptype, &c, 1) and _ln_fast_arr(bias, ptype, &c, 1)):
        return None
    cdef int nt = _fast_threads(n_threads)
    cdef int o = _fast_out(out, x)
    if nt < 1 or o < 0 or (o > 0 and not (_apart(out, weight) and _apart(out, bias))):
        return None
    cdef bint inst = num_groups is None
    sd[0], sd[1] = d.N, d.G
    y = _output(a, 0, None, None) if o == 0 else out
    mean = cnp.PyArray_EMPTY(2, sd, ptype, 0)
    invstd = cnp.PyArray_EMPTY(2, sd, ptype, 0)
    var = cnp.PyArray_EMPTY(2, sd, ptype, 0) if inst else None
    _check(_gn_fwd_call(isz, inst, d.N, d.C, d.HW, d.G, d.cl, _ptr(x), _ptr_or_null(weight),
                        _ptr_or_null(bias), e, _ptr(y), _ptr(mean), _ptr(invstd),
                        _ptr_or_null(var), nt))
    _n_fast += 1
    return y, mean, invstd, var


cdef object _gn_bwd_fast(object grad_out, object x, object num_groups, object weight,
                         object mean, object invstd, bint input_stats, object channel_axis,
                         object out, object n_threads):
    """_gn_backward's result on a call a fast path takes, else None."""
    global _n_fast
    cdef _GnDims d
    if not (_fast_x(x) and _fast_x(grad_out)
            and _gn_fast_dims(&d, <cnp.ndarray>x, num_groups, channel_axis)):
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x, gr = <cnp.ndarray>grad_out
    if cnp.PyArray_TYPE(gr) != cnp.PyArray_TYPE(a) or not _same_shape(gr, a):
        return None
    if mean is None or invstd is None:
        return None
    cdef int isz = <int>cnp.PyArray_ITEMSIZE(a)
    cdef int ptype = cnp.NPY_FLOAT64 if isz == 8 else cnp.NPY_FLOAT32
    cdef cnp.npy_intp c = d.C
    cdef cnp.npy_intp sd[2]
    sd[0], sd[1] = d.N, d.G
    if not (_ln_fast_arr(weight, ptype, &c, 1) and _ln_fast_arr(mean, ptype, sd, 2)
            and _ln_fast_arr(invstd, ptype, sd, 2)):
        return None
    cdef int nt = _fast_threads(n_threads)
    cdef int o = _fast_out(out, x)
    if nt < 1 or o == -1 or o == 2 or (o == 1 and not (
            _apart(out, grad_out) and _apart(out, weight) and _apart(out, mean)
            and _apart(out, invstd))):
        return None
    dx = _output(a, 0, None, None) if o == 0 else out
    dweight = cnp.PyArray_EMPTY(1, &c, ptype, 0)
    dbias = cnp.PyArray_EMPTY(1, &c, ptype, 0)
    _check(_gn_bwd_call(isz, num_groups is None, d.N, d.C, d.HW, d.G, d.cl, _ptr(grad_out),
                        _ptr(x), _ptr_or_null(weight), _ptr(mean), _ptr(invstd), input_stats,
                        _ptr(dx), _ptr(dweight), _ptr(dbias), nt))
    _n_fast += 1
    return dx, dweight, dbias


cdef tuple _gn_forward(x, num_groups, weight, bias, channel_axis, eps, out, n_threads):
    """Group norm (num_groups given) or instance norm (None: G = C, and the
    variance is returned too): (y, mean, invstd, var or None)."""
    r = _gn_fwd_fast(x, num_groups, weight, bias, channel_axis, eps, out, n_threads)
    if r is not None:
        return r
    x = _ln_input(x, "x")
    N, C, HW, G, cl = _gn_dims(x, num_groups, channel_axis)
    cdef bint inst = num_groups is None
    xdt = x.dtype
    cdef double e = check_eps(eps)
    weight = _ln_param(weight, "weight", (C,), xdt)
    bias = _ln_param(bias, "bias", (C,), xdt)
    cdef int nt = _threads(n_threads)
    out = _ln_out(out, x, [(x, "x"), (weight, "weight"), (bias, "bias")])
    xc = _c_aligned(x)
    if _writable_in_place(out) and (out is x or not
                                                        np.may_share_memory(out, xc)):
        y = out
    else:
        y = _output(None, 0, x.shape, xdt)
    sdt = stat_dtype(xdt)
    mean = np.empty((N, G), sdt)
    invstd = np.empty((N, G), sdt)
    var = np.empty((N, G), sdt) if inst else None
    cdef int64_t n = N, c = C, hw = HW, g = G
    cdef int icl = cl
    cdef void *px = _ptr(xc)
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pb = _ptr_or_null(bias)
    cdef void *py = _ptr(y)
    cdef void *pm = _ptr(mean)
    cdef void *pi = _ptr(invstd)
    cdef void *pv = _ptr_or_null(var)
    _check(_gn_fwd_call(xdt.itemsize, inst, n, c, hw, g, icl, px, pw, pb, e, py, pm, pi, pv,
                        nt))
    if out is not None and y is not out:
        np.copyto(out, y)
        y = out
    return y, mean, invstd, var


def group_norm_backward_raw(grad_out, x, num_groups, weight, mean, invstd, channel_axis,
                            out, n_threads):
    """Kernel behind bnc.group_norm_backward: returns (dx, dweight, dbias);
    dweight and dbias (shape (C,)) are always computed."""
    return _gn_backward(grad_out, x, num_groups, weight, mean, invstd, True, channel_axis,
                        out, n_threads)


def instance_norm_backward_raw(grad_out, x, weight, mean, invstd, bint input_stats,
                               channel_axis, out, n_threads):
    """Kernel behind bnc.instance_norm_backward: (dx, dweight, dbias);
    input_stats=False: mean and invstd (N, C) were constants."""
    return _gn_backward(grad_out, x, None, weight, mean, invstd, input_stats, channel_axis,
                        out, n_threads)


cdef tuple _gn_backward(grad_out, x, num_groups, weight, mean, invstd, bint input_stats,
                        channel_axis, out, n_threads):
    """Group norm (num_groups given) or instance norm (None) backward."""
    r = _gn_bwd_fast(grad_out, x, num_groups, weight, mean, invstd, input_stats,
                     channel_axis, out, n_threads)
    if r is not None:
        return r
    x = _ln_input(x, "x")
    dy = _ln_input(grad_out, "grad_out")
    xdt = x.dtype
    if dy.dtype != xdt:
        raise TypeError(f"grad_out must have the dtype of x ({xdt}), got {dy.dtype}")
    if dy.shape != x.shape:
        raise ValueError(f"grad_out must have the shape of x {x.shape}, got {dy.shape}")
    N, C, HW, G, cl = _gn_dims(x, num_groups, channel_axis)
    cdef bint inst = num_groups is None
    weight = _ln_param(weight, "weight", (C,), xdt)
    mean = _ln_param(mean, "saved.mean", (N, G), xdt)
    invstd = _ln_param(invstd, "saved.invstd", (N, G), xdt)
    if mean is None or invstd is None:
        raise ValueError("saved must hold the forward's mean and invstd arrays")
    cdef int nt = _threads(n_threads)
    if out is not None:
        _check_out(out, x, "out")
        _refuse_overlap(out, "out", [(x, "x"), (dy, "grad_out"), (weight, "weight"),
                                     (mean, "saved.mean"), (invstd, "saved.invstd")], None)
    xc = _c_aligned(x)
    dyc = _c_aligned(dy)
    dx = out if _writable_in_place(out) else _output(None, 0, x.shape, xdt)
    sdt = stat_dtype(xdt)
    dweight = np.empty((C,), sdt)
    dbias = np.empty((C,), sdt)
    cdef int64_t n = N, c = C, hw = HW, g = G
    cdef int icl = cl
    cdef int ist = input_stats
    cdef void *px = _ptr(xc)
    cdef void *pdy = _ptr(dyc)
    cdef void *pw = _ptr_or_null(weight)
    cdef void *pm = _ptr(mean)
    cdef void *pi = _ptr(invstd)
    cdef void *pdx = _ptr(dx)
    cdef void *pdw = _ptr(dweight)
    cdef void *pdb = _ptr(dbias)
    _check(_gn_bwd_call(xdt.itemsize, inst, n, c, hw, g, icl, pdy, px, pw, pm, pi, ist, pdx,
                        pdw, pdb, nt))
    if out is not None and dx is not out:
        np.copyto(out, dx)
        dx = out
    return dx, dweight, dbias
