/*
 * rowsums.h - lane reductions over a contiguous run of P values, column
 * moments of interleaved blocks, and the normalizing run, for one dtype.
 *
 * Included by the kernel bodies (batchnorm_body.h, layernorm_body.h,
 * groupnorm_body.h) after they define F(), T, P and STAGED (it includes
 * lanes.h, whose macros the body undefines at its end).
 */
#include "lanes.h"

/* The lane reductions below work on P values and add to the caller's
 * BNC_LANES double lanes `a` (folded once per row with bnc_lanes_sum). A call
 * flushes its partials at its end: staged rows are cut into chunks that are
 * multiples of BNC_SUB, so every element keeps its lane and its partial. */

/* BNC_STEP adds one group of NL terms to f0..f3 and flushes them to `a`
 * after BNC_SUB / NL groups: partials carry over from row to row. */
#define BNC_STEP(e0, e1, e2, e3)                                              \
    do {                                                                      \
        f0 += (e0);                                                           \
        f1 += (e1);                                                           \
        f2 += (e2);                                                           \
        f3 += (e3);                                                           \
        if (++groups == BNC_SUB / F(NL)) {                                    \
            BNC_FLUSH4(a, f0, f1, f2, f3);                                    \
            groups = 0;                                                       \
        }                                                                     \
    } while (0)

/* a += x - k by lanes over `rows` runs of n elements, xs apart (k a value of
 * the data: exact in P); each run's tail (< NL elements) in double. */
