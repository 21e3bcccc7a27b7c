/*
 * layernorm_body.h - layer norm and RMS norm kernels, written once per dtype.
 *
 * layernorm.c includes this file once per dtype after defining:
 *   T        storage type of x, y, dy, dx
 *   P        arithmetic type, and the type of weight, bias, their gradients
 *            and the saved statistics
 *   SFX      name suffix: f32, f64, f16
 *   STAGED   1: rows are converted to P in chunks of BNC_LN_STAGE elements
 *            (float16), 0: T is P and rows are read in place
 * and undefines them at its end.
 *
 * The data is `rows` contiguous rows of D elements (row r at x + r * D).
 * Per-row reductions sum in fixed lanes: each lane adds at most BNC_SUB / NL
 * terms in working precision P, then flushes to its double (as the batch norm
 * kernels do); the lanes fold with bnc_lanes_sum. A row is read again right
 * after its sums (squared deviations, the elementwise pass) while it is in
 * cache: one pass over memory. Rows are split over threads statically; column
 * sums (the weight and bias gradients) are reduced in chunks of rows fixed by
 * the shape (at most BNC_LN_COLROWS rows in P, then into double partials) and
 * the chunk partials added in chunk order: results do not depend on
 * n_threads. A single row is not split: few long rows run on few threads.
 * Scratch: the backward's column partials, min(rows, BNC_PIECES) x (1 or 2)
 * x D x (8 + sizeof(P)) bytes (fewer chunks when D is large).
 */

#define F(name) BNC_CAT(name, BNC_CAT(_, SFX))

#include "rowsums.h"

/* y = (((x - cm) - cl) * a) * w + b (w, b NULL: 1, 0); y may be x. */
static inline void F(ln_norm)(const P *x, P *y, int64_t n, const P *restrict w,
                              const P *restrict b, P cm, P cl, P a)
{
    if (w && b)
        for (int64_t i = 0; i < n; i++)
            y[i] = (((x[i] - cm) - cl) * a) * w[i] + b[i];
    else if (w)
        for (int64_t i = 0; i < n; i++)
            y[i] = (((x[i] - cm) - cl) * a) * w[i];
    else if (b)
        for (int64_t i = 0; i < n; i++)
            y[i] = ((x[i] - cm) - cl) * a + b[i];
    else
        for (int64_t i = 0; i < n; i++)
            y[i] = ((x[i] - cm) - cl) * a;
}

/* dx = ((dy * w - ca) - (x - m) * cg) * s (dx NULL: skipped), and the column
 * sums cw += dy * ((x - m) * s), cb += dy into working-precision partials
 * (each NULL: skipped), one loop. */
static inline void F(ln_grad)(const P *restrict dy, const P *restrict x, P *restrict dx,
                              int64_t n, const P *restrict w, P m, P s, P ca, P cg,
                              P *restrict cw, P *restrict cb)
{
    if (dx && cw && cb && w)
        for (int64_t i = 0; i < n; i++) {
            P d = x[i] - m;
            dx[i] = ((dy[i] * w[i] - ca) - d * cg) * s;
            cw[i] += dy[i] * (d * s);
            cb[i] += dy[i];
        }
    else if (dx && cw && cb)
        for (int64_t i = 0; i < n; i++) {
            P d = x[i] - m;
            dx[i] = ((dy[i] - ca) - d * cg) * s;
            cw[i] += dy[i] * (d * s);
            cb[i] += dy[i];
        }
    else {
        if (dx && w)
            for (int64_t i = 0; i < n; i++)
                dx[i] = ((dy[i] * w[i] - ca) - (x[i] - m) * cg) * s;
        else if (dx)
            for (int64_t i = 0; i < n; i++)
                dx[i] = ((dy[i] - ca) - (x[i] - m) * cg) * s;
        if (cw)
            for (int64_t i = 0; i < n; i++)
                cw[i] += dy[i] * ((x[i] - m) * s);
        if (cb)
            for (int64_t i = 0; i < n; i++)
                cb[i] += dy[i];
    }
}

