/*
 * batchnorm_body.h - the batch norm kernels, written once for any dtype.
 *
 * batchnorm.c includes this file once per dtype after defining:
 *   T        storage type of x, y, dy, dx
 *   P        per-channel type (weight, bias, saved statistics) and the
 *            arithmetic type of the elementwise passes
 *   SFX      name suffix: f32, f64, f16
 *   LOAD(v)  T -> P        STORE(v)  P -> T
 * and undefines them at its end. Reductions always accumulate in double.
 */

#define F(name) BNC_CAT(name, BNC_CAT(_, SFX))

/* Everything a kernel's phases need; unused fields stay NULL / 0. */
typedef struct {
    bnc_plan_t plan;
    const T *x, *dy;
    bnc_strides_t xs, dys;
    T *out; /* y or dx */
    bnc_strides_t os;
    int write_in_reduce;   /* backward with constant statistics: dx in the reduce pass */
    int packed;            /* few interleaved channels, dense rows: see BNC_PACK */
    int stream;            /* the normalizing pass streams y, the backward's dx (run_norm) */
    const P *weight, *bias, *mean_in, *invstd_in;
    double eps;
    double *mean, *var;            /* statistics (stats kernel) */
    double *sum_dy, *sum_dy_xhat;  /* backward sums (reduce kernel) */
    P *save_mean, *save_invstd, *save_var;
    const P *run_mean, *run_var;   /* batch renorm: r and d against these (else NULL) */
    double rmax, dmax;
    P *save_r, *save_d;
    P *dweight, *dbias;
    P *cm, *ca, *cb, *cg;          /* per-channel coefficients, see the apply passes */
    /* the fused kernels (bnc_batchnorm_*_fused): forward y = act(bn(x) + res);
     * backward dz = dy masked by the ReLU read from the forward's y (yact),
     * and dres = dz, the residual's gradient */
    const T *res, *yact;
    bnc_strides_t rs, yas;
    int relu;
    T *dres;
    bnc_strides_t drs;
} F(ctx_t);

/* ---- contiguous runs, reduced into fixed lanes of double ----
 * A run is summed in NL lanes: element i goes to lane i % NL (the tail to
 * lanes 0, 1, ...). The lanes are four accumulators f0..f3, GNU C vectors of
 * BNC_VEC_BYTES, named variables so that they stay in registers (an array of
 * them would live in memory), enough of them to hide the add latency. Each
 * lane first sums at most BNC_SUB / NL terms in working precision P, then
 * adds that partial to its double lane: the double arithmetic is paid once
 * per BNC_SUB elements. The lanes fix the summation order whatever the
 * vector ISA; callers fold them once per block or chunk (bnc_lanes_sum).
 * The tail of a run (fewer than NL elements) goes to lanes 0, 1, ... in
 * double directly.
 * These loops are functions of their own: inlined into the large kernels,
 * they lose their registers to the caller's values and spill.
 * Blocks whose runs hold NL or more elements use the register-lane sums of
 * rowsums.h instead (moments_r, dots_sum: a block's sums come back
 * folded, and the blocks are added in double in block order); the loops
 * here take the shorter runs. */
#include "rowsums.h" /* sum_p, sqdev_p, reg_sums_t (and lanes.h) */

/* The reductions work on P values (see run_* for T), over `rows` runs of n
 * elements, the runs `xs` (and `gs` for dy) elements apart: one call per
 * block, not per row, and the partials carry over from row to row, as rows
 * can be short (14x14 images: 196 elements). */

/* a += dy * (x - m), by lanes (m is a P value). */
BNC_HOT BNC_NOINLINE static void F(dot_p)(const P *restrict dy, int64_t gs,
                                          const P *restrict x, int64_t xs, int64_t rows,
                                          int64_t n, double m, double *restrict a)
{
    const P mp = (P)m;
    F(vec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    int groups = 0;
    for (int64_t r = 0; r < rows; r++, dy += gs, x += xs) {
        int64_t i = 0;
        for (; i + F(NL) <= n; i += F(NL))
            BNC_STEP(BNC_VLOAD(dy + i) * (BNC_VLOAD(x + i) - mp),
                     BNC_VLOAD(dy + i + F(VL)) * (BNC_VLOAD(x + i + F(VL)) - mp),
                     BNC_VLOAD(dy + i + 2 * F(VL)) * (BNC_VLOAD(x + i + 2 * F(VL)) - mp),
                     BNC_VLOAD(dy + i + 3 * F(VL)) * (BNC_VLOAD(x + i + 3 * F(VL)) - mp));
        for (int l = 0; i < n; i++, l++) /* the tail, in double */
            a[l] += (double)dy[i] * ((double)x[i] - m);
    }
    BNC_FLUSH4(a, f0, f1, f2, f3);
}

/* ReLU as torch.relu: negatives to 0, NaN propagates, -0.0 stays. */
static inline P F(relu)(P v)
{
    return v < 0 ? (P)0 : v;
}

/* The gradient through the ReLU whose output is y: dy, or +0 where y <= 0
 * (torch's threshold_backward(dy, y, 0): a NaN y passes dy). Exact: the bits
 * of dy or +0, so a fused backward sees the values an unfused one would. */
static inline T F(relu_grad)(T dy, T y)
{
    return LOAD(y) <= 0 ? (T)0 : dy;
}

/* y = act((x - m) * a + s + r): r may be NULL (then relu is set); act
 * is the ReLU if relu. x, r and y may be the same array. One loop per variant. */
static inline void F(fuse_p)(const P *x, const P *r, P *y, int64_t n, P m, P a, P s, int relu)
{
    int64_t i;
    if (!r)
        for (i = 0; i < n; i++)
            y[i] = F(relu)((x[i] - m) * a + s);
    else if (relu)
        for (i = 0; i < n; i++)
            y[i] = F(relu)(((x[i] - m) * a + s) + r[i]);
    else
        for (i = 0; i < n; i++)
            y[i] = ((x[i] - m) * a + s) + r[i];
}

/* dx = ((dy - a) - (x - m) * g) * s. */
static inline void F(grad_p)(const P *restrict dy, const P *restrict x, P *restrict dx,
                             int64_t n, P m, P a, P g, P s)
{
    for (int64_t i = 0; i < n; i++)
        dx[i] = ((dy[i] - a) - (x[i] - m) * g) * s;
}

/* dx = dy * a. */
static inline void F(scale_p)(const P *restrict dy, P *restrict dx, int64_t n, P a)
{
    for (int64_t i = 0; i < n; i++)
        dx[i] = dy[i] * a;
}

/* The run_* functions apply the elementwise kernels above to runs of T
 * (run_norm, shared with group norm, is in rowsums.h). For float16
 * (STAGED), the normalizing and backward passes convert in registers
 * (bnc_f16_norm, bnc_f16_grad), the others convert runs to float
 * in chunks of BNC_STAGE elements, with the hardware's conversion where it
 * has one; for float32/float64, T is P and runs are read in place. (The
 * reductions take whole blocks: block_p.) */
#ifndef BNC_STAGE
#define BNC_STAGE 512
#endif
#if STAGED
static inline void F(run_fuse)(const T *x, const T *r, T *y, int64_t n, P mu, P a, P s,
                               int relu)
{
    P b[BNC_STAGE], c[BNC_STAGE];
    for (int64_t o = 0; o < n; o += BNC_STAGE) {
        int64_t m = n - o < BNC_STAGE ? n - o : BNC_STAGE;
        bnc_f16_load(b, x + o, m);
        if (r)
            bnc_f16_load(c, r + o, m);
        F(fuse_p)(b, r ? c : NULL, b, m, mu, a, s, relu);
        bnc_f16_store(y + o, b, m);
    }
}

static inline void F(run_grad)(const T *dy, const T *x, T *dx, int64_t n, P mu, P a, P g,
                               P s, int stream)
{
    bnc_f16_grad(dx, dy, x, n, mu, a, g, s, stream); /* as grad_p, in registers */
}

static inline void F(run_scale)(const T *dy, T *dx, int64_t n, P a)
{
    P b[BNC_STAGE], c[BNC_STAGE];
    for (int64_t o = 0; o < n; o += BNC_STAGE) {
        int64_t m = n - o < BNC_STAGE ? n - o : BNC_STAGE;
        bnc_f16_load(b, dy + o, m);
        F(scale_p)(b, c, m, a);
        bnc_f16_store(dx + o, c, m);
    }
}
#else
static inline void F(run_fuse)(const T *x, const T *r, T *y, int64_t n, P mu, P a, P s,
                               int relu)
{
    F(fuse_p)(x, r, y, n, mu, a, s, relu);
}
static inline void F(run_grad)(const T *dy, const T *x, T *dx, int64_t n, P mu, P a, P g,
                               P s, int stream)
{
    if (stream) /* the same bits, streamed (see run_norm) */
        BNC_CAT(bnc_stream_grad_, SFX)(dx, dy, x, n, mu, a, g, s);
    else
        F(grad_p)(dy, x, dx, n, mu, a, g, s);
}
static inline void F(run_scale)(const T *dy, T *dx, int64_t n, P a)
{
    F(scale_p)(dy, dx, n, a);
}
#endif

/* A block of the slab layout (`rows` runs of n values, xs apart) as P
 * values for the reductions: in place for float32/float64 (*ps = xs); for
 * float16, converted once into buf (BNC_BLOCK values, runs n apart: *ps = n),
 * so that the two reductions over a block in cache convert it once, and
 * reduce the very values and lanes a float32 copy of the block would. */
static inline const P *F(block_p)(P *buf, const T *x, int64_t rows, int64_t xs, int64_t n,
                                  int64_t *ps)
{
#if STAGED
    for (int64_t r = 0; r < rows; r++)
        bnc_f16_load(buf + r * n, x + r * xs, n);
    *ps = n;
    return buf;
#else
    (void)buf;
    (void)rows;
    (void)n;
    *ps = xs;
    return x;
#endif
}

/* Two blocks of the same extent (dy's and x's: a from as, b from bs) as
 * block_p makes them, *pa and *pb (*pas, *pbs their run strides). float16
 * converts the two in alternating pieces of BNC_PAIR_STEP values: two
 * streams from memory in flight at once, as the float32 sums read them
 * (converting one block and then the other took 14% longer for the whole
 * backward of (32,64,56,56), 1 thread). */
#ifndef BNC_PAIR_STEP
#define BNC_PAIR_STEP 256
#endif
static inline void F(block_pair_p)(P *abuf, const T *a, int64_t as, P *bbuf, const T *b,
                                   int64_t bs, int64_t rows, int64_t n, const P **pa,
                                   int64_t *pas, const P **pb, int64_t *pbs)
{
#if STAGED
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < n; o += BNC_PAIR_STEP) {
            const int64_t m = n - o < BNC_PAIR_STEP ? n - o : BNC_PAIR_STEP;
            bnc_f16_load(abuf + r * n + o, a + r * as + o, m);
            bnc_f16_load(bbuf + r * n + o, b + r * bs + o, m);
        }
    *pa = abuf;
    *pb = bbuf;
    *pas = *pbs = n;
#else
    *pa = F(block_p)(abuf, a, rows, as, n, pas);
    *pb = F(block_p)(bbuf, b, rows, bs, n, pbs);
#endif
}

