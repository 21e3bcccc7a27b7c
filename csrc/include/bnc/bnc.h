/*
 * bnc.h - the public C API of bnc, batch normalization kernels for CPUs.
 *
 * Pure C11 (+ optional OpenMP). No Python. Every entry point returns an int
 * status: BNC_OK (0) or a negative BNC_ERR_* code; bnc_strerror() explains it.
 * The library never prints, aborts, or keeps global state; it never allocates
 * caller-visible memory (outputs are caller-allocated, scratch is internal and
 * O(C + threads x block)).
 *
 * Data layout: every array is seen as a 3-D strided view (outer, C, inner):
 * the channel axis in the middle, everything before it folded into `outer`,
 * everything after it into `inner`. Element (o, c, i) of an array lives at
 * base[o * s.outer + c * s.channel + i]: the inner run is contiguous, the
 * outer and channel strides (in elements, may be negative) are free. For a
 * C-contiguous array, BNC_CONTIGUOUS(d) gives the strides. The fast paths are
 * inner > 1 (channel slabs, NCHW) and inner == 1 with unit channel stride
 * (channels interleaved, NHWC and 2-D).
 *
 * dtypes: each op exists for float32 (_f32), float64 (_f64) and float16
 * (_f16, IEEE binary16 stored as bnc_f16_t, computed in float32). Per-channel
 * arrays (weight, bias, mean, var, invstd) are float for _f32/_f16 and double
 * for _f64; reductions accumulate in double. Results are bit-for-bit the same
 * for any n_threads: work is split by shape only.
 *
 * Threads: n_threads >= 1 is an upper bound on OpenMP threads (and at most 256
 * run: a larger request is capped, as is one above the work items); small inputs run
 * serially. Without OpenMP the kernels are serial and n_threads is checked only.
 */
#ifndef BNC_BNC_H
#define BNC_BNC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BNC_VERSION_MAJOR 0
#define BNC_VERSION_MINOR 1
#define BNC_VERSION_PATCH 0
#define BNC_VERSION_STRING "0.1.0"
/* One integer for comparisons: 10000 * major + 100 * minor + patch. */
#define BNC_VERSION_NUMBER \
    (10000 * BNC_VERSION_MAJOR + 100 * BNC_VERSION_MINOR + BNC_VERSION_PATCH)

/* Status codes. */
#define BNC_OK 0
#define BNC_ERR_NULL (-1)      /* a required pointer is NULL */
#define BNC_ERR_SHAPE (-2)     /* a size is negative, or the input is empty */
#define BNC_ERR_EPS (-3)       /* eps is not finite and > 0 */
#define BNC_ERR_THREADS (-4)   /* n_threads < 1 */
#define BNC_ERR_NOMEM (-5)     /* scratch allocation failed */
#define BNC_ERR_COUNT (-6)     /* count < 1 where a mean is taken */
#define BNC_ERR_RMAX (-7)      /* batch renorm: rmax is NaN or < 1 */
#define BNC_ERR_DMAX (-8)      /* batch renorm: dmax is NaN or < 0 */
#define BNC_ERR_ACTIVATION (-9) /* fused batch norm: unknown activation code */
#define BNC_ERR_LAST BNC_ERR_ACTIVATION

/* Activations of the fused batch norm kernels. */
#define BNC_ACT_NONE 0
#define BNC_ACT_RELU 1 /* max(v, 0) as torch.relu: NaN propagates, -0.0 stays */

/* Sizes of the canonical view. */
typedef struct bnc_dims {
    int64_t outer;    /* product of the axes before the channel axis */
    int64_t channels; /* C */
    int64_t inner;    /* product of the axes after it */
} bnc_dims_t;

/* Element strides of one array in that view (the inner stride is 1). */
typedef struct bnc_strides {
    int64_t outer;
    int64_t channel;
} bnc_strides_t;

/* Strides of a C-contiguous (outer, C, inner) array. */
static inline bnc_strides_t bnc_contiguous(bnc_dims_t d)
{
    bnc_strides_t s = {d.channels * d.inner, d.inner};
    return s;
}
#define BNC_CONTIGUOUS(d) bnc_contiguous(d)

/* IEEE 754 binary16, stored as its bit pattern. */
typedef uint16_t bnc_f16_t;

/* Message for a status code (never NULL). */
const char *bnc_strerror(int status);
/* BNC_VERSION_STRING of the compiled library. */
const char *bnc_version(void);
/* 1 if built with OpenMP, else 0. */
int bnc_openmp_enabled(void);
/* OpenMP's current default thread count (omp_get_max_threads), 1 without it. */
int bnc_default_threads(void);