/* The row functions on T: in place for float32/float64, through float
 * buffers of BNC_LN_STAGE elements (a multiple of BNC_SUB) for float16. */
#if STAGED
#define BNC_LN_STAGE 512
#define LN_CHUNKS(n) for (int64_t o = 0, c_; c_ = (n) - o < BNC_LN_STAGE ? (n) - o : BNC_LN_STAGE, o < (n); o += BNC_LN_STAGE)

static inline void F(row_sum)(const T *x, int64_t n, P k, double *a)
{
    P bx[BNC_LN_STAGE];
    LN_CHUNKS(n) {
        bnc_f16_load(bx, x + o, c_);
        F(sum_p)(bx, 1, 0, c_, k, a);
    }
}
static inline void F(row_sqdev)(const T *x, int64_t n, P k, P m, double *a)
{
    P bx[BNC_LN_STAGE];
    LN_CHUNKS(n) {
        bnc_f16_load(bx, x + o, c_);
        F(sqdev_p)(bx, 1, 0, c_, k, m, a);
    }
}
static inline void F(row_dots)(const T *dy, const T *x, const P *w, int64_t n, P m,
                               double *a, double *b)
{
    P bx[BNC_LN_STAGE], bg[BNC_LN_STAGE];
    LN_CHUNKS(n) {
        bnc_f16_load(bx, x + o, c_);
        bnc_f16_load(bg, dy + o, c_);
        F(ln_dots)(bg, bx, w ? w + o : NULL, c_, m, a, b);
    }
}
static inline void F(row_norm)(const T *x, T *y, int64_t n, const P *w, const P *b, P cm,
                               P cl, P a)
{
    P bx[BNC_LN_STAGE];
    LN_CHUNKS(n) {
        bnc_f16_load(bx, x + o, c_);
        F(ln_norm)(bx, bx, c_, w ? w + o : NULL, b ? b + o : NULL, cm, cl, a);
        bnc_f16_store(y + o, bx, c_);
    }
}
static inline void F(row_grad)(const T *dy, const T *x, T *dx, int64_t n, const P *w, P m,
                               P s, P ca, P cg, P *cw, P *cb)
{
    P bx[BNC_LN_STAGE], bg[BNC_LN_STAGE], bd[BNC_LN_STAGE];
    LN_CHUNKS(n) {
        bnc_f16_load(bx, x + o, c_);
        bnc_f16_load(bg, dy + o, c_);
        F(ln_grad)(bg, bx, dx ? bd : NULL, c_, w ? w + o : NULL, m, s, ca, cg,
                   cw ? cw + o : NULL, cb ? cb + o : NULL);
        if (dx)
            bnc_f16_store(dx + o, bd, c_);
    }
}
#undef LN_CHUNKS
#undef BNC_LN_STAGE
#else
static inline void F(row_sum)(const T *x, int64_t n, P k, double *a) { F(sum_p)(x, 1, 0, n, k, a); }
static inline void F(row_sqdev)(const T *x, int64_t n, P k, P m, double *a)
{
    F(sqdev_p)(x, 1, 0, n, k, m, a);
}
static inline void F(row_dots)(const T *dy, const T *x, const P *w, int64_t n, P m,
                               double *a, double *b)
{
    F(ln_dots)(dy, x, w, n, m, a, b);
}
static inline void F(row_norm)(const T *x, T *y, int64_t n, const P *w, const P *b, P cm,
                               P cl, P a)
{
    F(ln_norm)(x, y, n, w, b, cm, cl, a);
}
static inline void F(row_grad)(const T *dy, const T *x, T *dx, int64_t n, const P *w, P m,
                               P s, P ca, P cg, P *cw, P *cb)
{
    F(ln_grad)(dy, x, dx, n, w, m, s, ca, cg, cw, cb);
}
#endif

