# cbnc.pxd - bnc's C API for other Cython projects (public, stable).
#
#     from bnc.cbnc cimport bnc_dims_t, bnc_strides_t, bnc_batchnorm_fwd_train_f64
#
# Every kernel of csrc/include/bnc/bnc.h, declared `nogil` (they never touch
# Python and return an int status; bnc_strerror explains a non-zero one).
# The declarations are bnc._cbnc's, the ones bnc._core itself is compiled
# against. The symbols come from the static C core shipped in the package:
# build the extension with `Extension(..., **bnc.extension_kwargs())`, which
# adds the header directory, libbnc.a and the OpenMP link flag
# (docs/guide/embedding.md).
from bnc._cbnc cimport *
