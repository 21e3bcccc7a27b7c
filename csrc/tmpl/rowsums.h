/*
 * rowsums.h - lane reductions over a contiguous run of P values, for one dtype.
 *
 * Included by the row-wise kernel bodies (layernorm_body.h, groupnorm_body.h)
 * after they define F() and P (it includes lanes.h, whose macros the body
 * undefines at its end).
 */
#include "lanes.h"

/* The lane reductions below work on P values and add to the caller's
 * BNC_LANES double lanes `a` (folded once per row with bnc_lanes_sum). A call
 * flushes its partials at its end: staged rows are cut into chunks that are
 * multiples of BNC_SUB, so every element keeps its lane and its partial. */

/* a += x - k by lanes, k a value of the row (exact in P). */
BNC_HOT BNC_NOINLINE static void F(ln_sum)(const P *restrict x, int64_t n, P k,
                                           double *restrict a)
{
    F(vec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    int groups = 0;
    int64_t i = 0;
    for (; i + F(NL) <= n; i += F(NL)) {
        f0 += BNC_VLOAD(x + i) - k;
        f1 += BNC_VLOAD(x + i + F(VL)) - k;
        f2 += BNC_VLOAD(x + i + 2 * F(VL)) - k;
        f3 += BNC_VLOAD(x + i + 3 * F(VL)) - k;
        if (++groups == BNC_SUB / F(NL)) {
            BNC_FLUSH4(a, f0, f1, f2, f3);
            groups = 0;
        }
    }
    BNC_FLUSH4(a, f0, f1, f2, f3);
    for (int l = 0; i < n; i++, l++) /* the tail, in double */
        a[l] += (double)x[i] - (double)k;
}

/* a += ((x - k) - m)^2 by lanes; k = m = 0 gives the sum of squares. */
BNC_HOT BNC_NOINLINE static void F(ln_sqdev)(const P *restrict x, int64_t n, P k, P m,
                                             double *restrict a)
{
    F(vec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    int groups = 0;
    int64_t i = 0;
    for (; i + F(NL) <= n; i += F(NL)) {
        F(vec_t) v0 = (BNC_VLOAD(x + i) - k) - m;
        F(vec_t) v1 = (BNC_VLOAD(x + i + F(VL)) - k) - m;
        F(vec_t) v2 = (BNC_VLOAD(x + i + 2 * F(VL)) - k) - m;
        F(vec_t) v3 = (BNC_VLOAD(x + i + 3 * F(VL)) - k) - m;
        f0 += v0 * v0;
        f1 += v1 * v1;
        f2 += v2 * v2;
        f3 += v3 * v3;
        if (++groups == BNC_SUB / F(NL)) {
            BNC_FLUSH4(a, f0, f1, f2, f3);
            groups = 0;
        }
    }
    BNC_FLUSH4(a, f0, f1, f2, f3);
    for (int l = 0; i < n; i++, l++) { /* the tail, in double */
        double v = ((double)x[i] - (double)k) - (double)m;
        a[l] += v * v;
    }
}

/* a += g, b += g * (x - m) by lanes, g = dy * w (w NULL: 1). */
BNC_HOT BNC_NOINLINE static void F(ln_dots)(const P *restrict dy, const P *restrict x,
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