/* ---- forward ---- */

typedef struct {
    int64_t rows, D;
    int rms;
    const T *x, *dy;
    const P *weight, *bias, *mean, *invstd;
    double eps;
    T *y; /* the output, or dx in the backward */
    P *save_mean, *save_invstd;
    P *dweight, *dbias;
    double *parts; /* backward: nchunks x (1 or 2) x D column partials */
    P *wparts;     /* their working-precision partials, laid out alike */
    int64_t nchunks;
} F(lctx_t);

/* Normalizes rows [r0, r1). */
BNC_HOT static void F(ln_fwd_rows)(const F(lctx_t) *k, int64_t r0, int64_t r1)
{
    const int64_t D = k->D;
    for (int64_t r = r0; r < r1; r++) {
        const T *x = k->x + r * D;
        double a1[BNC_LANES] = {0}, a2[BNC_LANES] = {0};
        double mean = 0, var, invstd;
        P cm = 0, cl = 0, a;
        if (k->rms) {
            F(row_sqdev)(x, D, 0, 0, a2);
            var = bnc_lanes_sum(a2) / (double)D;
        } else {
            /* shift by the row's first value, then squared deviations about
             * the mean rounded to P; that rounding is corrected exactly */
            const P kx = LOAD(x[0]);
            F(row_sum)(x, D, kx, a1);
            double mu = bnc_lanes_sum(a1) / (double)D;
            P mp = (P)mu;
            double d = mu - (double)mp;
            F(row_sqdev)(x, D, kx, mp, a2);
            var = bnc_lanes_sum(a2) / (double)D - d * d;
            if (var < 0)
                var = 0;
            mean = (double)kx + mu;
            /* y = ((x - cm) - cl) * a: x - cm is exact near the mean */
            cm = (P)mean;
            cl = (P)(mean - (double)cm);
        }
        invstd = 1.0 / sqrt(var + k->eps);
        a = (P)invstd;
        if (k->save_mean)
            k->save_mean[r] = (P)mean;
        if (k->save_invstd)
            k->save_invstd[r] = a;
        F(row_norm)(x, k->y + r * D, D, k->weight, k->bias, cm, cl, a);
    }
}

/* ---- backward ---- */

/* Column partials: at most BNC_LN_COLROWS rows are summed in working
 * precision before their sums are added to the double partials. */
#ifndef BNC_LN_COLROWS
#define BNC_LN_COLROWS 8
#endif

static inline void F(ln_flush)(double *restrict c, P *restrict p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        c[i] += (double)p[i];
        p[i] = 0;
    }
}

/* Rows [r0, r1) of the backward: dx (when k->y), and the column sums
 * cw += dy * xhat, cb += dy added to the double partials (each may be NULL)
 * through the working-precision partials pw, pb (zero on entry and exit). */
BNC_HOT static void F(ln_bwd_rows)(const F(lctx_t) *k, int64_t r0, int64_t r1,
                                   double *restrict cw, double *restrict cb,
                                   P *restrict pw, P *restrict pb)
{
    const int64_t D = k->D;
    const double n = (double)D;
    for (int64_t r = r0; r < r1; r++) {
        const T *x = k->x + r * D, *dy = k->dy + r * D;
        T *dx = k->y ? k->y + r * D : NULL;
        const P m = k->rms ? (P)0 : k->mean[r], s = k->invstd[r];
        P ca = 0, cg = 0;
        if (dx) {
            double a1[BNC_LANES] = {0}, a2[BNC_LANES] = {0};
            F(row_dots)(dy, x, k->weight, D, m, a1, a2);
            /* dx = s * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - m) * s:
             * dx = ((g - ca) - (x - m) * cg) * s */
            ca = k->rms ? (P)0 : (P)(bnc_lanes_sum(a1) / n);
            cg = (P)((double)s * (double)s * bnc_lanes_sum(a2) / n);
        }
        F(row_grad)(dy, x, dx, D, k->weight, m, s, ca, cg, pw, pb);
        if ((r - r0) % BNC_LN_COLROWS == BNC_LN_COLROWS - 1 || r == r1 - 1) {
            if (cw)
                F(ln_flush)(cw, pw, D);
            if (cb)
                F(ln_flush)(cb, pb, D);
        }
    }
}