/* float16 <-> float32 conversion (round to nearest even), as used by the kernels. */
float bnc_f16_to_f32(bnc_f16_t h);
bnc_f16_t bnc_f32_to_f16(float f);

/*
 * The per-dtype API. For each (T, P, SFX) in
 *   (float, float, f32), (double, double, f64), (bnc_f16_t, float, f16):
 *
 * bnc_batchnorm_stats_SFX(d, x, xs, mean, var, n_threads)
 *     Per-channel mean and biased variance (double[C] each) of x, one pass
 *     over memory: blocks of a few thousand elements are reduced in cache
 *     (contiguous runs two-pass; rows of interleaved channels in one pass
 *     about the running mean) and merged with Chan's formula in double.
 *     Count is outer * inner.
 *
 * bnc_batchnorm_fwd_train_SFX(d, x, xs, weight, bias, eps, y, ys,
 *                             save_mean, save_invstd, save_var, n_threads)
 *     Training forward: statistics as above, then
 *     y = (x - mean) * (weight * invstd) + bias, invstd = 1/sqrt(var + eps).
 *     weight/bias may be NULL (1 and 0). save_* (P[C]) may each be NULL.
 *     A channel slab is normalized right after its statistics while it is
 *     still in cache when there are enough channels to keep threads busy.
 *
 * bnc_batchnorm_fwd_eval_SFX(d, x, xs, weight, bias, mean, var, eps, y, ys,
 *                            n_threads)
 *     Inference forward with given statistics. y may be x (in place).
 *
 * bnc_batchnorm_bwd_train_SFX(d, dy, dys, x, xs, weight, mean, invstd,
 *                             dx, dxs, dweight, dbias, n_threads)
 *     Backward through batch statistics: one fused reduction pass for
 *     sum(dy) and sum(dy * xhat), then
 *     dx = weight*invstd*(dy - sum(dy)/n - xhat*sum(dy*xhat)/n).
 *     dx, dweight, dbias (P[C]) may each be NULL; weight NULL means 1.
 *
 * bnc_batchnorm_bwd_eval_SFX(...same arguments...)
 *     Backward with the statistics held constant (frozen / inference mode):
 *     dx = dy * weight * invstd, dweight = sum(dy * xhat), dbias = sum(dy),
 *     in a single pass over dy and x.
 *
 * bnc_batchnorm_bwd_reduce_SFX(d, dy, dys, x, xs, mean, invstd,
 *                              sum_dy, sum_dy_xhat, n_threads)
 * bnc_batchnorm_bwd_elemt_SFX(d, dy, dys, x, xs, weight, mean, invstd,
 *                             sum_dy, sum_dy_xhat, count, dx, dxs, n_threads)
 *     The two halves of bwd_train, for synchronized batch norm: the sums are
 *     double[C] and may be all-reduced across processes between the calls;
 *     count is the global number of elements per channel.
 *
 * bnc_batchnorm_fwd_train_fused_SFX(d, x, xs, weight, bias, eps, residual, rs,
 *                                   activation, y, ys, save_mean, save_invstd,
 *                                   save_var, n_threads)
 * bnc_batchnorm_fwd_eval_fused_SFX(d, x, xs, weight, bias, mean, var, eps,
 *                                  residual, rs, activation, y, ys, n_threads)
 *     fwd_train / fwd_eval fused with a residual add and an activation:
 *     y = act(bn(x) + residual), act = BNC_ACT_NONE (identity) or
 *     BNC_ACT_RELU (max(v, 0) as torch.relu: NaN propagates), else
 *     BNC_ERR_ACTIVATION. residual (T, strides rs in the same view as x) may
 *     be NULL (no add). The sum and the activation are computed in P before
 *     the one rounding to T: the apply pass reads x and residual once and
 *     writes y once. y may be x or residual (the same array and strides: in
 *     place). With residual NULL and BNC_ACT_NONE these are fwd_train and
 *     fwd_eval, bit for bit.
 *
 * bnc_batchnorm_bwd_train_fused_SFX(d, dy, dys, y, ys, activation, x, xs,
 *                                   weight, mean, invstd, dx, dxs,
 *                                   dresidual, drs, dweight, dbias, n_threads)
 * bnc_batchnorm_bwd_eval_fused_SFX(...same arguments...)
 *     The backward of the fused forwards (bwd_train / bwd_eval). With
 *     BNC_ACT_RELU, dz = dy where y (the fused forward's output) is > 0 or
 *     NaN, else +0 (torch's threshold_backward): the mask is read from y, no
 *     workspace; y is then required (BNC_ERR_NULL), else it is not read and
 *     may be NULL. dx, dweight and dbias are bwd_train's / bwd_eval's of dz,
 *     bit for bit as those kernels on a dz array; dresidual (T, may be NULL)
 *     receives dz, the residual's gradient. dx is required here. No
 *     temporary the size of x: the reduction pass reads dy, y, x (and writes
 *     dresidual); the elementwise pass reads dz back from dresidual, or
 *     without it dy and y again, and x, and writes dx (bwd_eval: one pass).
 *
 * bnc_batchrenorm_fwd_train_SFX(d, x, xs, weight, bias, running_mean,
 *                               running_var, rmax, dmax, eps, y, ys,
 *                               save_mean, save_invstd, save_var, save_r,
 *                               save_d, n_threads)
 *     Batch renormalization (Ioffe 2017), training forward. With the batch
 *     statistics mean, var (biased), sigma_B = sqrt(var + eps) and
 *     sigma = sqrt(running_var + eps), per channel and in double:
 *       r = clip(sigma_B / sigma, 1/rmax, rmax),
 *       d = clip((mean - running_mean) / sigma, -dmax, dmax),
 *       y = weight * ((x - mean) / sigma_B * r + d) + bias,
 *     computed as one normalizing pass with coefficients weight*r*invstd and
 *     weight*d + bias, in the same sweep as batch norm's fwd_train (a slab is
 *     normalized while in cache). running_mean/running_var (P[C]) are read
 *     only, never updated. rmax >= 1 and dmax >= 0 (+inf: no clipping),
 *     else BNC_ERR_RMAX / BNC_ERR_DMAX; rmax = 1, dmax = 0 gives batch norm's
 *     y bit for bit. save_* (P[C]) may each be NULL; save_r and save_d
 *     receive r and d. The backward is batch norm's bwd_train with weight*r
 *     (r and d are constants); dweight = r*sum(dy*xhat) + d*sum(dy).
 */