/* The elementwise pass of the fused backward with a ReLU and no residual
 * gradient to keep dz in, over a run: dz = relu_grad(dy, y), staged in L1 in
 * chunks, then dx = run_grad(dz). */
static void F(run_grad_relu)(const T *dy, const T *y, const T *x, T *dx, int64_t n, P mu,
                             P a, P g, P s)
{
    T z[BNC_STAGE];
    for (int64_t o = 0; o < n; o += BNC_STAGE) {
        int64_t m = n - o < BNC_STAGE ? n - o : BNC_STAGE;
        for (int64_t i = 0; i < m; i++)
            z[i] = F(relu_grad)(dy[o + i], y[o + i]);
        F(run_grad)(z, x + o, dx + o, m, mu, a, g, s, 0);
    }
}

/* z = relu_grad(dy, y) over `rows` runs of n elements (dy, y and z runs gs,
 * ys and zs apart): one block of the slab layout, which the reductions then
 * read as they would dy (z: the residual's gradient, or a dense buffer of
 * BNC_BLOCK elements). */
static void F(relu_block)(const T *dy, int64_t gs, const T *y, int64_t ys, int64_t rows,
                          int64_t n, T *restrict z, int64_t zs)
{
    for (int64_t r = 0; r < rows; r++, dy += gs, y += ys, z += zs)
        for (int64_t i = 0; i < n; i++)
            z[i] = F(relu_grad)(dy[i], y[i]);
}

/* dst[j] = src[j % C] for j < L (L a multiple of C): per-channel values
 * repeated along a packed run. */
static inline void F(repeat)(P *restrict dst, const P *restrict src, int64_t C, int64_t L)
{
    for (int64_t j = 0; j < L;)
        for (int64_t c = 0; c < C; c++, j++)
            dst[j] = src[c];
}

/* ---- per-channel coefficients of the elementwise passes ---- */

/* Normalizing pass: y = (x - cm) * ca + cb. The mean is split into a
 * P-rounded head cm and the rest cl = mean - cm: x - cm is exact for x near
 * the mean, so float32 data far from zero (|mean|/std = 1e4) still normalizes
 * to ~1 ulp, and -cl * ca goes into cb, computed in double with the bias.
 * Batch renorm's y = w * (xhat * r + d) + b is the same pass with
 * ca = w * r * invstd and cb = w * d + b - cl * ca; batch norm is r = 1,
 * d = 0, which gives the same bits (w * 1 is w, w * 0 adds nothing). */
static void F(set_norm_coef)(F(ctx_t) *k, int64_t c, double mean, double invstd, double r,
                             double d)
{
    const double w = k->weight ? (double)k->weight[c] : 1.0;
    const double b = k->bias ? (double)k->bias[c] : 0.0;
    k->cm[c] = (P)mean;
    k->ca[c] = (P)(w * r * invstd);
    k->cb[c] = (P)bnc_fold_low(d != 0 ? w * d + b : b, mean - (double)k->cm[c], (double)k->ca[c]);
}

/* Batch renorm's corrections from the batch statistics (mean, biased var)
 * and the running ones, all in double: with sigma_B = sqrt(var + eps) and
 * sigma = sqrt(running_var + eps),
 *   r = clip(sigma_B / sigma, 1/rmax, rmax),
 *   d = clip((mean - running_mean) / sigma, -dmax, dmax).
 * NaN propagates (a NaN ratio is not clipped). */
static void F(renorm_rd)(const F(ctx_t) *k, int64_t c, double mean, double var, double *r,
                         double *d)
{
    double sigma = sqrt((double)k->run_var[c] + k->eps);
    double rr = sqrt(var + k->eps) / sigma, dd = (mean - (double)k->run_mean[c]) / sigma;
    double rmin = 1.0 / k->rmax;
    rr = rr < rmin ? rmin : rr > k->rmax ? k->rmax : rr;
    dd = dd < -k->dmax ? -k->dmax : dd > k->dmax ? k->dmax : dd;
    *r = rr;
    *d = dd + 0.0; /* dmax = 0 clips to -0.0: store +0.0 */
}

/* Backward pass: dx = ((dy - ca) - (x - cm) * cg) * cb, from the sums over
 * n elements: ca = sum(dy)/n, cg = invstd * sum(dy*xhat)/n, cb = w * invstd. */
static void F(set_grad_coef)(F(ctx_t) *k, int64_t c, double sdy, double sdyx, double n)
{
    double invstd = (double)k->invstd_in[c];
    k->cm[c] = k->mean_in[c];
    k->ca[c] = (P)(sdy / n);
    k->cg[c] = (P)(invstd * sdyx / n);
    k->cb[c] = (P)((k->weight ? (double)k->weight[c] : 1.0) * invstd);
}

/* ---- phase 1: per-channel moments (count, mean, M2) ---- */

/* The moments are taken of x - K, K = the channel's first value, so that block
 * means stay small and Chan's merge loses nothing to |mean| >> std. */
static double F(shift_of)(const F(ctx_t) *k, int64_t c)
{
    return (double)LOAD(k->x[c * k->xs.channel]);
}

/* The interleaved reductions sum 4 rows, or 8 repeats of a packed run, in
 * working precision as a fixed tree before adding to the double sums: as in
 * the contiguous runs, the double arithmetic is paid once per 4 or 8
 * elements. (8 rows at a time reads faster from cache but slower from
 * memory: 16 rows of x and dy in flight confuse the prefetcher.) */
static inline P F(tree8)(P a, P b, P c, P d, P e, P f, P g, P h)
{
    return ((a + b) + (c + d)) + ((e + f) + (g + h));
}

/* Moments of rows [r0, r1) of every channel (interleaved layout), shifted by
 * kd: bmean[c] = mean of x - kd[c], bm2[c] = sum of squared deviations.
 * run: the chunk's mean of x - kd so far, NULL for its first block. */