/* Chunk j of the rows: [j * rows / nchunks, (j + 1) * rows / nchunks). */
static void F(ln_bwd_chunk)(const F(lctx_t) *k, int64_t j)
{
    const int64_t r0 = j * k->rows / k->nchunks, r1 = (j + 1) * k->rows / k->nchunks;
    double *cw = NULL, *cb = NULL;
    P *pw = NULL, *pb = NULL;
    if (k->parts) {
        const int64_t width = k->dbias ? 2 : 1;
        cw = k->parts + j * width * k->D;
        cb = k->dbias ? cw + k->D : NULL;
        pw = k->wparts + j * width * k->D;
        pb = k->dbias ? pw + k->D : NULL;
        memset(cw, 0, sizeof(double) * (size_t)(width * k->D));
        memset(pw, 0, sizeof(P) * (size_t)(width * k->D));
    }
    F(ln_bwd_rows)(k, r0, r1, cw, cb, pw, pb);
}

/* Columns [i0, i1) of dweight/dbias: the chunk partials added in chunk order. */
static void F(ln_bwd_columns)(const F(lctx_t) *k, int64_t i0, int64_t i1)
{
    const int64_t width = k->dbias ? 2 : 1, D = k->D;
    for (int64_t i = i0; i < i1; i++) {
        double sw = 0, sb = 0;
        for (int64_t j = 0; j < k->nchunks; j++) {
            sw += k->parts[j * width * D + i];
            if (k->dbias)
                sb += k->parts[j * width * D + D + i];
        }
        if (k->dweight)
            k->dweight[i] = (P)sw;
        if (k->dbias)
            k->dbias[i] = (P)sb;
    }
}

static void F(ln_thread)(const F(lctx_t) *k, int bwd, int64_t t, int64_t nt)
{
    if (!bwd) {
        F(ln_fwd_rows)(k, k->rows * t / nt, k->rows * (t + 1) / nt);
        return;
    }
    for (int64_t j = k->nchunks * t / nt; j < k->nchunks * (t + 1) / nt; j++)
        F(ln_bwd_chunk)(k, j);
    if (!k->parts)
        return;
#ifdef _OPENMP
    if (nt > 1) {
        BNC_OMP(barrier)
    }
#endif
    F(ln_bwd_columns)(k, k->D * t / nt, k->D * (t + 1) / nt);
}

static int F(ln_run)(F(lctx_t) *k, int bwd, int n_threads)
{
    int nt = bnc_team(n_threads, bwd ? k->nchunks : k->rows, k->rows * k->D);
#ifdef _OPENMP
    if (nt > 1) {
        BNC_OMP(parallel num_threads(nt))
        F(ln_thread)(k, bwd, omp_get_thread_num(), omp_get_num_threads());
    } else
#endif
        F(ln_thread)(k, bwd, 0, 1);
    (void)nt; /* serial build */
    return BNC_OK;
}

static int F(ln_check)(int64_t rows, int64_t D, const T *x, int n_threads)
{
    if (rows < 1 || D < 1 || rows > INT64_MAX / D)
        return BNC_ERR_SHAPE;
    if (!x)
        return BNC_ERR_NULL;
    if (n_threads < 1)
        return BNC_ERR_THREADS;
    return BNC_OK;
}