#define BNC_DECLARE_BATCHNORM(T, P, SFX)                                      \
    int bnc_batchnorm_stats_##SFX(bnc_dims_t d, const T *x, bnc_strides_t xs,  \
                                  double *mean, double *var, int n_threads);   \
    int bnc_batchnorm_fwd_train_##SFX(                                         \
        bnc_dims_t d, const T *x, bnc_strides_t xs, const P *weight,           \
        const P *bias, double eps, T *y, bnc_strides_t ys, P *save_mean,       \
        P *save_invstd, P *save_var, int n_threads);                           \
    int bnc_batchnorm_fwd_eval_##SFX(                                          \
        bnc_dims_t d, const T *x, bnc_strides_t xs, const P *weight,           \
        const P *bias, const P *mean, const P *var, double eps, T *y,          \
        bnc_strides_t ys, int n_threads);                                      \
    int bnc_batchnorm_bwd_train_##SFX(                                         \
        bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *x,              \
        bnc_strides_t xs, const P *weight, const P *mean, const P *invstd,     \
        T *dx, bnc_strides_t dxs, P *dweight, P *dbias, int n_threads);        \
    int bnc_batchnorm_bwd_eval_##SFX(                                          \
        bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *x,              \
        bnc_strides_t xs, const P *weight, const P *mean, const P *invstd,     \
        T *dx, bnc_strides_t dxs, P *dweight, P *dbias, int n_threads);        \
    int bnc_batchnorm_bwd_reduce_##SFX(                                        \
        bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *x,              \
        bnc_strides_t xs, const P *mean, const P *invstd, double *sum_dy,      \
        double *sum_dy_xhat, int n_threads);                                   \
    int bnc_batchnorm_bwd_elemt_##SFX(                                         \
        bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *x,              \
        bnc_strides_t xs, const P *weight, const P *mean, const P *invstd,     \
        const double *sum_dy, const double *sum_dy_xhat, int64_t count, T *dx, \
        bnc_strides_t dxs, int n_threads);                                    \
    int bnc_batchrenorm_fwd_train_##SFX(                                       \
        bnc_dims_t d, const T *x, bnc_strides_t xs, const P *weight,           \
        const P *bias, const P *running_mean, const P *running_var,            \
        double rmax, double dmax, double eps, T *y, bnc_strides_t ys,          \
        P *save_mean, P *save_invstd, P *save_var, P *save_r, P *save_d,       \
        int n_threads);                                                                               \
    int bnc_batchnorm_fwd_train_fused_##SFX(                                   \
        bnc_dims_t d, const T *x, bnc_strides_t xs, const P *weight,           \
        const P *bias, double eps, const T *residual, bnc_strides_t rs,        \
        int activation, T *y, bnc_strides_t ys, P *save_mean,                  \
        P *save_invstd, P *save_var, int n_threads);                           \
    int bnc_batchnorm_fwd_eval_fused_##SFX(                                    \
        bnc_dims_t d, const T *x, bnc_strides_t xs, const P *weight,           \
        const P *bias, const P *mean, const P *var, double eps,                \
        const T *residual, bnc_strides_t rs, int activation, T *y,             \
        bnc_strides_t ys, int n_threads);                                      \
    int bnc_batchnorm_bwd_train_fused_##SFX(                                   \
        bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *y,              \
        bnc_strides_t ys, int activation, const T *x, bnc_strides_t xs,        \
        const P *weight, const P *mean, const P *invstd, T *dx,                \
        bnc_strides_t dxs, T *dresidual, bnc_strides_t drs, P *dweight,        \
        P *dbias, int n_threads);                                              \
    int bnc_batchnorm_bwd_eval_fused_##SFX(                                    \
        bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *y,              \
        bnc_strides_t ys, int activation, const T *x, bnc_strides_t xs,        \
        const P *weight, const P *mean, const P *invstd, T *dx,                \
        bnc_strides_t dxs, T *dresidual, bnc_strides_t drs, P *dweight,        \
        P *dbias, int n_threads);