BNC_HOT static void F(rows_moments)(const F(ctx_t) *k, int64_t r0, int64_t r1, const double *kd,
                                    const double *run, double *restrict bmean,
                                    double *restrict bm2)
{
    const int64_t C = k->plan.channels, so = k->xs.outer;
    const double rows = (double)(r1 - r0);
    int64_t r;
#if !STAGED
    if (!k->packed) {
        /* one pass over the block (column sums about a shift near the
         * mean: the chunk's mean so far; for its first block, see
         * first_shift), channels a tile at a time */
        enum { TILE = 256 };
        P sh[TILE], s1[TILE], s2[TILE];
        double d1[TILE], d2[TILE];
        const P *xb = k->x + r0 * so;
        for (int64_t c0 = 0; c0 < C; c0 += TILE) {
            const int64_t nc = C - c0 < TILE ? C - c0 : TILE;
            for (int64_t c = 0; c < nc; c++)
                sh[c] = (P)(run ? kd[c0 + c] + run[c0 + c] : kd[c0 + c]);
            if (!run)
                F(first_shift)(xb + c0, r1 - r0, so, nc, sh, s1, s2);
            F(col_moments_d)(xb + c0, r1 - r0, so, nc, sh, s1, s2, d1, d2);
            for (int64_t c = 0; c < nc; c++) {
                const double m = d1[c] / rows, m2 = d2[c] - d1[c] * m;
                bmean[c0 + c] = ((double)sh[c] - kd[c0 + c]) + m;
                bm2[c0 + c] = m2 < 0 ? 0 : m2;
            }
        }
        return;
    }
#else
    (void)run;
#endif
    if (k->packed) {
        /* few channels: the block is one contiguous run; lane j holds
         * channel j % C, the lanes fold into channels in lane order */
        const int64_t L = bnc_pack_lanes(C, r1 - r0), len = (r1 - r0) * C;
        const T *restrict xb = k->x + r0 * so;
        double la[BNC_PACK];
        P e[BNC_PACK], m[BNC_PACK];
        int64_t i, j;
        for (j = 0; j < L;) /* lane j = q * C + c holds channel c */
            for (int64_t c = 0; c < C; c++, j++) {
                la[j] = 0;
                e[j] = (P)kd[c];
            }
        for (i = 0; i + 8 * L <= len; i += 8 * L)
            for (j = 0; j < L; j++) {
                const T *q = xb + i + j;
                la[j] += (double)F(tree8)(LOAD(q[0]) - e[j], LOAD(q[L]) - e[j],
                                          LOAD(q[2 * L]) - e[j], LOAD(q[3 * L]) - e[j],
                                          LOAD(q[4 * L]) - e[j], LOAD(q[5 * L]) - e[j],
                                          LOAD(q[6 * L]) - e[j], LOAD(q[7 * L]) - e[j]);
            }
        for (j = 0; i < len; i++, j = j + 1 < L ? j + 1 : 0)
            la[j] += (double)LOAD(xb[i]) - (double)e[j];
        for (int64_t ch = 0; ch < C; ch++)
            bmean[ch] = bm2[ch] = 0;
        for (j = 0; j < L;) /* lane j = q * C + c holds channel c */
            for (int64_t c = 0; c < C; c++, j++)
                bmean[c] += la[j];
        for (int64_t ch = 0; ch < C; ch++)
            bmean[ch] /= rows;
        for (j = 0; j < L;) /* lane j = q * C + c holds channel c */
            for (int64_t c = 0; c < C; c++, j++) {
                la[j] = 0;
                m[j] = (P)bmean[c];
            }
        for (i = 0; i + 8 * L <= len; i += 8 * L)
            for (j = 0; j < L; j++) {
                const T *q = xb + i + j;
                P v0 = (LOAD(q[0]) - e[j]) - m[j], v1 = (LOAD(q[L]) - e[j]) - m[j];
                P v2 = (LOAD(q[2 * L]) - e[j]) - m[j], v3 = (LOAD(q[3 * L]) - e[j]) - m[j];
                P v4 = (LOAD(q[4 * L]) - e[j]) - m[j], v5 = (LOAD(q[5 * L]) - e[j]) - m[j];
                P v6 = (LOAD(q[6 * L]) - e[j]) - m[j], v7 = (LOAD(q[7 * L]) - e[j]) - m[j];
                la[j] += (double)F(tree8)(v0 * v0, v1 * v1, v2 * v2, v3 * v3, v4 * v4, v5 * v5,
                                          v6 * v6, v7 * v7);
            }
        for (j = 0; i < len; i++, j = j + 1 < L ? j + 1 : 0) {
            double v = ((double)LOAD(xb[i]) - (double)e[j]) - (double)m[j];
            la[j] += v * v;
        }
        for (j = 0; j < L;) /* lane j = q * C + c holds channel c */
            for (int64_t c = 0; c < C; c++, j++)
                bm2[c] += la[j];
        return;
    }
    for (int64_t ch = 0; ch < C; ch++)
        bmean[ch] = bm2[ch] = 0;
    for (r = r0; r + 4 <= r1; r += 4) {
        const T *restrict x0 = k->x + r * so;
        for (int64_t ch = 0; ch < C; ch++) {
            const T *q = x0 + ch;
            const P e = (P)kd[ch];
            bmean[ch] += (double)(((LOAD(q[0]) - e) + (LOAD(q[so]) - e)) +
                                  ((LOAD(q[2 * so]) - e) + (LOAD(q[3 * so]) - e)));
        }
    }
    for (; r < r1; r++) {
        const T *restrict xr = k->x + r * so;
        for (int64_t ch = 0; ch < C; ch++)
            bmean[ch] += (double)LOAD(xr[ch]) - kd[ch];
    }
    for (int64_t ch = 0; ch < C; ch++)
        bmean[ch] /= rows;
    for (r = r0; r + 4 <= r1; r += 4) {
        const T *restrict x0 = k->x + r * so;
        for (int64_t ch = 0; ch < C; ch++) {
            const T *q = x0 + ch;
            const P e = (P)kd[ch], m = (P)bmean[ch];
            P v0 = (LOAD(q[0]) - e) - m, v1 = (LOAD(q[so]) - e) - m;
            P v2 = (LOAD(q[2 * so]) - e) - m, v3 = (LOAD(q[3 * so]) - e) - m;
            bm2[ch] += (double)((v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3));
        }
    }
    for (; r < r1; r++) {
        const T *restrict xr = k->x + r * so;
        for (int64_t ch = 0; ch < C; ch++) {
            double v = ((double)LOAD(xr[ch]) - kd[ch]) - (double)(P)bmean[ch];
            bm2[ch] += v * v;
        }
    }
}

/* Slab layout: fold the blocks of chunk j of channel c into part[0..2].
 * Interleaved: chunk j of rows, every channel; part is [6][C]: n, mean, M2
 * and three rows of scratch (block mean and M2, shifts). Both reduce a block
 * in one pass while it is in cache, about a shift near its mean (slab runs
 * of NL or more: moments_r; shorter runs: the mean, then the squared
 * deviations from it, sum_p and sqdev_p) and merge blocks with Chan's
 * formula. */
BNC_HOT static void F(reduce_moments)(void *vctx, int64_t c, int64_t j, double *part)
{
    const F(ctx_t) *k = vctx;
    const bnc_plan_t *p = &k->plan;
    int64_t b0, b1, r0, r1, i0, i1;
    bnc_chunk_blocks(p, j, &b0, &b1);
    if (!p->interleaved) {
        const T *xc = k->x + c * k->xs.channel;
        const double K = F(shift_of)(k, c);
        bnc_moments_t acc = {0, 0, 0};
        P buf[STAGED ? BNC_BLOCK : 1];
        for (int64_t b = b0; b < b1; b++) {
            double ls[BNC_LANES] = {0}, lq[BNC_LANES] = {0};
            bnc_moments_t blk;
            const P *xb;
            int64_t xs;
            bnc_block_extent(p, b, &r0, &r1, &i0, &i1);
            xb = F(block_p)(buf, xc + r0 * k->xs.outer + i0, r1 - r0, k->xs.outer, i1 - i0,
                            &xs);
            blk.n = (double)((r1 - r0) * (i1 - i0));
            if (i1 - i0 >= F(NL)) { /* runs of NL or more: lanes in registers */
                F(moments_r)(xb, xs, r1 - r0, i1 - i0, (P)K, &blk.mean, &blk.m2);
            } else {
                F(sum_p)(xb, r1 - r0, xs, i1 - i0, (P)K, ls);
                blk.mean = bnc_lanes_sum(ls) / blk.n;
                F(sqdev_p)(xb, r1 - r0, xs, i1 - i0, (P)K, (P)blk.mean, lq);
                blk.m2 = bnc_lanes_sum(lq);
            }
            acc = bnc_moments_merge(acc, blk);
        }
        part[0] = acc.n;
        part[1] = acc.mean;
        part[2] = acc.m2;
    } else {
        const int64_t C = p->channels;
        double *restrict n = part, *restrict mean = part + C, *restrict m2 = part + 2 * C;
        double *restrict bmean = part + 3 * C, *restrict bm2 = part + 4 * C;
        double *restrict kd = part + 5 * C;
        for (int64_t ch = 0; ch < C; ch++)
            kd[ch] = (double)LOAD(k->x[ch]); /* the shifts: row 0 */
        for (int64_t b = b0; b < b1; b++) {
            double rows, fb, fab;
            bnc_block_extent(p, b, &r0, &r1, &i0, &i1);
            rows = (double)(r1 - r0);
            F(rows_moments)(k, r0, r1, kd, b == b0 ? NULL : mean, bmean, bm2);
            if (b == b0) {
                for (int64_t ch = 0; ch < C; ch++) {
                    n[ch] = rows;
                    mean[ch] = bmean[ch];
                    m2[ch] = bm2[ch];
                }
                continue;
            }
            /* Chan's merge, as bnc_moments_merge, for all channels at once */
            fb = rows / (n[0] + rows);
            fab = n[0] * rows / (n[0] + rows);
            for (int64_t ch = 0; ch < C; ch++) {
                double delta = bmean[ch] - mean[ch];
                n[ch] += rows;
                mean[ch] += delta * fb;
                m2[ch] = m2[ch] + bm2[ch] + delta * delta * fab;
            }
        }
    }
    (void)c;
}

/* Fold the chunk moments of channels c0..c1-1 in chunk order (every channel
 * has the same counts, so Chan's factors are computed once per chunk); store
 * the statistics and, for the training forward, the normalizing coefficients. */
static void F(finalize_moments)(void *vctx, int64_t c0, int64_t c1, bnc_parts_t p)
{
    F(ctx_t) *k = vctx;
    const int64_t nc = c1 - c0;
    double mean[BNC_FINAL_CHANNELS], m2[BNC_FINAL_CHANNELS], n = 0;
    const double *base = p.base + c0 * p.channel;
    for (int64_t j = 0; j < k->plan.nchunks; j++) {
        const double *pj = base + j * p.chunk;
        double nj = pj[0], fb, fab;
        if (nj == 0)
            continue;
        if (n == 0) {
            for (int64_t c = 0; c < nc; c++) {
                mean[c] = pj[c * p.channel + p.field];
                m2[c] = pj[c * p.channel + 2 * p.field];
            }
            n = nj;
            continue;
        }
        fb = nj / (n + nj);
        fab = n * nj / (n + nj);
        for (int64_t c = 0; c < nc; c++) {
            double delta = pj[c * p.channel + p.field] - mean[c];
            mean[c] += delta * fb;
            m2[c] = m2[c] + pj[c * p.channel + 2 * p.field] + delta * delta * fab;
        }
        n += nj;
    }
    for (int64_t c = 0; c < nc; c++) {
        int64_t ch = c0 + c;
        double var = m2[c] / n, mu = mean[c] + F(shift_of)(k, ch), invstd;
        if (k->mean) {
            k->mean[ch] = mu;
            k->var[ch] = var;
        }
        if (!k->cm)
            continue;
        invstd = 1.0 / sqrt(var + k->eps);
        if (k->run_mean) {
            double r, dd;
            F(renorm_rd)(k, ch, mu, var, &r, &dd);
            F(set_norm_coef)(k, ch, mu, invstd, r, dd);
            if (k->save_r)
                k->save_r[ch] = (P)r;
            if (k->save_d)
                k->save_d[ch] = (P)dd;
        } else {
            F(set_norm_coef)(k, ch, mu, invstd, 1.0, 0.0);
        }
        if (k->save_mean)
            k->save_mean[ch] = (P)mu;
        if (k->save_invstd)
            k->save_invstd[ch] = (P)invstd;
        if (k->save_var)
            k->save_var[ch] = (P)var;
    }
}

