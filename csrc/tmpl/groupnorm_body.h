/*
 * groupnorm_body.h - group norm kernels, written once per dtype.
 *
 * groupnorm.c includes this file once per dtype after defining T (storage),
 * P (arithmetic, weight/bias/statistics type), SFX, LOAD(v) (a T as P) and
 * STAGED (1: float16, converted to float in chunks or rows; 0: T is P, read
 * in place), and undefines them at its end.
 *
 * x is N images of C channels and HW positions, channels first (NCHW: element
 * (n, c, i) at (n * C + c) * HW + i) or channels last (NHWC: at
 * (n * HW + i) * C + c). The C channels form G groups of Cg = C / G
 * contiguous channels; statistics are per (n, g) over Cg * HW elements.
 *
 * NCHW: each (n, g) is one contiguous run of Cg * HW elements, summed with the
 * layer norm lane reductions (rowsums.h), then read again for the squared
 * deviations and the output while in cache. Work items are the N * G runs;
 * the forward sums up to 512 KiB of consecutive runs before going back to
 * the first for the rest (gn_fwd_nchw: the memory reads come in one long
 * stream). The backward sums dy and dy * (x - mean) per channel with
 * dots_sum (rowsums.h: lanes kept in registers, for short runs).
 * Both layouts write y = (x - mean) * (weight * invstd) + bias, the scale
 * rounded once per channel and the mean's low part folded into the bias.
 * NHWC: work items are the N images; each is HW rows of C contiguous channels,
 * reduced per channel block by block of rows in one pass (sums of x - k and
 * (x - k)^2 in P, k tracking the channel's running mean), merged per channel
 * in double (Chan et al.), and the Cg channels of a group merged in channel
 * order. The backward sums per channel in P for at most BNC_SUB rows, then in
 * double.
 * Items are split statically over threads and nothing is shared between
 * items, so results do not depend on n_threads. Backward: the per-(n, c) sums
 * of dy and dy * xhat go to an N x C x 2 array of doubles, and dweight/dbias
 * add them over n in order after the parallel region.
 * Instance norm is the case G = C (bnc_instancenorm_*: the same kernels, with
 * the variance saved, and a backward for constant statistics).
 * Scratch: backward 16 * N * C bytes; NHWC also C * (16 + 8 * sizeof(P))
 * bytes and a block of rows (about 4096 P values) per thread.
 */

#define F(name) BNC_CAT(name, BNC_CAT(_, SFX))

#include "rowsums.h"

typedef struct {
    int64_t N, C, HW, G, Cg;
    int cl;
    const T *x, *dy;
    const P *weight, *bias, *mean, *invstd;
    double eps;
    T *y; /* the output, or dx in the backward */
    P *save_mean, *save_invstd, *save_var;
    int frozen;     /* backward: mean and invstd are constants (instance norm's
                       running statistics), dx = dy * weight * invstd */
    double *parts;  /* backward: N x C x 2 (sum dy, sum dy * xhat) */
    int stream;     /* forward: the output is streamed (run_norm, bnc_stream_rows) */
    char *scratch;  /* NHWC: per-thread C-length arrays */
    size_t scratch_bytes;
} F(gctx_t);

/* Statistics of one group from its sums: mu = mean of (x - k), ss = sum of
 * squared deviations about (P)mu; returns (mean, biased var, invstd) as layer
 * norm does. */
static inline void F(gn_stats)(double mu, double ss, double n, P k, double eps,
                               double *mean, double *var, double *invstd)
{
    double d = mu - (double)(P)mu;
    double v = ss / n - d * d;
    if (v < 0)
        v = 0;
    *mean = (double)k + mu;
    *var = v;
    *invstd = 1.0 / sqrt(v + eps);
}