BNC_DECLARE_BATCHNORM(float, float, f32)
BNC_DECLARE_BATCHNORM(double, double, f64)
BNC_DECLARE_BATCHNORM(bnc_f16_t, float, f16)

/*
 * Layer norm and RMS norm, over contiguous rows.
 * For each (T, P, SFX) in (float, float, f32), (double, double, f64),
 * (bnc_f16_t, float, f16): x, y, dy, dx are `rows` C-contiguous rows of D
 * elements of T (row r at x + r * D); weight, bias, dweight, dbias are P[D];
 * the saved statistics are P[rows]. float16 computes in float32; per-row
 * sums accumulate in double. weight and bias may be NULL (1 and 0).
 *
 * bnc_layernorm_fwd_SFX(rows, D, x, weight, bias, eps, y, save_mean, save_invstd, n_threads)
 *     y = (x - mean) * invstd * weight + bias per row, mean and biased
 *     variance of the row, invstd = 1/sqrt(var + eps). save_* may be NULL.
 *     y may be x (in place).
 * bnc_layernorm_bwd_SFX(rows, D, dy, x, weight, mean, invstd, dx, dweight, dbias, n_threads)
 *     g = dy * weight, xhat = (x - mean) * invstd:
 *     dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) per row;
 *     dweight = sum over rows of dy * xhat, dbias = sum of dy.
 *     dx, dweight, dbias may each be NULL.
 * bnc_rmsnorm_fwd_SFX(rows, D, x, weight, eps, y, save_invrms, n_threads)
 *     y = x * invrms * weight, invrms = 1/sqrt(mean(x^2) + eps).
 * bnc_rmsnorm_bwd_SFX(rows, D, dy, x, weight, invrms, dx, dweight, n_threads)
 *     xhat = x * invrms: dx = invrms * (g - xhat * mean(g * xhat)),
 *     dweight = sum over rows of dy * xhat.
 * Rows are split over threads. Column sums are reduced in chunks of rows
 * fixed by the shape and added in chunk order: results do not depend on
 * n_threads. Scratch: at most min(rows, 64) x 2 x D doubles.
 */
#define BNC_DECLARE_LAYERNORM(T, P, SFX)                                      \
    int bnc_layernorm_fwd_##SFX(int64_t rows, int64_t D, const T *x,           \
                                const P *weight, const P *bias, double eps,    \
                                T *y, P *save_mean, P *save_invstd,            \
                                int n_threads);                                \
    int bnc_layernorm_bwd_##SFX(int64_t rows, int64_t D, const T *dy,          \
                                const T *x, const P *weight, const P *mean,    \
                                const P *invstd, T *dx, P *dweight, P *dbias,  \
                                int n_threads);                                \
    int bnc_rmsnorm_fwd_##SFX(int64_t rows, int64_t D, const T *x,             \
                              const P *weight, double eps, T *y,               \
                              P *save_invrms, int n_threads);                  \
    int bnc_rmsnorm_bwd_##SFX(int64_t rows, int64_t D, const T *dy,            \
                              const T *x, const P *weight, const P *invrms,    \
                              T *dx, P *dweight, int n_threads);