/* ---- phase 1 of the backward: sum(dy), sum(dy * (x - mean)) ---- */

/* The interleaved backward reduction for few channels with dense rows: rows
 * [r0, r1) as one run, lane j holding channel j % C (folded in lane order),
 * one accumulator per loop; with write_in_reduce also dx = dy * ca. */
BNC_HOT static void F(packed_grad)(const F(ctx_t) *k, int64_t r0, int64_t r1, const double *md,
                                   double *restrict sdy, double *restrict sdyx)
{
    const int64_t C = k->plan.channels, L = bnc_pack_lanes(C, r1 - r0), len = (r1 - r0) * C;
    const T *restrict xb = k->x + r0 * C, *restrict gb = k->dy + r0 * C;
    double la[BNC_PACK], lb[BNC_PACK];
    P e[BNC_PACK];
    int64_t i, j;
    for (j = 0; j < L;) /* lane j = q * C + c holds channel c */
        for (int64_t c = 0; c < C; c++, j++) {
            la[j] = lb[j] = 0;
            e[j] = k->mean_in[c];
        }
    /* both sums in one pass: each lane adds the same terms in the same order
     * as two passes would */
    for (i = 0; i + 8 * L <= len; i += 8 * L)
        for (j = 0; j < L; j++) {
            const T *g = gb + i + j, *q = xb + i + j;
            const P g0 = LOAD(g[0]), g1 = LOAD(g[L]), g2 = LOAD(g[2 * L]), g3 = LOAD(g[3 * L]);
            const P g4 = LOAD(g[4 * L]), g5 = LOAD(g[5 * L]), g6 = LOAD(g[6 * L]);
            const P g7 = LOAD(g[7 * L]);
            la[j] += (double)F(tree8)(g0, g1, g2, g3, g4, g5, g6, g7);
            lb[j] += (double)F(tree8)(
                g0 * (LOAD(q[0]) - e[j]), g1 * (LOAD(q[L]) - e[j]), g2 * (LOAD(q[2 * L]) - e[j]),
                g3 * (LOAD(q[3 * L]) - e[j]), g4 * (LOAD(q[4 * L]) - e[j]),
                g5 * (LOAD(q[5 * L]) - e[j]), g6 * (LOAD(q[6 * L]) - e[j]),
                g7 * (LOAD(q[7 * L]) - e[j]));
        }
    for (j = 0; i < len; i++, j = j + 1 < L ? j + 1 : 0) {
        la[j] += (double)LOAD(gb[i]);
        lb[j] += (double)LOAD(gb[i]) * ((double)LOAD(xb[i]) - md[j % C]);
    }
    for (j = 0; j < L;) /* lane j = q * C + c holds channel c */
        for (int64_t c = 0; c < C; c++, j++) {
            sdy[c] += la[j];
            sdyx[c] += lb[j];
        }
    if (k->write_in_reduce) {
        T *restrict db = k->out + r0 * C;
        P ea[BNC_PACK];
        F(repeat)(ea, k->ca, C, L);
        for (i = 0; i + L <= len; i += L)
            for (j = 0; j < L; j++)
                db[i + j] = STORE(LOAD(gb[i + j]) * ea[j]);
        for (j = 0; i < len; i++, j++)
            db[i] = STORE(LOAD(gb[i]) * ea[j]);
    }
}

/* The value of dz (a T) at g, y: the ReLU's gradient mask in the fused
 * backward with a ReLU (mode 2), else dy itself. */
static inline T F(dz)(const T *g, const T *y, int mode)
{
    return mode == 2 ? F(relu_grad)(*g, *y) : *g;
}

/* Slab: part[0..1] for (c, j). Interleaved: part is [3][C] (sums, mean).
 * With write_in_reduce, dx = dy * ca is written in the same pass.
 * mode: 0 batch norm; the fused backward: 1 with dz = dy (residual only),
 * 2 with dz masked by the ReLU (read from y). Modes 1 and 2 write dres = dz
 * here when it is given: the elementwise pass then reads dz from it, not dy
 * and y again. The reductions read dz as the unfused kernel reads dy (the
 * same values in the same order: the same bits). */
static BNC_ALWAYS_INLINE void F(reduce_grad_t)(void *vctx, int64_t c, int64_t j, double *part,
                                               const int mode)
{
    const F(ctx_t) *k = vctx;
    const bnc_plan_t *p = &k->plan;
    int64_t b0, b1, r0, r1, i0, i1;
    bnc_chunk_blocks(p, j, &b0, &b1);
    if (!p->interleaved) {
        const T *xc = k->x + c * k->xs.channel, *dyc = k->dy + c * k->dys.channel;
        const T *yc = mode == 2 ? k->yact + c * k->yas.channel : NULL;
        T *dxc = k->write_in_reduce ? k->out + c * k->os.channel : NULL;
        T *drc = mode && k->dres ? k->dres + c * k->drs.channel : NULL;
        double ldy[BNC_LANES] = {0}, ldyx[BNC_LANES] = {0}, m = (double)k->mean_in[c];
        double rdy = 0, rdyx = 0; /* the blocks summed by dots_sum, in block order */
        P scale = k->write_in_reduce ? k->ca[c] : (P)0;
        T zb[BNC_BLOCK]; /* dz of a block (mode 2; optimized away otherwise) */
        P gbuf[STAGED ? BNC_BLOCK : 1], xbuf[STAGED ? BNC_BLOCK : 1];
        for (int64_t b = b0; b < b1; b++) {
            const T *g;
            int64_t gs = k->dys.outer;
            bnc_block_extent(p, b, &r0, &r1, &i0, &i1);
            g = dyc + r0 * gs + i0;
            if (mode == 2) { /* dz into dres, or a buffer */
                T *z = drc ? drc + r0 * k->drs.outer + i0 : zb;
                int64_t zs = drc ? k->drs.outer : i1 - i0;
                F(relu_block)(g, gs, yc + r0 * k->yas.outer + i0, k->yas.outer, r1 - r0,
                              i1 - i0, z, zs);
                g = z;
                gs = zs;
            } else if (mode && drc) {
                for (int64_t r = r0; r < r1; r++)
                    memcpy(drc + r * k->drs.outer + i0, g + (r - r0) * gs,
                           sizeof(T) * (size_t)(i1 - i0));
            }
            {
                int64_t ps, qs;
                const P *pg, *px;
                F(block_pair_p)(gbuf, g, gs, xbuf, xc + r0 * k->xs.outer + i0, k->xs.outer,
                                r1 - r0, i1 - i0, &pg, &ps, &px, &qs);
                if (i1 - i0 >= F(NL)) { /* runs of NL or more: lanes in registers */
                    double bdy, bdyx;
                    F(dots_sum)(pg, ps, px, qs, r1 - r0, i1 - i0, k->mean_in[c], &bdy, &bdyx);
                    rdy += bdy;
                    rdyx += bdyx;
                } else {
                    F(sum_p)(pg, r1 - r0, ps, i1 - i0, (P)0, ldy);
                    F(dot_p)(pg, ps, px, qs, r1 - r0, i1 - i0, m, ldyx);
                }
            }
            if (dxc)
                for (int64_t r = r0; r < r1; r++)
                    F(run_scale)(g + (r - r0) * gs, dxc + r * k->os.outer + i0, i1 - i0,
                                 scale);
        }
        part[0] = rdy + bnc_lanes_sum(ldy);
        part[1] = rdyx + bnc_lanes_sum(ldyx);
    } else {
        const int64_t C = p->channels;
        double *restrict sdy = part, *restrict sdyx = part + C, *restrict md = part + 2 * C;
        const int64_t xo = k->xs.outer, go = k->dys.outer;
        /* y's rows (channels are unit-strided in this layout); dy's own when
         * there is no mask, never read then */
        const int64_t yo = mode == 2 ? k->yas.outer : go;
        int64_t r;
        for (int64_t ch = 0; ch < C; ch++) {
            sdy[ch] = sdyx[ch] = 0;
            md[ch] = (double)k->mean_in[ch];
        }
        r0 = b0 * p->rows;
        r1 = b1 * p->rows < p->outer ? b1 * p->rows : p->outer;
        if (!mode && k->packed) {
            F(packed_grad)(k, r0, r1, md, sdy, sdyx);
            return;
        }
        for (r = r0; r + 4 <= r1; r += 4) {
            const T *restrict x0 = k->x + r * xo, *restrict g0 = k->dy + r * go;
            const T *y0 = mode == 2 ? k->yact + r * yo : g0;
            for (int64_t ch = 0; ch < C; ch++) {
                const T *q = x0 + ch, *g = g0 + ch, *yq = y0 + ch;
                const P m = k->mean_in[ch];
                const P g_0 = LOAD(F(dz)(g, yq, mode)), g_1 = LOAD(F(dz)(g + go, yq + yo, mode));
                const P g_2 = LOAD(F(dz)(g + 2 * go, yq + 2 * yo, mode));
                const P g_3 = LOAD(F(dz)(g + 3 * go, yq + 3 * yo, mode));
                sdy[ch] += (double)((g_0 + g_1) + (g_2 + g_3));
                sdyx[ch] += (double)((g_0 * (LOAD(q[0]) - m) + g_1 * (LOAD(q[xo]) - m)) +
                                     (g_2 * (LOAD(q[2 * xo]) - m) +
                                      g_3 * (LOAD(q[3 * xo]) - m)));
            }
        }
        for (; r < r1; r++) {
            const T *restrict xr = k->x + r * xo, *restrict dyr = k->dy + r * go;
            const T *yr = mode == 2 ? k->yact + r * yo : dyr;
            for (int64_t ch = 0; ch < C; ch++) {
                double g = (double)LOAD(F(dz)(dyr + ch, yr + ch, mode));
                sdy[ch] += g;
                sdyx[ch] += g * ((double)LOAD(xr[ch]) - md[ch]);
            }
        }
        if (k->write_in_reduce)
            for (r = r0; r < r1; r++) {
                const T *restrict dyr = k->dy + r * go;
                const T *yr = mode == 2 ? k->yact + r * yo : dyr;
                T *restrict dxr = k->out + r * k->os.outer;
                for (int64_t ch = 0; ch < C; ch++)
                    dxr[ch * k->os.channel] = STORE(LOAD(F(dz)(dyr + ch, yr + ch, mode)) * k->ca[ch]);
            }
        if (mode && k->dres) /* the rows again, from cache */
            for (r = r0; r < r1; r++) {
                const T *restrict dyr = k->dy + r * go;
                const T *yr = mode == 2 ? k->yact + r * yo : dyr;
                T *restrict drr = k->dres + r * k->drs.outer;
                const int64_t dc = k->drs.channel;
                if (dc == 1) /* the common case, a loop of its own */
                    for (int64_t ch = 0; ch < C; ch++)
                        drr[ch] = F(dz)(dyr + ch, yr + ch, mode);
                else
                    for (int64_t ch = 0; ch < C; ch++)
                        drr[ch * dc] = F(dz)(dyr + ch, yr + ch, mode);
            }
    }
}