BNC_HOT BNC_NOINLINE static void F(sum_p)(const P *restrict x, int64_t rows, int64_t xs,
                                          int64_t n, P k, double *restrict a)
{
    F(vec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    int groups = 0;
    for (int64_t r = 0; r < rows; r++, x += xs) {
        int64_t i = 0;
        for (; i + F(NL) <= n; i += F(NL))
            BNC_STEP(BNC_VLOAD(x + i) - k, BNC_VLOAD(x + i + F(VL)) - k,
                     BNC_VLOAD(x + i + 2 * F(VL)) - k, BNC_VLOAD(x + i + 3 * F(VL)) - k);
        for (int l = 0; i < n; i++, l++)
            a[l] += (double)x[i] - (double)k;
    }
    BNC_FLUSH4(a, f0, f1, f2, f3);
}

/* a += ((x - k) - m)^2 by lanes, as sum_p: the deviations from k + m, k a
 * value of the data, m the mean of x - k rounded to P (that moves the
 * centre by far less than an ulp of the spread); k = m = 0: the sum of
 * squares. */
BNC_HOT BNC_NOINLINE static void F(sqdev_p)(const P *restrict x, int64_t rows, int64_t xs,
                                            int64_t n, P k, P m, double *restrict a)
{
    F(vec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    int groups = 0;
    for (int64_t r = 0; r < rows; r++, x += xs) {
        int64_t i = 0;
        for (; i + F(NL) <= n; i += F(NL)) {
            F(vec_t) v0 = (BNC_VLOAD(x + i) - k) - m;
            F(vec_t) v1 = (BNC_VLOAD(x + i + F(VL)) - k) - m;
            F(vec_t) v2 = (BNC_VLOAD(x + i + 2 * F(VL)) - k) - m;
            F(vec_t) v3 = (BNC_VLOAD(x + i + 3 * F(VL)) - k) - m;
            BNC_STEP(v0 * v0, v1 * v1, v2 * v2, v3 * v3);
        }
        for (int l = 0; i < n; i++, l++) {
            double v = ((double)x[i] - (double)k) - (double)m;
            a[l] += v * v;
        }
    }
    BNC_FLUSH4(a, f0, f1, f2, f3);
}

/* a += g, b += g * (x - m) by lanes, g = dy * w (w NULL: 1). */
BNC_HOT BNC_NOINLINE __attribute__((unused)) static void F(ln_dots)(const P *restrict dy, const P *restrict x,
                                            const P *restrict w, int64_t n, P m,
                                            double *restrict a, double *restrict b)
{
    F(vec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    F(vec_t) h0 = {0}, h1 = {0}, h2 = {0}, h3 = {0};
    int groups = 0;
    int64_t i = 0;
    for (; i + F(NL) <= n; i += F(NL)) {
        F(vec_t) g0 = BNC_VLOAD(dy + i), g1 = BNC_VLOAD(dy + i + F(VL));
        F(vec_t) g2 = BNC_VLOAD(dy + i + 2 * F(VL)), g3 = BNC_VLOAD(dy + i + 3 * F(VL));
        if (w) {
            g0 *= BNC_VLOAD(w + i);
            g1 *= BNC_VLOAD(w + i + F(VL));
            g2 *= BNC_VLOAD(w + i + 2 * F(VL));
            g3 *= BNC_VLOAD(w + i + 3 * F(VL));
        }
        f0 += g0;
        f1 += g1;
        f2 += g2;
        f3 += g3;
        h0 += g0 * (BNC_VLOAD(x + i) - m);
        h1 += g1 * (BNC_VLOAD(x + i + F(VL)) - m);
        h2 += g2 * (BNC_VLOAD(x + i + 2 * F(VL)) - m);
        h3 += g3 * (BNC_VLOAD(x + i + 3 * F(VL)) - m);
        if (++groups == BNC_SUB / F(NL)) {
            BNC_FLUSH4(a, f0, f1, f2, f3);
            BNC_FLUSH4(b, h0, h1, h2, h3);
            groups = 0;
        }
    }
    BNC_FLUSH4(a, f0, f1, f2, f3);
    BNC_FLUSH4(b, h0, h1, h2, h3);
    for (int l = 0; i < n; i++, l++) { /* the tail, in double */
        double g = (double)(w ? dy[i] * w[i] : dy[i]);
        a[l] += g;
        b[l] += g * ((double)x[i] - (double)m);
    }
}

/* The sum of the VL double lanes of *a, by halving: lane l adds lane
 * l + w for w = VL / 2, ..., 1. */
static inline double F(dvec_sum)(const F(dvec_t) *a)
{
    double t[F(VL)];
    memcpy(t, a, sizeof t);
    for (int w = F(VL) / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++)
            t[l] += t[l + w];
    return t[0];
}

/* Sums over `rows` runs of n >= NL values of P, the runs as apart (and bs
 * for b) elements, with the lanes in registers, for short runs (14x14
 * images: 196 elements), where the double lanes in memory of sum_p, sqdev_p,
 * dot_p and ln_dots cost more to flush and fold than the runs themselves
 * (their fold and tails took three quarters of the time on 196-element
 * runs). By mode:
 *   BNC_RS_DOTS:  *s1 = the sum of a (dy), *s2 = the sum of a * (b - m) (b: x);
 *   BNC_RS_SUM:   *s1 = the sum of a - k (k a value of the data: exact);
 *   BNC_RS_MOM:   *s1 = the sum of a - k, *s2 = the sum of (a - k)^2 (k near
 *                 the mean: see moments_r).
 * Each run is summed in NL lanes of P (element i in lane i % NL), its last
 * t = n % NL elements as a group of their own: the NL elements ending the
 * run, the first NL - t of them masked to +0 (the bits of +0 whatever the
 * data, k and m), and the vectors masked whole left out (adding +0 changes
 * no sum but a -0 one; on 196-element runs that is 25 vectors a run instead
 * of 28). After every BNC_SUB / NL groups (counted across runs) and
 * at the end, the four accumulators are added pairwise in P, (f0 + f2) +
 * (f1 + f3), and the VL lanes converted and added to VL double lanes kept
 * in a register, folded at the end by halving. Each P partial is a tree of
 * depth at most BNC_SUB / NL + 2 (two more roundings than the lanes of
 * sum_p), summed in a fixed order whatever the vector ISA. */
#ifndef BNC_RS_DOTS /* once, not per dtype */
#define BNC_RS_DOTS 0
#define BNC_RS_SUM 1
#define BNC_RS_MOM 2
#endif
static BNC_ALWAYS_INLINE void F(reg_sums_t)(const P *restrict a, int64_t as,
                                            const P *restrict b, int64_t bs, int64_t rows,
                                            int64_t n, P k, P m, double *s1, double *s2,
                                            const int mode)
{
    F(vec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    F(vec_t) h0 = {0}, h1 = {0}, h2 = {0}, h3 = {0};
    F(dvec_t) da = {0}, db = {0};
    int groups = 0;
    /* the tail's masks: lanes l >= lo of the window [n - NL, n) */
    const int64_t full = n - n % F(NL);
    const P lo = (P)(F(NL) - n % F(NL));
    F(vec_t) lane;
    for (int l = 0; l < F(VL); l++)
        lane[l] = (P)l;
    typedef __typeof__(lane < lane) F(mvec_t);
    const F(mvec_t) keep[4] = {lane >= lo, lane + (P)F(VL) >= lo,
                               lane + (P)(2 * F(VL)) >= lo, lane + (P)(3 * F(VL)) >= lo};
    /* v, or v with the lanes of the tail's masks kept (tail: 0 or 1) */
#define BNC_RS_KEEP(v, j, tail) ((tail) ? (F(vec_t))((F(mvec_t))(v) & keep[j]) : (F(vec_t))(v))
    /* one vector j of a group of NL elements at p (a) and q (b) */
#define BNC_RS_ONE(f, h, j, p, q, tail)                                       \
    do {                                                                      \
        if (mode == BNC_RS_DOTS) {                                            \
            const F(vec_t) e_ = BNC_RS_KEEP(BNC_VLOAD((p) + (j) * F(VL)), j, tail); \
            f += e_;                                                          \
            h += e_ * BNC_RS_KEEP(BNC_VLOAD((q) + (j) * F(VL)) - m, j, tail); \
        } else if (mode == BNC_RS_SUM) {                                      \
            f += BNC_RS_KEEP(BNC_VLOAD((p) + (j) * F(VL)) - k, j, tail);      \
        } else { /* BNC_RS_MOM */                                             \
            const F(vec_t) e_ = BNC_RS_KEEP(BNC_VLOAD((p) + (j) * F(VL)) - k, j, tail); \
            f += e_;                                                          \
            h += e_ * e_;                                                     \
        }                                                                     \
    } while (0)
    /* the tail's vectors below `skip` are masked whole: left out */
    const int skip = (int)((F(NL) - n % F(NL)) / F(VL));
#define BNC_RS_GROUP(p, q, tail)                                              \
    do {                                                                      \
        if (!(tail) || skip <= 0)                                             \
            BNC_RS_ONE(f0, h0, 0, p, q, tail);                                \
        if (!(tail) || skip <= 1)                                             \
            BNC_RS_ONE(f1, h1, 1, p, q, tail);                                \
        if (!(tail) || skip <= 2)                                             \
            BNC_RS_ONE(f2, h2, 2, p, q, tail);                                \
        BNC_RS_ONE(f3, h3, 3, p, q, tail);                                    \
        if (++groups == BNC_SUB / F(NL)) {                                    \
            BNC_PFOLD(da, f);                                                 \
            if (mode == BNC_RS_DOTS || mode == BNC_RS_MOM)                    \
                BNC_PFOLD(db, h);                                             \
            groups = 0;                                                       \
        }                                                                     \
    } while (0)
    for (int64_t r = 0; r < rows; r++, a += as, b += bs) {
        for (int64_t i = 0; i < full; i += F(NL))
            BNC_RS_GROUP(a + i, b + i, 0);
        if (full < n)
            BNC_RS_GROUP(a + n - F(NL), b + n - F(NL), 1);
    }
#undef BNC_RS_GROUP
#undef BNC_RS_ONE
#undef BNC_RS_KEEP
    BNC_PFOLD(da, f);
    *s1 = F(dvec_sum)(&da);
    if (mode == BNC_RS_DOTS || mode == BNC_RS_MOM) {
        BNC_PFOLD(db, h);
        *s2 = F(dvec_sum)(&db);
    }
    (void)h0, (void)h1, (void)h2, (void)h3, (void)s2;
}

/* The three modes of reg_sums_t, functions of their own (inlined into the
 * kernels they would lose their registers to the callers' values). */
BNC_HOT BNC_NOINLINE __attribute__((unused)) static void
F(dots_sum)(const P *restrict dy, int64_t gs, const P *restrict x, int64_t xs, int64_t rows,
            int64_t n, P m, double *sdy, double *sdx)
{
    F(reg_sums_t)(dy, gs, x, xs, rows, n, 0, m, sdy, sdx, BNC_RS_DOTS);
}
BNC_HOT BNC_NOINLINE __attribute__((unused)) static double
F(sum_r)(const P *restrict x, int64_t xs, int64_t rows, int64_t n, P k)
{
    double s;
    F(reg_sums_t)(x, xs, x, xs, rows, n, k, 0, &s, NULL, BNC_RS_SUM);
    return s;
}

/* The moments of `rows` runs of n >= NL values (xs apart), in one pass:
 * *mean = the mean of x - K (K a value of the data), *m2 = the sum of the
 * squared deviations from the mean. The pass sums x - k and (x - k)^2 about
 * k = K + the mean of x - K over the first quarter of the values (the first
 * quarter of the runs, or of a lone run), rounded to P. By Cauchy-Schwarz,
 * the mean of a quarter of the values lies within sqrt(3) standard
 * deviations of the mean of all, so the sum of squares about k is at most 4
 * times M2 and m2 = sum2 - sum1^2 / count loses at most a factor 4 to
 * cancellation, whatever the data (an outlying first run included). That
 * is 3.5 operations per value instead of the 5 of summing and then taking
 * squared deviations from it, where a block in cache is bound by
 * arithmetic. */
static inline void F(moments_r)(const P *restrict x, int64_t xs, int64_t rows, int64_t n, P K,
                                double *mean, double *m2)
{
    const int64_t qr = rows > 1 ? (rows + 3) / 4 : 1;
    int64_t qn = rows > 1 ? n : (n + 3) / 4;
    double s1, s2, d;
    qn = qn < F(NL) ? F(NL) : qn; /* n >= NL */
    P k = (P)((double)K + F(sum_r)(x, xs, qr, qn, K) / (double)(qr * qn));
    k = k - k == 0 ? k : K; /* an inf among the quarter: about K, so the mean is inf */
    F(reg_sums_t)(x, xs, x, xs, rows, n, k, 0, &s1, &s2, BNC_RS_MOM);
    d = s1 / (double)(rows * n);
    *mean = ((double)k - (double)K) + d;
    *m2 = s2 - s1 * d;
    *m2 = *m2 < 0 ? 0 : *m2; /* rounding only; NaN stays */
}

/* Column moments of an interleaved block: `rows` rows of n channels, row r
 * at x + r * stride. Per channel c: s1[c] = the sum of x - k[c] and s2[c] =
 * the sum of (x - k[c])^2, summed in row order in P (the caller keeps blocks
 * short and k near the mean). Channels go 4 * WL at a time with the sums in
 * registers (one load per element), then WL, then one by one: the sums of a
 * channel are the same whichever way they are taken. (Not every body uses it
 * for every dtype: hence `unused`.) */
__attribute__((unused)) BNC_HOT BNC_NOINLINE static void
F(col_moments)(const P *restrict x, int64_t rows, int64_t stride, int64_t n, const P *restrict kc,
               P *restrict s1, P *restrict s2)
{
    int64_t c = 0;
    for (; c + 4 * F(WL) <= n; c += 4 * F(WL)) {
        const P *q = x + c;
        const F(wvec_t) k0 = BNC_WLOAD(kc + c), k1 = BNC_WLOAD(kc + c + F(WL)),
                        k2 = BNC_WLOAD(kc + c + 2 * F(WL)), k3 = BNC_WLOAD(kc + c + 3 * F(WL));
        F(wvec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
        F(wvec_t) g0 = {0}, g1 = {0}, g2 = {0}, g3 = {0};
        for (int64_t r = 0; r < rows; r++, q += stride) {
            const F(wvec_t) v0 = BNC_WLOAD(q) - k0, v1 = BNC_WLOAD(q + F(WL)) - k1;
            const F(wvec_t) v2 = BNC_WLOAD(q + 2 * F(WL)) - k2;
            const F(wvec_t) v3 = BNC_WLOAD(q + 3 * F(WL)) - k3;
            f0 += v0;
            f1 += v1;
            f2 += v2;
            f3 += v3;
            g0 += v0 * v0;
            g1 += v1 * v1;
            g2 += v2 * v2;
            g3 += v3 * v3;
        }
        memcpy(s1 + c, &f0, sizeof f0);
        memcpy(s1 + c + F(WL), &f1, sizeof f1);
        memcpy(s1 + c + 2 * F(WL), &f2, sizeof f2);
        memcpy(s1 + c + 3 * F(WL), &f3, sizeof f3);
        memcpy(s2 + c, &g0, sizeof g0);
        memcpy(s2 + c + F(WL), &g1, sizeof g1);
        memcpy(s2 + c + 2 * F(WL), &g2, sizeof g2);
        memcpy(s2 + c + 3 * F(WL), &g3, sizeof g3);
    }
    for (; c + F(WL) <= n; c += F(WL)) {
        const P *q = x + c;
        const F(wvec_t) k0 = BNC_WLOAD(kc + c);
        F(wvec_t) f0 = {0}, g0 = {0};
        for (int64_t r = 0; r < rows; r++, q += stride) {
            const F(wvec_t) v0 = BNC_WLOAD(q) - k0;
            f0 += v0;
            g0 += v0 * v0;
        }
        memcpy(s1 + c, &f0, sizeof f0);
        memcpy(s2 + c, &g0, sizeof g0);
    }
    const int64_t c0 = c;
    for (; c < n; c++)
        s1[c] = s2[c] = 0;
    for (int64_t r = 0; r < rows; r++) {
        const P *restrict q = x + r * stride;
        for (c = c0; c < n; c++) {
            const P v = q[c] - kc[c];
            s1[c] += v;
            s2[c] += v * v;
        }
    }
}

/* Column moments of a block as col_moments, for any number of rows: d1[c]
 * = the sum of x - k[c], d2[c] = the sum of (x - k[c])^2, BNC_COLSUB rows at
 * a time in P (s1, s2: n values of scratch), added up in double. */
__attribute__((unused)) static void F(col_moments_d)(const P *x, int64_t rows, int64_t stride,
                                                     int64_t n, const P *k, P *restrict s1,
                                                     P *restrict s2, double *restrict d1,
                                                     double *restrict d2)
{
    for (int64_t r = 0; r < rows; r += BNC_COLSUB) {
        const int64_t m = rows - r < BNC_COLSUB ? rows - r : BNC_COLSUB;
        F(col_moments)(x + r * stride, m, stride, n, k, s1, s2);
        for (int64_t c = 0; c < n; c++) {
            d1[c] = r ? d1[c] + (double)s1[c] : (double)s1[c];
            d2[c] = r ? d2[c] + (double)s2[c] : (double)s2[c];
        }
    }
}

/* The shift k for the one-pass sums of a first block of `rows` rows (the
 * later blocks take the running mean): k[c] += the mean of x - k[c] over
 * the block's first quarter of rows (at least min(rows, BNC_COLSUB)), a
 * short pass while the block is read from memory. By Cauchy-Schwarz, the
 * mean of a quarter of a block lies within 2 standard deviations of the
 * block's mean, so the sums about it lose at most a factor 5 to
 * cancellation over sums about the block's own mean, whatever the data (an
 * outlying first row included); that the quarter's mean is summed in P
 * only moves k a little further. s1, s2: n values of scratch. */
__attribute__((unused)) static void F(first_shift)(const P *x, int64_t rows, int64_t stride,
                                                   int64_t n, P *k, P *s1, P *s2)
{
    int64_t q = (rows + 3) / 4;
    q = q < BNC_COLSUB ? (rows < BNC_COLSUB ? rows : BNC_COLSUB) : q;
    F(col_moments)(x, q, stride, n, k, s1, s2);
    for (int64_t c = 0; c < n; c++)
        k[c] = (P)((double)k[c] + (double)s1[c] / (double)q);
}

/* y = (x - m) * a + s over a run of n values of T, in P (x and y may be the
 * same array): the normalizing pass of batch norm (slab layout) and group
 * norm (NCHW). float16 converts in registers (bnc_f16_norm: the bits of
 * converting, computing in float and converting back); stream: y is written
 * with streaming stores (bnc_stream_norm, bnc_f16_norm; the same bits). */
static inline void F(run_norm)(const T *x, T *y, int64_t n, P m, P a, P s, int stream)
{
#if STAGED
    bnc_f16_norm(y, x, n, m, a, s, stream);
#else
    if (stream)
        BNC_CAT(bnc_stream_norm_, SFX)(y, x, n, m, a, s);
    else
        for (int64_t i = 0; i < n; i++)
            y[i] = (x[i] - m) * a + s;
#endif
}