/* Stores the statistics of item j (a (n, g) pair) where they are asked for. */
static inline void F(gn_save)(const F(gctx_t) *k, int64_t j, P mean, double var, P invstd)
{
    if (k->save_mean)
        k->save_mean[j] = mean;
    if (k->save_invstd)
        k->save_invstd[j] = invstd;
    if (k->save_var)
        k->save_var[j] = (P)var;
}

/* Staging (float16): runs are converted to P in chunks of GN_STAGE elements
 * (a multiple of BNC_SUB, so the lane sums do not depend on the chunking);
 * GN_IN gives P values of a run, GN_OUT where to compute a result, GN_PUT
 * stores it. float32/float64 read and write in place, in one chunk. */
#if STAGED
#define GN_STAGE 512
#define GN_IN(buf, src, n) (bnc_f16_load((buf), (src), (n)), (const P *)(buf))
#define GN_OUT(buf, dst) (buf)
#define GN_PUT(dst, buf, n) bnc_f16_store((dst), (buf), (n))
#else
#define GN_STAGE 1
#define GN_IN(buf, src, n) ((void)(buf), (const P *)(src))
#define GN_OUT(buf, dst) ((void)(buf), (dst))
#define GN_PUT(dst, buf, n) ((void)0)
#endif
/* for (o, c_) over the chunks of a run of n elements */
#define GN_CHUNKS(n)                                                            \
    for (int64_t o = 0, c_; c_ = !STAGED || (n) - o < GN_STAGE ? (n) - o : GN_STAGE, o < (n); \
         o += c_)

/* ---- NCHW ---- */

/* Whether item j (L values) is reduced as one chunk with the lanes in
 * registers: in one pass (moments_r), its M2 with its sums. */
#define GN_ONE_CHUNK(L) ((!STAGED || (L) <= GN_STAGE) && (L) >= F(NL))

/* Item j's sums of x - kx (kx its first value): mu = their mean; one chunk:
 * m2 = the squared deviations from it too. */
static BNC_ALWAYS_INLINE void F(gn_sum_nchw)(const F(gctx_t) *k, int64_t j, P *kx, double *mu,
                                             double *m2)
{
    const int64_t L = k->Cg * k->HW;
    const T *x = k->x + j * L;
    P bx[GN_STAGE];
    double a1[BNC_LANES] = {0};
    *kx = LOAD(x[0]);
    if (GN_ONE_CHUNK(L)) {
        F(moments_r)(GN_IN(bx, x, L), 0, 1, L, *kx, mu, m2);
        return;
    }
    GN_CHUNKS(L) F(sum_p)(GN_IN(bx, x + o, c_), 1, 0, c_, *kx, a1);
    *mu = bnc_lanes_sum(a1) / (double)L;
    *m2 = 0; /* taken by gn_norm_nchw */
}

/* Item j's statistics (chunked: its squared deviations first) and output,
 * given its sums. */
static BNC_ALWAYS_INLINE void F(gn_norm_nchw)(const F(gctx_t) *k, int64_t j, P kx, double mu,
                                              double m2)
{
    const int64_t HW = k->HW, L = k->Cg * HW, c0 = (j % k->G) * k->Cg;
    const T *x = k->x + j * L;
    T *y = k->y + j * L;
    P bx[GN_STAGE];
    double a2[BNC_LANES] = {0};
    double mean, var, invstd;
    if (GN_ONE_CHUNK(L)) {
        mean = (double)kx + mu;
        var = m2 / (double)L;
        invstd = 1.0 / sqrt(var + k->eps);
    } else {
        GN_CHUNKS(L) F(sqdev_p)(GN_IN(bx, x + o, c_), 1, 0, c_, kx, (P)mu, a2);
        F(gn_stats)(mu, bnc_lanes_sum(a2), (double)L, kx, k->eps, &mean, &var, &invstd);
    }
    const P cm = (P)mean;
    F(gn_save)(k, j, cm, var, (P)invstd);
    for (int64_t c = 0; c < k->Cg; c++) {
        /* y = (x - cm) * a + b: a = weight * invstd rounded once, and the
         * mean's low part in b, as in the NHWC pass */
        const P a = (P)((k->weight ? (double)k->weight[c0 + c] : 1.0) * invstd);
        const P b = (P)bnc_fold_low(k->bias ? (double)k->bias[c0 + c] : 0.0,
                                    mean - (double)cm, (double)a);
        F(run_norm)(x + c * HW, y + c * HW, HW, cm, a, b, k->stream);
    }
}