BNC_HOT static void F(reduce_grad)(void *vctx, int64_t c, int64_t j, double *part)
{
    F(reduce_grad_t)(vctx, c, j, part, 0);
}
BNC_HOT static void F(reduce_grad_res)(void *vctx, int64_t c, int64_t j, double *part)
{
    F(reduce_grad_t)(vctx, c, j, part, 1);
}
BNC_HOT static void F(reduce_grad_relu)(void *vctx, int64_t c, int64_t j, double *part)
{
    F(reduce_grad_t)(vctx, c, j, part, 2);
}

/* Fold the sums of channels c0..c1-1 in chunk order; store them (reduce
 * kernel), the parameter grads, and the coefficients of the elementwise
 * backward pass (training). */
static void F(finalize_grad)(void *vctx, int64_t c0, int64_t c1, bnc_parts_t p)
{
    F(ctx_t) *k = vctx;
    const int64_t nc = c1 - c0;
    double sdy[BNC_FINAL_CHANNELS] = {0}, sdyx[BNC_FINAL_CHANNELS] = {0};
    const double *base = p.base + c0 * p.channel;
    for (int64_t j = 0; j < k->plan.nchunks; j++) {
        const double *pj = base + j * p.chunk;
        for (int64_t c = 0; c < nc; c++) {
            sdy[c] += pj[c * p.channel];
            sdyx[c] += pj[c * p.channel + p.field];
        }
    }
    for (int64_t c = 0; c < nc; c++) {
        int64_t ch = c0 + c;
        double sx = sdyx[c] * (double)k->invstd_in[ch]; /* sum(dy * xhat) */
        if (k->sum_dy) {
            k->sum_dy[ch] = sdy[c];
            k->sum_dy_xhat[ch] = sx;
        }
        if (k->dweight)
            k->dweight[ch] = (P)sx;
        if (k->dbias)
            k->dbias[ch] = (P)sdy[c];
        if (k->cg)
            F(set_grad_coef)(k, ch, sdy[c], sx, (double)(k->plan.outer * k->plan.inner));
    }
}

/* ---- phase 3: the elementwise passes ---- */

/* y[c] = (x[c] - m[c]) * a[c] + s[c] for c in [0, n). x and y may be the
 * same array. */
static inline void F(norm_row)(const T *x, T *y, int64_t n, const P *restrict m,
                               const P *restrict a, const P *restrict s)
{
    for (int64_t c = 0; c < n; c++)
        y[c] = STORE((LOAD(x[c]) - m[c]) * a[c] + s[c]);
}

/* The interleaved elementwise passes four rows at a time (rows xs, ys, ...
 * elements apart): a row at a time, each value loads its channel's three or
 * four coefficients too, and the loads bound the loop (256x1024 backward:
 * 6 loads and 1 store per vector of values); for four rows the coefficients
 * are loaded once. The same operations as norm_row / the backward's row
 * loop, so the same bits. float32/float64 (the stores are vector stores of
 * P); x and y (dy, dx) may be the same array: a vector's four rows are all
 * loaded before any is stored. BNC_ROWS4(V) runs V(q) for q = 0..3. */
#define BNC_ROWS4(V) V(0) V(1) V(2) V(3)
#if !STAGED
#define BNC_WSTORE(p, v) (*(F(uwvec_t) *)(p) = (v))
static inline void F(norm_rows4)(const P *x, int64_t xs, P *y, int64_t ys, int64_t n,
                                 const P *restrict m, const P *restrict a, const P *restrict s)
{
    int64_t c = 0;
    for (; c + F(WL) <= n; c += F(WL)) {
        const F(wvec_t) mv = BNC_WLOAD(m + c), av = BNC_WLOAD(a + c), sv = BNC_WLOAD(s + c);
#define BNC_R4_LOAD(q) const F(wvec_t) v##q = BNC_WLOAD(x + (q) * xs + c);
#define BNC_R4_STORE(q) BNC_WSTORE(y + (q) * ys + c, (v##q - mv) * av + sv);
        BNC_ROWS4(BNC_R4_LOAD)
        BNC_ROWS4(BNC_R4_STORE)
#undef BNC_R4_LOAD
#undef BNC_R4_STORE
    }
    for (; c < n; c++)
        for (int q = 0; q < 4; q++)
            y[q * ys + c] = (x[q * xs + c] - m[c]) * a[c] + s[c];
}

/* dx = ((dz - a) - (x - m) * g) * s for four rows; dz = dy, or (relu) dy
 * masked to +0 where y <= 0 (relu_grad). */
static BNC_ALWAYS_INLINE void F(grad_rows4)(const P *dy, int64_t gs, const P *y, int64_t ys,
                                            const P *x, int64_t xs, P *dx, int64_t ds,
                                            int64_t n, const P *restrict m,
                                            const P *restrict a, const P *restrict g,
                                            const P *restrict s, const int relu)
{
    typedef __typeof__((F(wvec_t)){0} < (F(wvec_t)){0}) F(wmask_t);
    const F(wvec_t) zero = {0};
    int64_t c = 0;
    for (; c + F(WL) <= n; c += F(WL)) {
        const F(wvec_t) mv = BNC_WLOAD(m + c), av = BNC_WLOAD(a + c), gv = BNC_WLOAD(g + c),
                        sv = BNC_WLOAD(s + c);
#define BNC_R4_LOAD(q)                                                        \
    F(wvec_t) e##q = BNC_WLOAD(dy + (q) * gs + c);                            \
    const F(wvec_t) v##q = BNC_WLOAD(x + (q) * xs + c);                       \
    if (relu)                                                                 \
        e##q = (F(wvec_t))((F(wmask_t))e##q &                                 \
                           ~(F(wmask_t))((F(wvec_t))BNC_WLOAD(y + (q) * ys + c) <= zero));
#define BNC_R4_STORE(q) BNC_WSTORE(dx + (q) * ds + c, ((e##q - av) - (v##q - mv) * gv) * sv);
        BNC_ROWS4(BNC_R4_LOAD)
        BNC_ROWS4(BNC_R4_STORE)
#undef BNC_R4_LOAD
#undef BNC_R4_STORE
    }
    for (; c < n; c++)
        for (int q = 0; q < 4; q++) {
            const P e = relu && y[q * ys + c] <= 0 ? (P)0 : dy[q * gs + c];
            dx[q * ds + c] = ((e - a[c]) - (x[q * xs + c] - m[c]) * g[c]) * s[c];
        }
    (void)zero;
}
#undef BNC_WSTORE
#endif
#undef BNC_ROWS4

/* y[c] = act((x[c] - m[c]) * a[c] + s[c] + r[c]) for c in [0, n),
 * as fuse_p with per-channel coefficients; r may be NULL (then relu is set).
 * x, r and y may be the same array. */
static inline void F(fuse_row)(const T *x, const T *r, T *y, int64_t n, const P *restrict m,
                               const P *restrict a, const P *restrict s, int relu)
{
    int64_t c;
    if (!r)
        for (c = 0; c < n; c++)
            y[c] = STORE(F(relu)((LOAD(x[c]) - m[c]) * a[c] + s[c]));
    else if (relu)
        for (c = 0; c < n; c++)
            y[c] = STORE(F(relu)(((LOAD(x[c]) - m[c]) * a[c] + s[c]) + LOAD(r[c])));
    else
        for (c = 0; c < n; c++)
            y[c] = STORE(((LOAD(x[c]) - m[c]) * a[c] + s[c]) + LOAD(r[c]));
}

/* The normalizing pass over the dense rows [r0, r1) of all channels
 * (channels last, at least a line's worth) with streaming stores, when the
 * call streams (see run_norm): returns 1 if done, 0 to take the row loops
 * (fewer channels: the packed loops). */
