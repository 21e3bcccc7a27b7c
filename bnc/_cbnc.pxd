# _cbnc.pxd - the C API of csrc/include/bnc/bnc.h, for Cython.
# Other Cython projects can `cimport bnc._cbnc` to call the nogil kernels.
from libc.stdint cimport int64_t, uint16_t

cdef extern from "bnc/bnc.h" nogil:
    const char *BNC_VERSION_STRING
    int BNC_OK
    int BNC_ERR_NULL
    int BNC_ERR_SHAPE
    int BNC_ERR_EPS
    int BNC_ERR_THREADS
    int BNC_ERR_NOMEM
    int BNC_ERR_COUNT
    int BNC_ERR_RMAX
    int BNC_ERR_DMAX
    int BNC_ERR_ACTIVATION
    int BNC_ACT_NONE
    int BNC_ACT_RELU

    ctypedef struct bnc_dims_t:
        int64_t outer
        int64_t channels
        int64_t inner

    ctypedef struct bnc_strides_t:
        int64_t outer
        int64_t channel

    ctypedef uint16_t bnc_f16_t

    const char *bnc_strerror(int status)
    const char *bnc_version()
    int bnc_openmp_enabled()
    int bnc_default_threads()
    float bnc_f16_to_f32(bnc_f16_t h)
    bnc_f16_t bnc_f32_to_f16(float f)

    int bnc_batchnorm_stats_f32(bnc_dims_t d, const float *x, bnc_strides_t xs, double *mean, double *var, int n_threads)
    int bnc_batchnorm_fwd_train_f32(bnc_dims_t d, const float *x, bnc_strides_t xs, const float *weight, const float *bias, double eps, float *y, bnc_strides_t ys, float *save_mean, float *save_invstd, float *save_var, int n_threads)
    int bnc_batchnorm_fwd_eval_f32(bnc_dims_t d, const float *x, bnc_strides_t xs, const float *weight, const float *bias, const float *mean, const float *var, double eps, float *y, bnc_strides_t ys, int n_threads)
    int bnc_batchnorm_bwd_train_f32(bnc_dims_t d, const float *dy, bnc_strides_t dys, const float *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, float *dx, bnc_strides_t dxs, float *dweight, float *dbias, int n_threads)
    int bnc_batchnorm_bwd_eval_f32(bnc_dims_t d, const float *dy, bnc_strides_t dys, const float *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, float *dx, bnc_strides_t dxs, float *dweight, float *dbias, int n_threads)
    int bnc_batchnorm_bwd_reduce_f32(bnc_dims_t d, const float *dy, bnc_strides_t dys, const float *x, bnc_strides_t xs, const float *mean, const float *invstd, double *sum_dy, double *sum_dy_xhat, int n_threads)
    int bnc_batchnorm_bwd_elemt_f32(bnc_dims_t d, const float *dy, bnc_strides_t dys, const float *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, const double *sum_dy, const double *sum_dy_xhat, int64_t count, float *dx, bnc_strides_t dxs, int n_threads)
    int bnc_batchrenorm_fwd_train_f32(bnc_dims_t d, const float *x, bnc_strides_t xs, const float *weight, const float *bias, const float *running_mean, const float *running_var, double rmax, double dmax, double eps, float *y, bnc_strides_t ys, float *save_mean, float *save_invstd, float *save_var, float *save_r, float *save_d, int n_threads)
    int bnc_batchnorm_fwd_train_fused_f32(bnc_dims_t d, const float *x, bnc_strides_t xs, const float *weight, const float *bias, double eps, const float *residual, bnc_strides_t rs, int activation, float *y, bnc_strides_t ys, float *save_mean, float *save_invstd, float *save_var, int n_threads)
    int bnc_batchnorm_fwd_eval_fused_f32(bnc_dims_t d, const float *x, bnc_strides_t xs, const float *weight, const float *bias, const float *mean, const float *var, double eps, const float *residual, bnc_strides_t rs, int activation, float *y, bnc_strides_t ys, int n_threads)
    int bnc_batchnorm_bwd_train_fused_f32(bnc_dims_t d, const float *dy, bnc_strides_t dys, const float *y, bnc_strides_t ys, int activation, const float *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, float *dx, bnc_strides_t dxs, float *dresidual, bnc_strides_t drs, float *dweight, float *dbias, int n_threads)
    int bnc_batchnorm_bwd_eval_fused_f32(bnc_dims_t d, const float *dy, bnc_strides_t dys, const float *y, bnc_strides_t ys, int activation, const float *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, float *dx, bnc_strides_t dxs, float *dresidual, bnc_strides_t drs, float *dweight, float *dbias, int n_threads)

    int bnc_batchnorm_stats_f64(bnc_dims_t d, const double *x, bnc_strides_t xs, double *mean, double *var, int n_threads)
    int bnc_batchnorm_fwd_train_f64(bnc_dims_t d, const double *x, bnc_strides_t xs, const double *weight, const double *bias, double eps, double *y, bnc_strides_t ys, double *save_mean, double *save_invstd, double *save_var, int n_threads)
    int bnc_batchnorm_fwd_eval_f64(bnc_dims_t d, const double *x, bnc_strides_t xs, const double *weight, const double *bias, const double *mean, const double *var, double eps, double *y, bnc_strides_t ys, int n_threads)
    int bnc_batchnorm_bwd_train_f64(bnc_dims_t d, const double *dy, bnc_strides_t dys, const double *x, bnc_strides_t xs, const double *weight, const double *mean, const double *invstd, double *dx, bnc_strides_t dxs, double *dweight, double *dbias, int n_threads)
    int bnc_batchnorm_bwd_eval_f64(bnc_dims_t d, const double *dy, bnc_strides_t dys, const double *x, bnc_strides_t xs, const double *weight, const double *mean, const double *invstd, double *dx, bnc_strides_t dxs, double *dweight, double *dbias, int n_threads)
    int bnc_batchnorm_bwd_reduce_f64(bnc_dims_t d, const double *dy, bnc_strides_t dys, const double *x, bnc_strides_t xs, const double *mean, const double *invstd, double *sum_dy, double *sum_dy_xhat, int n_threads)
    int bnc_batchnorm_bwd_elemt_f64(bnc_dims_t d, const double *dy, bnc_strides_t dys, const double *x, bnc_strides_t xs, const double *weight, const double *mean, const double *invstd, const double *sum_dy, const double *sum_dy_xhat, int64_t count, double *dx, bnc_strides_t dxs, int n_threads)
    int bnc_batchrenorm_fwd_train_f64(bnc_dims_t d, const double *x, bnc_strides_t xs, const double *weight, const double *bias, const double *running_mean, const double *running_var, double rmax, double dmax, double eps, double *y, bnc_strides_t ys, double *save_mean, double *save_invstd, double *save_var, double *save_r, double *save_d, int n_threads)
    int bnc_batchnorm_fwd_train_fused_f64(bnc_dims_t d, const double *x, bnc_strides_t xs, const double *weight, const double *bias, double eps, const double *residual, bnc_strides_t rs, int activation, double *y, bnc_strides_t ys, double *save_mean, double *save_invstd, double *save_var, int n_threads)
    int bnc_batchnorm_fwd_eval_fused_f64(bnc_dims_t d, const double *x, bnc_strides_t xs, const double *weight, const double *bias, const double *mean, const double *var, double eps, const double *residual, bnc_strides_t rs, int activation, double *y, bnc_strides_t ys, int n_threads)
    int bnc_batchnorm_bwd_train_fused_f64(bnc_dims_t d, const double *dy, bnc_strides_t dys, const double *y, bnc_strides_t ys, int activation, const double *x, bnc_strides_t xs, const double *weight, const double *mean, const double *invstd, double *dx, bnc_strides_t dxs, double *dresidual, bnc_strides_t drs, double *dweight, double *dbias, int n_threads)
    int bnc_batchnorm_bwd_eval_fused_f64(bnc_dims_t d, const double *dy, bnc_strides_t dys, const double *y, bnc_strides_t ys, int activation, const double *x, bnc_strides_t xs, const double *weight, const double *mean, const double *invstd, double *dx, bnc_strides_t dxs, double *dresidual, bnc_strides_t drs, double *dweight, double *dbias, int n_threads)

    int bnc_batchnorm_stats_f16(bnc_dims_t d, const bnc_f16_t *x, bnc_strides_t xs, double *mean, double *var, int n_threads)
    int bnc_batchnorm_fwd_train_f16(bnc_dims_t d, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *bias, double eps, bnc_f16_t *y, bnc_strides_t ys, float *save_mean, float *save_invstd, float *save_var, int n_threads)
    int bnc_batchnorm_fwd_eval_f16(bnc_dims_t d, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *bias, const float *mean, const float *var, double eps, bnc_f16_t *y, bnc_strides_t ys, int n_threads)
    int bnc_batchnorm_bwd_train_f16(bnc_dims_t d, const bnc_f16_t *dy, bnc_strides_t dys, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, bnc_f16_t *dx, bnc_strides_t dxs, float *dweight, float *dbias, int n_threads)
    int bnc_batchnorm_bwd_eval_f16(bnc_dims_t d, const bnc_f16_t *dy, bnc_strides_t dys, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, bnc_f16_t *dx, bnc_strides_t dxs, float *dweight, float *dbias, int n_threads)
    int bnc_batchnorm_bwd_reduce_f16(bnc_dims_t d, const bnc_f16_t *dy, bnc_strides_t dys, const bnc_f16_t *x, bnc_strides_t xs, const float *mean, const float *invstd, double *sum_dy, double *sum_dy_xhat, int n_threads)
    int bnc_batchnorm_bwd_elemt_f16(bnc_dims_t d, const bnc_f16_t *dy, bnc_strides_t dys, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, const double *sum_dy, const double *sum_dy_xhat, int64_t count, bnc_f16_t *dx, bnc_strides_t dxs, int n_threads)
    int bnc_batchrenorm_fwd_train_f16(bnc_dims_t d, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *bias, const float *running_mean, const float *running_var, double rmax, double dmax, double eps, bnc_f16_t *y, bnc_strides_t ys, float *save_mean, float *save_invstd, float *save_var, float *save_r, float *save_d, int n_threads)
    int bnc_batchnorm_fwd_train_fused_f16(bnc_dims_t d, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *bias, double eps, const bnc_f16_t *residual, bnc_strides_t rs, int activation, bnc_f16_t *y, bnc_strides_t ys, float *save_mean, float *save_invstd, float *save_var, int n_threads)
    int bnc_batchnorm_fwd_eval_fused_f16(bnc_dims_t d, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *bias, const float *mean, const float *var, double eps, const bnc_f16_t *residual, bnc_strides_t rs, int activation, bnc_f16_t *y, bnc_strides_t ys, int n_threads)
    int bnc_batchnorm_bwd_train_fused_f16(bnc_dims_t d, const bnc_f16_t *dy, bnc_strides_t dys, const bnc_f16_t *y, bnc_strides_t ys, int activation, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, bnc_f16_t *dx, bnc_strides_t dxs, bnc_f16_t *dresidual, bnc_strides_t drs, float *dweight, float *dbias, int n_threads)
    int bnc_batchnorm_bwd_eval_fused_f16(bnc_dims_t d, const bnc_f16_t *dy, bnc_strides_t dys, const bnc_f16_t *y, bnc_strides_t ys, int activation, const bnc_f16_t *x, bnc_strides_t xs, const float *weight, const float *mean, const float *invstd, bnc_f16_t *dx, bnc_strides_t dxs, bnc_f16_t *dresidual, bnc_strides_t drs, float *dweight, float *dbias, int n_threads)