/* The forward of items [j0, j1), GN_UNIT groups at a time: first the sums
 * of each group of a unit (one sequential read of up to 512 KiB, which the
 * hardware prefetches at full speed and which then stays in L2), then each
 * group's squared deviations and output from cache. Each group's results
 * are those of taking it alone. */
#define GN_UNIT 64
BNC_HOT static void F(gn_fwd_nchw)(const F(gctx_t) *k, int64_t j0, int64_t j1)
{
    int64_t u = ((int64_t)512 * 1024 / (int64_t)sizeof(T)) / (k->Cg * k->HW);
    u = u < 1 ? 1 : u > GN_UNIT ? GN_UNIT : u;
    for (int64_t j = j0; j < j1; j += u) {
        const int64_t e = j + u < j1 ? j + u : j1;
        P kx[GN_UNIT];
        double mu[GN_UNIT], m2[GN_UNIT];
        for (int64_t q = j; q < e; q++)
            F(gn_sum_nchw)(k, q, kx + (q - j), mu + (q - j), m2 + (q - j));
        for (int64_t q = j; q < e; q++)
            F(gn_norm_nchw)(k, q, kx[q - j], mu[q - j], m2[q - j]);
    }
}

/* The backward of item j: per channel, the sums of dy and dy * (x - mean)
 * (dots_sum for runs of NL or more elements), then dx while the group is
 * in L1. (Prefetching dx's lines for writing during the sums was measured:
 * no steady gain.) */
BNC_HOT static void F(gn_bwd_nchw)(const F(gctx_t) *k, int64_t j)
{
    const int64_t HW = k->HW, L = k->Cg * HW, n = j / k->G, c0 = (j % k->G) * k->Cg;
    const T *x = k->x + j * L, *dy = k->dy + j * L;
    const P m = k->mean[j], s = k->invstd[j];
    double *pc = k->parts + (n * k->C + c0) * 2;
    P bx[GN_STAGE], bg[GN_STAGE], bd[GN_STAGE];
    double A = 0, B = 0;
    for (int64_t c = 0; c < k->Cg; c++) {
        double sdy, sdx;
        if ((!STAGED || HW <= GN_STAGE) && HW >= F(NL)) { /* one chunk of NL or more */
            F(dots_sum)(GN_IN(bg, dy + c * HW, HW), 0, GN_IN(bx, x + c * HW, HW), 0, 1, HW, m,
                        &sdy, &sdx);
        } else {
            double a1[BNC_LANES] = {0}, a2[BNC_LANES] = {0};
            GN_CHUNKS(HW)
            F(ln_dots)(GN_IN(bg, dy + c * HW + o, c_), GN_IN(bx, x + c * HW + o, c_), NULL,
                       c_, m, a1, a2);
            sdy = bnc_lanes_sum(a1);
            sdx = bnc_lanes_sum(a2);
        }
        const double w = k->weight ? (double)k->weight[c0 + c] : 1.0;
        pc[2 * c] = sdy;
        pc[2 * c + 1] = sdx * (double)s;
        A += w * sdy;
        B += w * sdx;
    }
    if (!k->y)
        return;
    const P ca = (P)(A / (double)L), cg = (P)((double)s * (double)s * B / (double)L);
    for (int64_t c = 0; c < k->Cg; c++) {
        const P w = k->weight ? k->weight[c0 + c] : (P)1;
        T *dx = k->y + j * L + c * HW;
        GN_CHUNKS(HW) {
            const P *xc = GN_IN(bx, x + c * HW + o, c_), *gc = GN_IN(bg, dy + c * HW + o, c_);
            P *dc = GN_OUT(bd, dx + o);
            if (k->frozen)
                for (int64_t i = 0; i < c_; i++)
                    dc[i] = (gc[i] * w) * s;
            else
                for (int64_t i = 0; i < c_; i++)
                    dc[i] = ((gc[i] * w - ca) - (xc[i] - m) * cg) * s;
            GN_PUT(dx + o, bd, c_);
        }
    }
}