static int F(ln_fwd)(int rms, int64_t rows, int64_t D, const T *x, const P *weight,
                     const P *bias, double eps, T *y, P *save_mean, P *save_invstd,
                     int n_threads)
{
    F(lctx_t) k = {0};
    int st = F(ln_check)(rows, D, x, n_threads);
    if (st)
        return st;
    if (!y)
        return BNC_ERR_NULL;
    if (!(eps > 0) || !isfinite(eps))
        return BNC_ERR_EPS;
    k.rows = rows;
    k.D = D;
    k.rms = rms;
    k.x = x;
    k.weight = weight;
    k.bias = bias;
    k.eps = eps;
    k.y = y;
    k.save_mean = save_mean;
    k.save_invstd = save_invstd;
    return F(ln_run)(&k, 0, n_threads);
}

static int F(ln_bwd)(int rms, int64_t rows, int64_t D, const T *dy, const T *x,
                     const P *weight, const P *mean, const P *invstd, T *dx, P *dweight,
                     P *dbias, int n_threads)
{
    F(lctx_t) k = {0};
    int st = F(ln_check)(rows, D, x, n_threads);
    if (st)
        return st;
    if (!dy || !invstd || (!rms && !mean))
        return BNC_ERR_NULL;
    k.rows = rows;
    k.D = D;
    k.rms = rms;
    k.x = x;
    k.dy = dy;
    k.weight = weight;
    k.mean = mean;
    k.invstd = invstd;
    k.y = dx;
    k.dweight = dweight;
    k.dbias = rms ? NULL : dbias;
    /* chunks of rows: a function of the shape only; at most BNC_PIECES, of
     * at least BNC_BLOCK elements each (small calls: one chunk, no partials
     * to merge), and their column partials (1 or 2 x D doubles each) within
     * BNC_SCRATCH doubles */
    {
        const int64_t width = k.dbias ? 2 : 1;
        int64_t c = BNC_SCRATCH / (width * D);
        if (c > rows / ((BNC_BLOCK + D - 1) / D))
            c = rows / ((BNC_BLOCK + D - 1) / D);
        if (c > BNC_PIECES)
            c = BNC_PIECES;
        if (c < 1)
            c = 1;
        k.nchunks = c < rows ? c : rows;
        if (dweight || k.dbias) {
            k.parts = malloc((sizeof(double) + sizeof(P)) * (size_t)(k.nchunks * width * D));
            if (!k.parts)
                return BNC_ERR_NOMEM;
            k.wparts = (P *)(k.parts + k.nchunks * width * D);
        }
    }
    st = F(ln_run)(&k, 1, n_threads);
    free(k.parts);
    return st;
}

int F(bnc_layernorm_fwd)(int64_t rows, int64_t D, const T *x, const P *weight,
                         const P *bias, double eps, T *y, P *save_mean, P *save_invstd,
                         int n_threads)
{
    return F(ln_fwd)(0, rows, D, x, weight, bias, eps, y, save_mean, save_invstd, n_threads);
}

int F(bnc_layernorm_bwd)(int64_t rows, int64_t D, const T *dy, const T *x, const P *weight,
                         const P *mean, const P *invstd, T *dx, P *dweight, P *dbias,
                         int n_threads)
{
    return F(ln_bwd)(0, rows, D, dy, x, weight, mean, invstd, dx, dweight, dbias, n_threads);
}

int F(bnc_rmsnorm_fwd)(int64_t rows, int64_t D, const T *x, const P *weight, double eps,
                       T *y, P *save_invrms, int n_threads)
{
    return F(ln_fwd)(1, rows, D, x, weight, NULL, eps, y, NULL, save_invrms, n_threads);
}

int F(bnc_rmsnorm_bwd)(int64_t rows, int64_t D, const T *dy, const T *x, const P *weight,
                       const P *invrms, T *dx, P *dweight, int n_threads)
{
    return F(ln_bwd)(1, rows, D, dy, x, weight, NULL, invrms, dx, dweight, NULL, n_threads);
}
#include "body_end.h"