static inline int F(stream_rows)(const F(ctx_t) *k, int64_t r0, int64_t r1)
{
#if STAGED
    (void)k, (void)r0, (void)r1;
    return 0;
#else
    const int64_t C = k->plan.channels;
    if (!k->stream || C < 64 / (int64_t)sizeof(T) || k->xs.outer != C || k->os.outer != C ||
        k->os.channel != 1)
        return 0;
    BNC_CAT(bnc_stream_rows_, SFX)(k->out + r0 * C, k->x + r0 * C, (r1 - r0) * C, C, k->cm,
                                   k->ca, k->cb);
    return 1;
#endif
}

/* Forward: y = (x - cm) * ca + cb over a span (see bnc_sweep_t); fused
 * (the fused kernels): y = act(that + res), res and act as in the ctx. */
static BNC_ALWAYS_INLINE void F(apply_norm_t)(void *vctx, int64_t c0, int64_t c1, int64_t r0,
                                              int64_t r1, int64_t i0, int64_t i1,
                                              const int fused)
{
    const F(ctx_t) *k = vctx;
    const P *restrict m = k->cm, *restrict a = k->ca, *restrict s = k->cb;
    const int64_t yc = k->os.channel;
    const int64_t rc = fused && k->res ? k->rs.channel : 1;
    const int relu = fused && k->relu;
    if (!fused && k->plan.interleaved && c0 == 0 && c1 == k->plan.channels &&
        F(stream_rows)(k, r0, r1))
        return;
    /* packed (from x and y alone, as it shapes the reductions too) needs a
     * dense residual as well here; otherwise the row loops below */
    if (k->packed && c0 == 0 && c1 == k->plan.channels &&
        (!fused || !k->res || (k->rs.outer == c1 && k->rs.channel == 1))) {
        /* few channels, whole dense rows: one run, coefficients repeated */
        const int64_t C = c1, L = bnc_pack_lanes(C, r1 - r0), len = (r1 - r0) * C;
        const T *xb = k->x + r0 * C;
        const T *rb = fused && k->res ? k->res + r0 * C : NULL;
        T *yb = k->out + r0 * C;
        P em[BNC_PACK], ea[BNC_PACK], es[BNC_PACK];
        int64_t i;
        F(repeat)(em, m, C, L);
        F(repeat)(ea, a, C, L);
        F(repeat)(es, s, C, L);
        if (fused) {
            for (i = 0; i + L <= len; i += L)
                F(fuse_row)(xb + i, rb ? rb + i : NULL, yb + i, L, em, ea, es, relu);
            F(fuse_row)(xb + i, rb ? rb + i : NULL, yb + i, len - i, em, ea, es, relu);
            return;
        }
        for (i = 0; i + L <= len; i += L)
            F(norm_row)(xb + i, yb + i, L, em, ea, es);
        F(norm_row)(xb + i, yb + i, len - i, em, ea, es);
        return;
    }
    int64_t r = r0;
#if !STAGED
    if (!fused && k->plan.interleaved && yc == 1) /* four rows at a time, then the rest */
        for (; r + 4 <= r1; r += 4)
            F(norm_rows4)(k->x + r * k->xs.outer + c0, k->xs.outer,
                          k->out + r * k->os.outer + c0, k->os.outer, c1 - c0, m + c0, a + c0,
                          s + c0);
#endif
    for (; r < r1; r++) {
        const T *xr = k->x + r * k->xs.outer;
        const T *rr = fused && k->res ? k->res + r * k->rs.outer : NULL;
        T *yr = k->out + r * k->os.outer;
        if (fused && k->plan.interleaved && yc == 1 && rc == 1) /* x, r, y may be the same */
            F(fuse_row)(xr + c0, rr ? rr + c0 : NULL, yr + c0, c1 - c0, m + c0, a + c0,
                        s + c0, relu);
        else if (fused && k->plan.interleaved) /* strided output: rare, per element */
            for (int64_t c = c0; c < c1; c++) {
                P v = (LOAD(xr[c]) - m[c]) * a[c] + s[c];
                v = rr ? v + LOAD(rr[c * rc]) : v;
                yr[c * yc] = STORE(relu ? F(relu)(v) : v);
            }
        else if (fused)
            for (int64_t c = c0; c < c1; c++)
                F(run_fuse)(xr + c * k->xs.channel + i0, rr ? rr + c * rc + i0 : NULL,
                            yr + c * yc + i0, i1 - i0, m[c], a[c], s[c], relu);
        else if (k->plan.interleaved && yc == 1) /* x and y may be the same array */
            F(norm_row)(xr + c0, yr + c0, c1 - c0, m + c0, a + c0, s + c0);
        else if (k->plan.interleaved)
            for (int64_t c = c0; c < c1; c++)
                yr[c * yc] = STORE((LOAD(xr[c]) - m[c]) * a[c] + s[c]);
        else
            for (int64_t c = c0; c < c1; c++)
                F(run_norm)(xr + c * k->xs.channel + i0, yr + c * yc + i0, i1 - i0, m[c],
                            a[c], s[c], k->stream);
    }
}

BNC_HOT static void F(apply_norm)(void *vctx, int64_t c0, int64_t c1, int64_t r0,
                                  int64_t r1, int64_t i0, int64_t i1)
{
    F(apply_norm_t)(vctx, c0, c1, r0, r1, i0, i1, 0);
}
BNC_HOT static void F(apply_fused)(void *vctx, int64_t c0, int64_t c1, int64_t r0,
                                   int64_t r1, int64_t i0, int64_t i1)
{
    F(apply_norm_t)(vctx, c0, c1, r0, r1, i0, i1, 1);
}

/* Backward through batch statistics over a span:
 * dx = ((dz - ca) - (x - cm) * cg) * cb; mode 0: dz = dy; the fused
 * backward: 1, dz read from dres (written by the reduction pass); 2, dz =
 * dy masked by the ReLU read from y (no dres to keep it in). */
static BNC_ALWAYS_INLINE void F(apply_grad_t)(void *vctx, int64_t c0, int64_t c1, int64_t r0,
                                              int64_t r1, int64_t i0, int64_t i1,
                                              const int mode)
{
    const F(ctx_t) *k = vctx;
    const P *restrict m = k->cm, *restrict a = k->ca, *restrict g = k->cg,
            *restrict s = k->cb;
    const int64_t dc = k->os.channel;
    const T *gsrc = mode == 1 ? k->dres : k->dy; /* dz */
    const bnc_strides_t gst = mode == 1 ? k->drs : k->dys;
    if (!mode && k->packed && c0 == 0 && c1 == k->plan.channels) {
        /* few channels, whole dense rows: one run, coefficients repeated */
        const int64_t C = c1, L = bnc_pack_lanes(C, r1 - r0), len = (r1 - r0) * C;
        const T *restrict xb = k->x + r0 * C, *restrict gb = k->dy + r0 * C;
        T *restrict db = k->out + r0 * C;
        P em[BNC_PACK], ea[BNC_PACK], eg[BNC_PACK], es[BNC_PACK];
        int64_t i, j;
        F(repeat)(em, m, C, L);
        F(repeat)(ea, a, C, L);
        F(repeat)(eg, g, C, L);
        F(repeat)(es, s, C, L);
        for (i = 0; i + L <= len; i += L)
            for (j = 0; j < L; j++)
                db[i + j] = STORE(((LOAD(gb[i + j]) - ea[j]) - (LOAD(xb[i + j]) - em[j]) * eg[j]) * es[j]);
        for (j = 0; i < len; i++, j++)
            db[i] = STORE(((LOAD(gb[i]) - ea[j]) - (LOAD(xb[i]) - em[j]) * eg[j]) * es[j]);
        return;
    }
    int64_t r = r0;
#if !STAGED
    /* four rows at a time, unless rows a multiple of 4 KiB apart would put
     * the 12 lines of an iteration in one set of L1 (256x1024 backward:
     * 104 -> 127 us; not in the forward, 2 arrays) */
    const int64_t page = 4096 / (int64_t)sizeof(T);
    if (k->plan.interleaved && dc == 1 && gst.channel == 1 && gst.outer % page &&
        k->xs.outer % page && k->os.outer % page)
        for (; r + 4 <= r1; r += 4)
            F(grad_rows4)(gsrc + r * gst.outer + c0, gst.outer,
                          mode == 2 ? k->yact + r * k->yas.outer + c0 : NULL, k->yas.outer,
                          k->x + r * k->xs.outer + c0, k->xs.outer,
                          k->out + r * k->os.outer + c0, k->os.outer, c1 - c0, m + c0, a + c0,
                          g + c0, s + c0, mode == 2);
#endif
    for (; r < r1; r++) {
        const T *restrict xr = k->x + r * k->xs.outer;
        const T *restrict dyr = gsrc + r * gst.outer;
        const T *yr = mode == 2 ? k->yact + r * k->yas.outer : dyr;
        T *restrict dxr = k->out + r * k->os.outer;
        if (mode == 2 && !k->plan.interleaved) {
            for (int64_t c = c0; c < c1; c++)
                F(run_grad_relu)(dyr + c * gst.channel + i0, yr + c * k->yas.channel + i0,
                                 xr + c * k->xs.channel + i0, dxr + c * dc + i0, i1 - i0,
                                 m[c], a[c], g[c], s[c]);
        } else if (k->plan.interleaved && (mode != 1 || gst.channel == 1)) {
            /* dy's and y's channels are unit-strided in this layout */
            for (int64_t c = c0; c < c1; c++)
                dxr[c * dc] = STORE(((LOAD(F(dz)(dyr + c, yr + c, mode)) - a[c]) -
                                     (LOAD(xr[c]) - m[c]) * g[c]) * s[c]);
        } else if (k->plan.interleaved) { /* dres with strided channels: rare */
            for (int64_t c = c0; c < c1; c++)
                dxr[c * dc] = STORE(((LOAD(dyr[c * gst.channel]) - a[c]) -
                                     (LOAD(xr[c]) - m[c]) * g[c]) * s[c]);
        } else {
            for (int64_t c = c0; c < c1; c++)
                F(run_grad)(dyr + c * gst.channel + i0, xr + c * k->xs.channel + i0,
                            dxr + c * dc + i0, i1 - i0, m[c], a[c], g[c], s[c], k->stream);
        }
    }
}