/* ---- NHWC ---- */

/* The forward's statistics are taken block by block: a block is the rows
 * [r0, r0 + rows) of an image, rows = F(gn_rows)(C) (about 4096 elements, 8
 * to 64 rows), depending only on C. Per channel, one pass over the block
 * sums x - k and (x - k)^2 in P, k being the channel's running mean so far
 * rounded to P (for the first block, first_shift in rowsums.h); the block's
 * mean and squared deviations follow in double and are merged into the
 * image's per-channel moments with Chan et al.'s formula. As k tracks the
 * mean, the block sums lose little to cancellation (at most a small factor
 * over the two-pass block sums, whatever |mean| / std). x is read from
 * memory once for the statistics, once more for the output.
 * A block's sums stay in P for all its rows (up to 64), where batch norm's
 * channels-last sums go to double every BNC_COLSUB rows (col_moments_d):
 * here every block goes to double at once, and converting every 16 rows
 * made this forward 5-15% slower (C = 128, 256) for an accuracy that the
 * group norm tests do not need (batch norm's tighter bounds do). */
static inline int64_t F(gn_rows)(int64_t C)
{
    int64_t r = 4096 / C;
    return r < 8 ? 8 : r > 64 ? 64 : r;
}

/* Per-thread arrays: C elements each, bx a block of rows (the float16 block
 * in P, or a row of x in the elementwise passes). */
typedef struct {
    double *d1, *d2;
    P *p1, *p2, *k, *m, *cl, *a;
    P *bx, *bg, *bo; /* float16: x, dy, the output in P */
} F(gscr_t);

static size_t F(gn_scratch_bytes)(int64_t C)
{
    size_t b = (size_t)C * (2 * sizeof(double) + 8 * sizeof(P)) +
               (size_t)(F(gn_rows)(C) * C) * sizeof(P);
    return (b + 63) / 64 * 64;
}

static F(gscr_t) F(gn_scratch)(const F(gctx_t) *k, int64_t t)
{
    const int64_t C = k->C;
    F(gscr_t) r;
    char *base = k->scratch + (size_t)t * k->scratch_bytes;
    r.d1 = (double *)base;
    r.d2 = r.d1 + C;
    r.p1 = (P *)(r.d2 + C);
    r.p2 = r.p1 + C;
    r.k = r.p2 + C;
    r.m = r.k + C;
    r.cl = r.m + C;
    r.a = r.cl + C;
    r.bg = r.a + C;
    r.bo = r.bg + C;
    r.bx = r.bo + C;
    return r;
}

static inline void F(gn_flush)(double *restrict d, P *restrict p, int64_t n)
{
    for (int64_t c = 0; c < n; c++) {
        d[c] += (double)p[c];
        p[c] = 0;
    }
}