BNC_DECLARE_LAYERNORM(float, float, f32)
BNC_DECLARE_LAYERNORM(double, double, f64)
BNC_DECLARE_LAYERNORM(bnc_f16_t, float, f16)

/*
 * Group norm (PyTorch's group_norm): N images of C channels and HW positions,
 * channels first (channels_last = 0, NCHW: element (n, c, i) at
 * (n * C + c) * HW + i) or channels last (channels_last = 1, NHWC: at
 * (n * HW + i) * C + c). The channels form G groups of C / G consecutive
 * channels (C % G == 0, else BNC_ERR_SHAPE); mean and biased variance are per
 * (n, g) over C / G * HW elements. For (T, P, SFX) in (float, float, f32),
 * (double, double, f64), (bnc_f16_t, float, f16; computed in float): weight,
 * bias, dweight, dbias are P[C] (weight, bias may be NULL: 1 and 0); save_mean, save_invstd, mean, invstd are P[N * G]
 * (saves may be NULL); dx, dweight, dbias may be NULL (skipped).
 *
 * bnc_groupnorm_fwd_SFX: y = (x - mean) * invstd * weight[c] + bias[c].
 * bnc_groupnorm_bwd_SFX: with g = dy * weight[c], xhat = (x - mean) * invstd,
 *     dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) over each group,
 *     dweight[c] = sum over n, i of dy * xhat, dbias[c] = sum of dy.
 * Work is split by (n, g) (NCHW) or n (NHWC); results do not depend on
 * n_threads. Scratch: backward 16 * N * C bytes; NHWC C * (16 + 8 *
 * sizeof(P)) bytes plus a block of rows (about 4096 P values) per thread.
 */
#define BNC_DECLARE_GROUPNORM(T, P, SFX)                                      \
    int bnc_groupnorm_fwd_##SFX(int64_t N, int64_t C, int64_t HW, int64_t G,   \
                                int channels_last, const T *x,                 \
                                const P *weight, const P *bias, double eps,    \
                                T *y, P *save_mean, P *save_invstd,            \
                                int n_threads);                                \
    int bnc_groupnorm_bwd_##SFX(int64_t N, int64_t C, int64_t HW, int64_t G,   \
                                int channels_last, const T *dy, const T *x,    \
                                const P *weight, const P *mean,                \
                                const P *invstd, T *dx, P *dweight, P *dbias,  \
                                int n_threads);

BNC_DECLARE_GROUPNORM(float, float, f32)
BNC_DECLARE_GROUPNORM(double, double, f64)
BNC_DECLARE_GROUPNORM(bnc_f16_t, float, f16)

/*
 * Instance norm (PyTorch's instance_norm): group norm with one channel per
 * group (G = C), the same layouts, dtypes, NULL rules and work split as the
 * group norm kernels above, run by the same code. Statistics are per (n, c):
 * save_mean, save_invstd, save_var, mean, invstd are P[N * C].
 *
 * bnc_instancenorm_fwd_SFX: y = (x - mean) * invstd * weight[c] + bias[c],
 *     mean and biased variance over the HW positions of (n, c); save_var (may
 *     be NULL) receives that variance, for a running-statistics update.
 * bnc_instancenorm_bwd_SFX: input_stats != 0: the group norm backward (the
 *     statistics were computed from x). input_stats == 0: mean and invstd are
 *     constants (the forward normalized with running statistics):
 *     dx = dy * weight[c] * invstd; dweight and dbias as in group norm.
 */
#define BNC_DECLARE_INSTANCENORM(T, P, SFX)                                   \
    int bnc_instancenorm_fwd_##SFX(int64_t N, int64_t C, int64_t HW,           \
                                   int channels_last, const T *x,              \
                                   const P *weight, const P *bias, double eps, \
                                   T *y, P *save_mean, P *save_invstd,         \
                                   P *save_var, int n_threads);                \
    int bnc_instancenorm_bwd_##SFX(int64_t N, int64_t C, int64_t HW,           \
                                   int channels_last, const T *dy, const T *x, \
                                   const P *weight, const P *mean,             \
                                   const P *invstd, int input_stats, T *dx,    \
                                   P *dweight, P *dbias, int n_threads);

BNC_DECLARE_INSTANCENORM(float, float, f32)
BNC_DECLARE_INSTANCENORM(double, double, f64)
BNC_DECLARE_INSTANCENORM(bnc_f16_t, float, f16)

#ifdef __cplusplus
}
#endif

#endif /* BNC_BNC_H */