BNC_HOT static void F(apply_grad)(void *vctx, int64_t c0, int64_t c1, int64_t r0,
                                  int64_t r1, int64_t i0, int64_t i1)
{
    F(apply_grad_t)(vctx, c0, c1, r0, r1, i0, i1, 0);
}
BNC_HOT static void F(apply_grad_dres)(void *vctx, int64_t c0, int64_t c1, int64_t r0,
                                       int64_t r1, int64_t i0, int64_t i1)
{
    F(apply_grad_t)(vctx, c0, c1, r0, r1, i0, i1, 1);
}
BNC_HOT static void F(apply_grad_relu)(void *vctx, int64_t c0, int64_t c1, int64_t r0,
                                       int64_t r1, int64_t i0, int64_t i1)
{
    F(apply_grad_t)(vctx, c0, c1, r0, r1, i0, i1, 2);
}

/* ---- entry points ---- */

/* Allocates the per-channel coefficients: ca only (n = 1), those of the
 * normalizing pass (n = 3: cm, ca, cb) or of the backward (n = 4, + cg). */
static int F(coef_alloc)(F(ctx_t) *k, int n)
{
    int64_t C = k->plan.channels;
    P *buf = malloc(sizeof(P) * (size_t)(C * n));
    if (!buf)
        return BNC_ERR_NOMEM;
    k->ca = buf;
    k->cm = n > 1 ? buf + C : NULL;
    k->cb = n > 1 ? buf + 2 * C : NULL;
    k->cg = n > 3 ? buf + 3 * C : NULL;
    return BNC_OK;
}

static int F(sweep)(F(ctx_t) *k, int width_slab, int width_rows,
                    void (*reduce)(void *, int64_t, int64_t, double *),
                    void (*finalize)(void *, int64_t, int64_t, bnc_parts_t),
                    void (*apply)(void *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t),
                    int n_threads)
{
    bnc_sweep_t s;
    s.plan = &k->plan;
    s.width = reduce ? (k->plan.interleaved ? width_rows : width_slab) : 0;
    s.reduce = reduce;
    s.finalize = finalize;
    s.apply = apply;
    s.ctx = k;
    return bnc_sweep_run(&s, n_threads);
}

int F(bnc_batchnorm_stats)(bnc_dims_t d, const T *x, bnc_strides_t xs, double *mean,
                           double *var, int n_threads)
{
    F(ctx_t) k = {0};
    int st = bnc_check_dims(d, n_threads);
    if (st)
        return st;
    if (!x || !mean || !var)
        return BNC_ERR_NULL;
    bnc_plan_make(&k.plan, d, d.inner == 1 && xs.channel == 1);
    k.packed = bnc_packable(&k.plan, xs, xs, xs);
    k.x = x;
    k.xs = xs;
    k.mean = mean;
    k.var = var;
    return F(sweep)(&k, 3, 6, F(reduce_moments), F(finalize_moments), NULL, n_threads);
}

/* The training forward of batch norm, and of batch renorm when run_mean is
 * given: one sweep, r and d set with the coefficients of each channel as
 * soon as its statistics are final (see finalize_moments). */
static int F(fwd_train)(bnc_dims_t d, const T *x, bnc_strides_t xs, const P *weight,
                        const P *bias, const P *run_mean, const P *run_var, double rmax,
                        double dmax, double eps, const T *res, bnc_strides_t rs, int relu,
                        T *y, bnc_strides_t ys, P *save_mean, P *save_invstd, P *save_var,
                        P *save_r, P *save_d, int n_threads)
{
    F(ctx_t) k = {0};
    int st = bnc_check_dims(d, n_threads);
    if (st)
        return st;
    if (!x || !y)
        return BNC_ERR_NULL;
    if (!(eps > 0) || !isfinite(eps))
        return BNC_ERR_EPS;
    bnc_plan_make(&k.plan, d, d.inner == 1 && xs.channel == 1);
    k.x = x;
    k.xs = xs;
    k.out = y;
    k.os = ys;
    k.packed = bnc_packable(&k.plan, xs, xs, ys);
    k.stream = bnc_stream_wanted(3 * (int64_t)sizeof(T) * d.outer * d.channels * d.inner);
    k.res = res;
    k.rs = rs;
    k.relu = relu;
    k.weight = weight;
    k.bias = bias;
    k.eps = eps;
    k.save_mean = save_mean;
    k.save_invstd = save_invstd;
    k.save_var = save_var;
    k.run_mean = run_mean;
    k.run_var = run_var;
    k.rmax = rmax;
    k.dmax = dmax;
    k.save_r = save_r;
    k.save_d = save_d;
    if ((st = F(coef_alloc)(&k, 3)))
        return st;
    st = F(sweep)(&k, 3, 6, F(reduce_moments), F(finalize_moments),
                  res || relu ? F(apply_fused) : F(apply_norm), n_threads);
    free(k.ca);
    return st;
}

int F(bnc_batchnorm_fwd_train)(bnc_dims_t d, const T *x, bnc_strides_t xs,
                               const P *weight, const P *bias, double eps, T *y,
                               bnc_strides_t ys, P *save_mean, P *save_invstd,
                               P *save_var, int n_threads)
{
    return F(fwd_train)(d, x, xs, weight, bias, NULL, NULL, 1.0, 0.0, eps, NULL, xs, 0, y, ys,
                        save_mean, save_invstd, save_var, NULL, NULL, n_threads);
}

int F(bnc_batchnorm_fwd_train_fused)(bnc_dims_t d, const T *x, bnc_strides_t xs,
                                     const P *weight, const P *bias, double eps,
                                     const T *residual, bnc_strides_t rs, int activation,
                                     T *y, bnc_strides_t ys, P *save_mean, P *save_invstd,
                                     P *save_var, int n_threads)
{
    if (activation != BNC_ACT_NONE && activation != BNC_ACT_RELU)
        return BNC_ERR_ACTIVATION;
    return F(fwd_train)(d, x, xs, weight, bias, NULL, NULL, 1.0, 0.0, eps, residual, rs,
                        activation == BNC_ACT_RELU, y, ys, save_mean, save_invstd, save_var,
                        NULL, NULL, n_threads);
}

int F(bnc_batchrenorm_fwd_train)(bnc_dims_t d, const T *x, bnc_strides_t xs,
                                 const P *weight, const P *bias, const P *running_mean,
                                 const P *running_var, double rmax, double dmax,
                                 double eps, T *y, bnc_strides_t ys, P *save_mean,
                                 P *save_invstd, P *save_var, P *save_r, P *save_d,
                                 int n_threads)
{
    int st = bnc_check_dims(d, n_threads);
    if (st)
        return st;
    if (!running_mean || !running_var)
        return BNC_ERR_NULL;
    if (!(rmax >= 1.0)) /* NaN too; +inf: r unclipped */
        return BNC_ERR_RMAX;
    if (!(dmax >= 0.0))
        return BNC_ERR_DMAX;
    return F(fwd_train)(d, x, xs, weight, bias, running_mean, running_var, rmax, dmax, eps,
                        NULL, xs, 0, y, ys, save_mean, save_invstd, save_var, save_r, save_d,
                        n_threads);
}

static int F(fwd_eval)(bnc_dims_t d, const T *x, bnc_strides_t xs, const P *weight,
                       const P *bias, const P *mean, const P *var, double eps, const T *res,
                       bnc_strides_t rs, int relu, T *y, bnc_strides_t ys, int n_threads)
{
    F(ctx_t) k = {0};
    int st = bnc_check_dims(d, n_threads);
    if (st)
        return st;
    if (!x || !y || !mean || !var)
        return BNC_ERR_NULL;
    if (!(eps > 0) || !isfinite(eps))
        return BNC_ERR_EPS;
    bnc_plan_make(&k.plan, d, d.inner == 1 && xs.channel == 1);
    k.x = x;
    k.xs = xs;
    k.out = y;
    k.os = ys;
    k.packed = bnc_packable(&k.plan, xs, xs, ys);
    k.stream = bnc_stream_wanted(2 * (int64_t)sizeof(T) * d.outer * d.channels * d.inner);
    k.res = res;
    k.rs = rs;
    k.relu = relu;
    if ((st = F(coef_alloc)(&k, 3)))
        return st;
    k.weight = weight;
    k.bias = bias;
    for (int64_t c = 0; c < d.channels; c++)
        F(set_norm_coef)(&k, c, (double)mean[c], 1.0 / sqrt((double)var[c] + eps), 1.0, 0.0);
    st = F(sweep)(&k, 0, 0, NULL, NULL, res || relu ? F(apply_fused) : F(apply_norm),
                  n_threads);
    free(k.ca);
    return st;
}

int F(bnc_batchnorm_fwd_eval)(bnc_dims_t d, const T *x, bnc_strides_t xs,
                              const P *weight, const P *bias, const P *mean,
                              const P *var, double eps, T *y, bnc_strides_t ys,
                              int n_threads)
{
    return F(fwd_eval)(d, x, xs, weight, bias, mean, var, eps, NULL, xs, 0, y, ys, n_threads);
}