BNC_HOT static void F(gn_fwd_nhwc)(const F(gctx_t) *k, int64_t n, F(gscr_t) r)
{
    const int64_t C = k->C, HW = k->HW, G = k->G, Cg = k->Cg, R = F(gn_rows)(C);
    const double L = (double)(Cg * HW);
    const T *x = k->x + n * HW * C;
    T *y = k->y + n * HW * C;
    /* per channel: d1 = the mean so far, d2 = M2, k = the shift (for the
     * first block, see first_shift) */
    for (int64_t c = 0; c < C; c++) {
        r.k[c] = LOAD(x[c]);
        r.d1[c] = r.d2[c] = 0;
    }
    for (int64_t r0 = 0; r0 < HW; r0 += R) {
        const int64_t rows = HW - r0 < R ? HW - r0 : R;
        const P *xb = GN_IN(r.bx, x + r0 * C, rows * C);
        if (r0 == 0)
            F(first_shift)(xb, rows, C, C, r.k, r.p1, r.p2);
        F(col_moments)(xb, rows, C, C, r.k, r.p1, r.p2);
        const double na = (double)r0, nb = (double)rows, nab = na + nb;
        for (int64_t c = 0; c < C; c++) { /* Chan et al.: merge the block */
            const double s1 = (double)r.p1[c], bm = s1 / nb;
            double m2 = (double)r.p2[c] - s1 * bm;
            m2 = m2 < 0 ? 0 : m2;
            const double delta = ((double)r.k[c] - r.d1[c]) + bm;
            r.d1[c] += delta * (nb / nab);
            r.d2[c] += m2 + delta * delta * (na * nb / nab);
            r.k[c] = (P)r.d1[c];
        }
    }
    for (int64_t g = 0; g < G; g++) {
        double mean = 0, m2 = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++)
            mean += r.d1[c];
        mean /= (double)Cg;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
            const double d = r.d1[c] - mean;
            m2 += r.d2[c] + (double)HW * d * d;
        }
        const double var = m2 / L;
        const double invstd = 1.0 / sqrt(var + k->eps);
        const P cm = (P)mean;
        const double cl = mean - (double)cm;
        F(gn_save)(k, n * G + g, cm, var, (P)invstd);
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
            /* y = (x - cm) * a + b with a = weight * invstd rounded once,
             * b = bias - cl * a: the low part of the mean goes into b */
            const P a = (P)((k->weight ? (double)k->weight[c] : 1.0) * invstd);
            r.m[c] = cm;
            r.a[c] = a;
            r.p1[c] = (P)bnc_fold_low(k->bias ? (double)k->bias[c] : 0.0, cl, (double)a);
        }
    }
    const P *restrict mc = r.m, *restrict ac = r.a, *restrict bc = r.p1;
#if !STAGED
    if (k->stream && C >= 64 / (int64_t)sizeof(T)) { /* the rows below, streamed */
        BNC_CAT(bnc_stream_rows_, SFX)(y, x, HW * C, C, mc, ac, bc);
        return;
    }
#endif
    for (int64_t i = 0; i < HW; i++) {
        const P *xi = GN_IN(r.bx, x + i * C, C); /* y may be x */
        P *yi = GN_OUT(r.bo, y + i * C);
        int64_t c = 0;
        for (; c + F(WL) <= C; c += F(WL)) { /* each vector read before it is written */
            const F(wvec_t) v = (BNC_WLOAD(xi + c) - BNC_WLOAD(mc + c)) * BNC_WLOAD(ac + c) +
                                BNC_WLOAD(bc + c);
            memcpy(yi + c, &v, sizeof v);
        }
        for (; c < C; c++)
            yi[c] = (xi[c] - mc[c]) * ac[c] + bc[c];
        GN_PUT(y + i * C, r.bo, C);
    }
}

