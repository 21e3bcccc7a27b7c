/*
 * rowsums.h - lane reductions over a contiguous run of P values, for one dtype.
 *
 * Included by the kernel bodies (batchnorm_body.h, layernorm_body.h,
 * groupnorm_body.h)
 * after they define F() and P (it includes lanes.h, whose macros the body
 * undefines at its end).
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

