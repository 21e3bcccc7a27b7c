# bnc_demo.pyx - another project's Cython extension calling bnc's C kernels
# directly (nogil), declared by the shipped bnc/cbnc.pxd. Built by setup.py
# beside it; see docs/guide/embedding.md.
# cython: boundscheck=False, wraparound=False
from bnc.cbnc cimport (BNC_OK, bnc_batchnorm_fwd_train_f64, bnc_dims_t, bnc_strerror,
                       bnc_strides_t)

import numpy as np


def standardize(double[:, :, ::1] x, double eps=1e-5, int n_threads=1):
    """Batch norm without affine of a C-contiguous float64 (outer, C, inner)
    array: returns (y, mean, invstd), statistics per channel."""
    cdef bnc_dims_t d
    d.outer, d.channels, d.inner = x.shape[0], x.shape[1], x.shape[2]
    cdef bnc_strides_t s
    s.outer, s.channel = d.channels * d.inner, d.inner
    y = np.empty((d.outer, d.channels, d.inner))
    mean = np.empty(d.channels)
    invstd = np.empty(d.channels)
    cdef double[:, :, ::1] yv = y
    cdef double[::1] mv = mean, iv = invstd
    cdef int status
    with nogil:
        status = bnc_batchnorm_fwd_train_f64(d, &x[0, 0, 0], s, NULL, NULL, eps,
                                             &yv[0, 0, 0], s, &mv[0], &iv[0], NULL,
                                             n_threads)
    if status != BNC_OK:
        raise ValueError(bnc_strerror(status).decode())
    return y, mean, invstd