BNC_HOT static void F(gn_bwd_nhwc)(const F(gctx_t) *k, int64_t n, F(gscr_t) r)
{
    const int64_t C = k->C, HW = k->HW, G = k->G, Cg = k->Cg;
    const double L = (double)(Cg * HW);
    const T *x = k->x + n * HW * C, *dy = k->dy + n * HW * C;
    double *pc = k->parts + n * C * 2;
    for (int64_t c = 0; c < C; c++) {
        r.m[c] = k->mean[n * G + c / Cg];
        r.d1[c] = r.d2[c] = 0;
        r.p1[c] = r.p2[c] = 0;
    }
    for (int64_t i = 0; i < HW; i++) {
        P *restrict p1 = r.p1, *restrict p2 = r.p2;
        const P *restrict mc = r.m;
#if !STAGED
        if (i + 4 <= HW && i % BNC_SUB <= BNC_SUB - 4) {
            /* four rows into each partial, loaded and stored once: the same
             * additions in the same order as a row at a time */
            const P *gi = dy + i * C, *xi = x + i * C;
            int64_t c = 0;
            for (; c + F(WL) <= C; c += F(WL)) {
                F(wvec_t) s1 = BNC_WLOAD(p1 + c), s2 = BNC_WLOAD(p2 + c);
                const F(wvec_t) mv = BNC_WLOAD(mc + c);
                for (int q = 0; q < 4; q++) {
                    const F(wvec_t) g = BNC_WLOAD(gi + q * C + c);
                    s1 += g;
                    s2 += g * (BNC_WLOAD(xi + q * C + c) - mv);
                }
                memcpy(p1 + c, &s1, sizeof s1);
                memcpy(p2 + c, &s2, sizeof s2);
            }
            for (; c < C; c++)
                for (int q = 0; q < 4; q++) {
                    p1[c] += gi[q * C + c];
                    p2[c] += gi[q * C + c] * (xi[q * C + c] - mc[c]);
                }
            i += 3; /* the last of the four */
        } else
#endif
        {
            const P *restrict xi = GN_IN(r.bx, x + i * C, C);
            const P *restrict gi = GN_IN(r.bg, dy + i * C, C);
            for (int64_t c = 0; c < C; c++) {
                p1[c] += gi[c];
                p2[c] += gi[c] * (xi[c] - mc[c]);
            }
        }
        if (i % BNC_SUB == BNC_SUB - 1 || i == HW - 1) {
            F(gn_flush)(r.d1, r.p1, C);
            F(gn_flush)(r.d2, r.p2, C);
        }
    }
    for (int64_t g = 0; g < G; g++) {
        const P s = k->invstd[n * G + g];
        double A = 0, B = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
            const double w = k->weight ? (double)k->weight[c] : 1.0;
            pc[2 * c] = r.d1[c];
            pc[2 * c + 1] = r.d2[c] * (double)s;
            A += w * r.d1[c];
            B += w * r.d2[c];
        }
        /* frozen: the statistics are constants, dx = (dy * w - 0) * s */
        const P ca = k->frozen ? (P)0 : (P)(A / L);
        const P cg = k->frozen ? (P)0 : (P)((double)s * (double)s * B / L);
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
            r.k[c] = k->weight ? k->weight[c] : (P)1; /* k: the weight */
            r.p1[c] = ca;
            r.cl[c] = cg;
            r.a[c] = s;
        }
    }
    if (!k->y)
        return;
    T *dx = k->y + n * HW * C;
    const P *restrict wc = r.k, *restrict cac = r.p1, *restrict mc = r.m, *restrict cgc = r.cl,
                      *restrict sc = r.a;
    int64_t i = 0;
#if !STAGED
    /* four rows at a time, each channel's coefficients loaded once for them
     * (a row at a time, their five loads a vector bound the loop); all four
     * rows of a vector are read before any is written, as dx may be dy */
    if (!k->frozen)
        for (; i + 4 <= HW; i += 4) {
            const P *gi = dy + i * C, *xi = x + i * C;
            P *di = dx + i * C;
            int64_t c = 0;
            for (; c + F(WL) <= C; c += F(WL)) {
                const F(wvec_t) wv = BNC_WLOAD(wc + c), av = BNC_WLOAD(cac + c),
                                mv = BNC_WLOAD(mc + c), gv = BNC_WLOAD(cgc + c),
                                sv = BNC_WLOAD(sc + c);
                F(wvec_t) v[4];
                for (int q = 0; q < 4; q++)
                    v[q] = ((BNC_WLOAD(gi + q * C + c) * wv - av) -
                            (BNC_WLOAD(xi + q * C + c) - mv) * gv) * sv;
                for (int q = 0; q < 4; q++)
                    memcpy(di + q * C + c, &v[q], sizeof v[q]);
            }
            for (; c < C; c++)
                for (int q = 0; q < 4; q++)
                    di[q * C + c] =
                        ((gi[q * C + c] * wc[c] - cac[c]) - (xi[q * C + c] - mc[c]) * cgc[c]) *
                        sc[c];
        }