int F(bnc_batchnorm_fwd_eval_fused)(bnc_dims_t d, const T *x, bnc_strides_t xs,
                                    const P *weight, const P *bias, const P *mean,
                                    const P *var, double eps, const T *residual,
                                    bnc_strides_t rs, int activation, T *y, bnc_strides_t ys,
                                    int n_threads)
{
    if (activation != BNC_ACT_NONE && activation != BNC_ACT_RELU)
        return BNC_ERR_ACTIVATION;
    return F(fwd_eval)(d, x, xs, weight, bias, mean, var, eps, residual, rs,
                       activation == BNC_ACT_RELU, y, ys, n_threads);
}

/* Shared set-up of the backward kernels. */
static int F(grad_setup)(F(ctx_t) *k, bnc_dims_t d, const T *dy, bnc_strides_t dys,
                         const T *x, bnc_strides_t xs, const P *mean,
                         const P *invstd, int n_threads)
{
    int st = bnc_check_dims(d, n_threads);
    if (st)
        return st;
    if (!dy || !x || !mean || !invstd)
        return BNC_ERR_NULL;
    bnc_plan_make(&k->plan, d, d.inner == 1 && xs.channel == 1 && dys.channel == 1);
    k->packed = bnc_packable(&k->plan, xs, dys, dys);
    k->dy = dy;
    k->dys = dys;
    k->x = x;
    k->xs = xs;
    k->mean_in = mean;
    k->invstd_in = invstd;
    return BNC_OK;
}

/* Both backward kernels: through the batch statistics (train) or with the
 * statistics held constant, where dx = dy * weight * invstd is written in the
 * single reduction pass. */
/* Every backward kernel: through the batch statistics (train) or with the
 * statistics held constant, where dx = dz * weight * invstd is written in the
 * single reduction pass. dz = dy, or dy masked by the ReLU whose output is y
 * (relu); dres (if given) receives dz in the reduction pass, and the
 * elementwise pass reads dz back from it (two arrays, not dy and y). A ReLU
 * needs y; dres needs dx. The fused kernels leave the packed few-channel
 * layout out (packed = 0): their interleaved passes run row by row. */
static int F(bwd_fused)(int train, bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *y,
                        bnc_strides_t ys, int relu, const T *x, bnc_strides_t xs,
                        const P *weight, const P *mean, const P *invstd, T *dx,
                        bnc_strides_t dxs, T *dres, bnc_strides_t drs, P *dweight, P *dbias,
                        int n_threads)
{
    F(ctx_t) k = {0};
    const int mode = relu ? 2 : dres ? 1 : 0, amode = dres ? 1 : relu ? 2 : 0;
    void (*const reduce[3])(void *, int64_t, int64_t, double *) = {
        F(reduce_grad), F(reduce_grad_res), F(reduce_grad_relu)};
    /* the elementwise pass: from dy, from dres, from dy and y */
    void (*const apply[3])(void *, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t) = {F(apply_grad), F(apply_grad_dres), F(apply_grad_relu)};
    int st = F(grad_setup)(&k, d, dy, dys, x, xs, mean, invstd, n_threads);
    if (st)
        return st;
    if ((relu && !y) || (dres && !dx))
        return BNC_ERR_NULL;
    if (relu && k.plan.interleaved && ys.channel != 1) /* the rows read y unit-strided */
        bnc_plan_make(&k.plan, d, 0);
    k.weight = weight;
    k.out = dx;
    k.os = dxs;
    k.packed = !mode && k.packed && (!dx || bnc_packable(&k.plan, xs, dys, dxs));
    k.stream = bnc_stream_wanted(5 * (int64_t)sizeof(T) * d.outer * d.channels * d.inner);
    k.yact = y;
    k.yas = ys;
    k.relu = relu;
    k.dres = dres;
    k.drs = drs;
    k.dweight = dweight;
    k.dbias = dbias;
    if (dx && (st = F(coef_alloc)(&k, train ? 4 : 1)))
        return st;
    if (dx && !train) {
        k.write_in_reduce = 1;
        for (int64_t c = 0; c < d.channels; c++)
            k.ca[c] = (P)((weight ? (double)weight[c] : 1.0) * (double)invstd[c]);
    }
    st = F(sweep)(&k, 2, 3, reduce[mode], F(finalize_grad), dx && train ? apply[amode] : NULL,
                  n_threads);
    free(k.ca);
    return st;
}

static int F(bwd)(int train, bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *x,
                  bnc_strides_t xs, const P *weight, const P *mean, const P *invstd,
                  T *dx, bnc_strides_t dxs, P *dweight, P *dbias, int n_threads)
{
    return F(bwd_fused)(train, d, dy, dys, NULL, dys, 0, x, xs, weight, mean, invstd, dx, dxs,
                        NULL, dxs, dweight, dbias, n_threads);
}

/* The public fused backward: the activation code checked, then bwd_fused. */
static int F(bwd_act)(int train, bnc_dims_t d, const T *dy, bnc_strides_t dys, const T *y,
                      bnc_strides_t ys, int activation, const T *x, bnc_strides_t xs,
                      const P *weight, const P *mean, const P *invstd, T *dx,
                      bnc_strides_t dxs, T *dres, bnc_strides_t drs, P *dweight, P *dbias,
                      int n_threads)
{
    if (activation != BNC_ACT_NONE && activation != BNC_ACT_RELU)
        return BNC_ERR_ACTIVATION;
    if (!dx)
        return BNC_ERR_NULL;
    return F(bwd_fused)(train, d, dy, dys, y, ys, activation == BNC_ACT_RELU, x, xs, weight,
                        mean, invstd, dx, dxs, dres, drs, dweight, dbias, n_threads);
}

int F(bnc_batchnorm_bwd_train_fused)(bnc_dims_t d, const T *dy, bnc_strides_t dys,
                                     const T *y, bnc_strides_t ys, int activation,
                                     const T *x, bnc_strides_t xs, const P *weight,
                                     const P *mean, const P *invstd, T *dx,
                                     bnc_strides_t dxs, T *dresidual, bnc_strides_t drs,
                                     P *dweight, P *dbias, int n_threads)
{
    return F(bwd_act)(1, d, dy, dys, y, ys, activation, x, xs, weight, mean, invstd, dx, dxs,
                      dresidual, drs, dweight, dbias, n_threads);
}

int F(bnc_batchnorm_bwd_eval_fused)(bnc_dims_t d, const T *dy, bnc_strides_t dys,
                                    const T *y, bnc_strides_t ys, int activation,
                                    const T *x, bnc_strides_t xs, const P *weight,
                                    const P *mean, const P *invstd, T *dx,
                                    bnc_strides_t dxs, T *dresidual, bnc_strides_t drs,
                                    P *dweight, P *dbias, int n_threads)
{
    return F(bwd_act)(0, d, dy, dys, y, ys, activation, x, xs, weight, mean, invstd, dx, dxs,
                      dresidual, drs, dweight, dbias, n_threads);
}

int F(bnc_batchnorm_bwd_train)(bnc_dims_t d, const T *dy, bnc_strides_t dys,
                               const T *x, bnc_strides_t xs, const P *weight,
                               const P *mean, const P *invstd, T *dx,
                               bnc_strides_t dxs, P *dweight, P *dbias, int n_threads)
{
    return F(bwd)(1, d, dy, dys, x, xs, weight, mean, invstd, dx, dxs, dweight, dbias,
                  n_threads);
}

int F(bnc_batchnorm_bwd_eval)(bnc_dims_t d, const T *dy, bnc_strides_t dys,
                              const T *x, bnc_strides_t xs, const P *weight,
                              const P *mean, const P *invstd, T *dx,
                              bnc_strides_t dxs, P *dweight, P *dbias, int n_threads)
{
    return F(bwd)(0, d, dy, dys, x, xs, weight, mean, invstd, dx, dxs, dweight, dbias,
                  n_threads);
}

int F(bnc_batchnorm_bwd_reduce)(bnc_dims_t d, const T *dy, bnc_strides_t dys,
                                const T *x, bnc_strides_t xs, const P *mean,
                                const P *invstd, double *sum_dy, double *sum_dy_xhat,
                                int n_threads)
{
    F(ctx_t) k = {0};
    int st = F(grad_setup)(&k, d, dy, dys, x, xs, mean, invstd, n_threads);
    if (st)
        return st;
    if (!sum_dy || !sum_dy_xhat)
        return BNC_ERR_NULL;
    k.sum_dy = sum_dy;
    k.sum_dy_xhat = sum_dy_xhat;
    return F(sweep)(&k, 2, 3, F(reduce_grad), F(finalize_grad), NULL, n_threads);
}

int F(bnc_batchnorm_bwd_elemt)(bnc_dims_t d, const T *dy, bnc_strides_t dys,
                               const T *x, bnc_strides_t xs, const P *weight,
                               const P *mean, const P *invstd, const double *sum_dy,
                               const double *sum_dy_xhat, int64_t count, T *dx,
                               bnc_strides_t dxs, int n_threads)
{
    F(ctx_t) k = {0};
    int st = F(grad_setup)(&k, d, dy, dys, x, xs, mean, invstd, n_threads);
    if (st)
        return st;
    if (!sum_dy || !sum_dy_xhat || !dx)
        return BNC_ERR_NULL;
    if (count < 1)
        return BNC_ERR_COUNT;
    k.out = dx;
    k.os = dxs;
    k.packed = k.packed && bnc_packable(&k.plan, xs, dys, dxs);
    k.weight = weight;
    if ((st = F(coef_alloc)(&k, 4)))
        return st;
    for (int64_t c = 0; c < d.channels; c++)
        F(set_grad_coef)(&k, c, sum_dy[c], sum_dy_xhat[c], (double)count);
    st = F(sweep)(&k, 0, 0, NULL, NULL, F(apply_grad), n_threads);
    free(k.ca);
    return st;
}

#include "body_end.h"