#endif
    for (; i < HW; i++) {
        const P *xi = GN_IN(r.bx, x + i * C, C), *gi = GN_IN(r.bg, dy + i * C, C);
        P *di = GN_OUT(r.bo, dx + i * C); /* dx may be dy */
        if (k->frozen) /* (x - m) * 0 would turn an infinite x into NaN */
            for (int64_t c = 0; c < C; c++)
                di[c] = (gi[c] * wc[c]) * sc[c];
        else
            for (int64_t c = 0; c < C; c++)
                di[c] = ((gi[c] * wc[c] - cac[c]) - (xi[c] - mc[c]) * cgc[c]) * sc[c];
        GN_PUT(dx + i * C, r.bo, C);
    }
}

/* ---- driver ---- */

static void F(gn_thread)(const F(gctx_t) *k, int bwd, int64_t t, int64_t nt)
{
    const int64_t items = k->cl ? k->N : k->N * k->G;
    if (!k->cl && !bwd) {
        F(gn_fwd_nchw)(k, items * t / nt, items * (t + 1) / nt);
        return;
    }
    for (int64_t j = items * t / nt; j < items * (t + 1) / nt; j++) {
        if (k->cl) {
            if (bwd)
                F(gn_bwd_nhwc)(k, j, F(gn_scratch)(k, t));
            else
                F(gn_fwd_nhwc)(k, j, F(gn_scratch)(k, t));
        } else
            F(gn_bwd_nchw)(k, j);
    }
}

static int F(gn_run)(F(gctx_t) *k, int bwd, int n_threads)
{
    int nt = bnc_team(n_threads, k->cl ? k->N : k->N * k->G, k->N * k->C * k->HW);
    if (k->cl) {
        k->scratch_bytes = F(gn_scratch_bytes)(k->C);
        k->scratch = malloc(k->scratch_bytes * (size_t)nt);
        if (!k->scratch)
            return BNC_ERR_NOMEM;
    }
#ifdef _OPENMP
    if (nt > 1) {
        BNC_OMP(parallel num_threads(nt))
        F(gn_thread)(k, bwd, omp_get_thread_num(), omp_get_num_threads());
    } else
#endif
        F(gn_thread)(k, bwd, 0, 1);
    free(k->scratch);
    k->scratch = NULL;
    return BNC_OK;
}

/* Checks the shared arguments and fills the shape part of k. */
static int F(gn_setup)(F(gctx_t) *k, int64_t N, int64_t C, int64_t HW, int64_t G,
                       int channels_last, const T *x, int n_threads)
{
    if (N < 1 || C < 1 || HW < 1 || G < 1 || C % G != 0 || N > INT64_MAX / C ||
        N * C > INT64_MAX / HW)
        return BNC_ERR_SHAPE;
    if (!x)
        return BNC_ERR_NULL;
    if (n_threads < 1)
        return BNC_ERR_THREADS;
    k->N = N;
    k->C = C;
    k->HW = HW;
    k->G = G;
    k->Cg = C / G;
    k->cl = channels_last != 0;
    k->x = x;
    return BNC_OK;
}

/* The forward behind group and instance norm (G = C, with the variance). */
static int F(gn_forward)(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last,
                         const T *x, const P *weight, const P *bias, double eps, T *y,
                         P *save_mean, P *save_invstd, P *save_var, int n_threads)
{
    F(gctx_t) k = {0};
    int st = F(gn_setup)(&k, N, C, HW, G, channels_last, x, n_threads);
    if (st)
        return st;
    if (!y)
        return BNC_ERR_NULL;
    if (!(eps > 0) || !isfinite(eps))
        return BNC_ERR_EPS;
    k.weight = weight;
    k.bias = bias;
    k.eps = eps;
    k.y = y;
    k.stream = bnc_stream_wanted(3 * (int64_t)sizeof(T) * N * C * HW); /* x read twice */
    k.save_mean = save_mean;
    k.save_invstd = save_invstd;
    k.save_var = save_var;
    return F(gn_run)(&k, 0, n_threads);
}

/* The backward behind group and instance norm (frozen: constant statistics). */
static int F(gn_backward)(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last,
                          const T *dy, const T *x, const P *weight, const P *mean,
                          const P *invstd, int frozen, T *dx, P *dweight, P *dbias,
                          int n_threads)
{
    F(gctx_t) k = {0};
    int st = F(gn_setup)(&k, N, C, HW, G, channels_last, x, n_threads);
    if (st)
        return st;
    if (!dy || !mean || !invstd)
        return BNC_ERR_NULL;
    k.dy = dy;
    k.weight = weight;
    k.mean = mean;
    k.invstd = invstd;
    k.frozen = frozen != 0;
    k.y = dx;
    k.parts = malloc(sizeof(double) * 2 * (size_t)(N * C));
    if (!k.parts)
        return BNC_ERR_NOMEM;
    st = F(gn_run)(&k, 1, n_threads);
    if (st == BNC_OK)
        for (int64_t c = 0; c < C; c++) { /* over n in order */
            double sb = 0, sw = 0;
            for (int64_t n = 0; n < N; n++) {
                sb += k.parts[(n * C + c) * 2];
                sw += k.parts[(n * C + c) * 2 + 1];
            }
            if (dweight)
                dweight[c] = (P)sw;
            if (dbias)
                dbias[c] = (P)sb;
        }
    free(k.parts);
    return st;
}

int F(bnc_groupnorm_fwd)(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last,
                         const T *x, const P *weight, const P *bias, double eps, T *y,
                         P *save_mean, P *save_invstd, int n_threads)
{
    return F(gn_forward)(N, C, HW, G, channels_last, x, weight, bias, eps, y, save_mean,
                         save_invstd, NULL, n_threads);
}

int F(bnc_groupnorm_bwd)(int64_t N, int64_t C, int64_t HW, int64_t G, int channels_last,
                         const T *dy, const T *x, const P *weight, const P *mean,
                         const P *invstd, T *dx, P *dweight, P *dbias, int n_threads)
{
    return F(gn_backward)(N, C, HW, G, channels_last, dy, x, weight, mean, invstd, 0, dx,
                          dweight, dbias, n_threads);
}

/* Instance norm is group norm with one channel per group. */
int F(bnc_instancenorm_fwd)(int64_t N, int64_t C, int64_t HW, int channels_last, const T *x,
                            const P *weight, const P *bias, double eps, T *y, P *save_mean,
                            P *save_invstd, P *save_var, int n_threads)
{
    return F(gn_forward)(N, C, HW, C, channels_last, x, weight, bias, eps, y, save_mean,
                         save_invstd, save_var, n_threads);
}

int F(bnc_instancenorm_bwd)(int64_t N, int64_t C, int64_t HW, int channels_last, const T *dy,
                            const T *x, const P *weight, const P *mean, const P *invstd,
                            int input_stats, T *dx, P *dweight, P *dbias, int n_threads)
{
    return F(gn_backward)(N, C, HW, C, channels_last, dy, x, weight, mean, invstd,
                          !input_stats, dx, dweight, dbias, n_threads);
}

#undef GN_STAGE
#undef GN_UNIT
#undef GN_IN
#undef GN_OUT
#undef GN_PUT
#undef GN_CHUNKS
#undef GN_ONE_CHUNK
#include "body_end.h"
