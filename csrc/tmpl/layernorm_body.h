/*
 * layernorm_body.h - layer norm and RMS norm kernels, written once per dtype.
 *
 * layernorm.c includes this file once per dtype after defining:
 *   T    storage and arithmetic type of x, y, dy, dx, weight, bias and the
 *        saved statistics (float or double)
 *   SFX  name suffix: f32, f64
 * and undefines them at its end.
 *
 * The data is `rows` contiguous rows of D elements (row r at x + r * D).
 * Per-row reductions sum in fixed lanes: each lane adds at most BNC_SUB / NL
 * terms in working precision T, then flushes to its double (as the batch norm
 * kernels do); the lanes fold with bnc_lanes_sum. A row is read twice in a
 * row (sum, then squared deviations or the elementwise pass) while it is in
 * cache. Rows are split over threads statically; column sums (the weight and
 * bias gradients) are reduced in chunks of rows fixed by the shape and the
 * chunk partials added in chunk order: results do not depend on n_threads.
 */

#define F(name) BNC_CAT(name, BNC_CAT(_, SFX))

typedef T F(lvec_t) __attribute__((vector_size(BNC_VEC_BYTES)));
typedef T F(luvec_t) __attribute__((vector_size(BNC_VEC_BYTES), aligned(sizeof(T)), may_alias));
typedef double F(ldvec_t) __attribute__((vector_size(BNC_VEC_BYTES * 8 / sizeof(T))));
enum { F(LVL) = BNC_VEC_BYTES / (int)sizeof(T), F(LNL) = 4 * F(LVL) };

#define LN_LOAD(p) (*(const F(luvec_t) *)(p))
#define LN_FLUSH1(a, f)                                                       \
    do {                                                                      \
        F(ldvec_t) d_;                                                        \
        memcpy(&d_, (a), sizeof d_);                                          \
        d_ += __builtin_convertvector((f), F(ldvec_t));                       \
        memcpy((a), &d_, sizeof d_);                                          \
    } while (0)
#define LN_FLUSH4(a, f0, f1, f2, f3)                                          \
    do {                                                                      \
        LN_FLUSH1((a), f0);                                                   \
        LN_FLUSH1((a) + F(LVL), f1);                                          \
        LN_FLUSH1((a) + 2 * F(LVL), f2);                                      \
        LN_FLUSH1((a) + 3 * F(LVL), f3);                                      \
        f0 = f1 = f2 = f3 = (F(lvec_t)){0};                                   \
    } while (0)

/* sum(x - k) over a row, k a value of the row (exact in T). */
BNC_HOT BNC_NOINLINE static double F(ln_sum)(const T *restrict x, int64_t n, T k)
{
    double a[BNC_LANES] = {0};
    F(lvec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    int groups = 0;
    int64_t i = 0;
    for (; i + F(LNL) <= n; i += F(LNL)) {
        f0 += LN_LOAD(x + i) - k;
        f1 += LN_LOAD(x + i + F(LVL)) - k;
        f2 += LN_LOAD(x + i + 2 * F(LVL)) - k;
        f3 += LN_LOAD(x + i + 3 * F(LVL)) - k;
        if (++groups == BNC_SUB / F(LNL)) {
            LN_FLUSH4(a, f0, f1, f2, f3);
            groups = 0;
        }
    }
    LN_FLUSH4(a, f0, f1, f2, f3);
    for (int l = 0; i < n; i++, l++) /* the tail, in double */
        a[l] += (double)x[i] - (double)k;
    return bnc_lanes_sum(a);
}

/* sum(((x - k) - m)^2) over a row; k = m = 0 gives the sum of squares. */
BNC_HOT BNC_NOINLINE static double F(ln_sqdev)(const T *restrict x, int64_t n, T k, T m)
{
    double a[BNC_LANES] = {0};
    F(lvec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    int groups = 0;
    int64_t i = 0;
    for (; i + F(LNL) <= n; i += F(LNL)) {
        F(lvec_t) v0 = (LN_LOAD(x + i) - k) - m;
        F(lvec_t) v1 = (LN_LOAD(x + i + F(LVL)) - k) - m;
        F(lvec_t) v2 = (LN_LOAD(x + i + 2 * F(LVL)) - k) - m;
        F(lvec_t) v3 = (LN_LOAD(x + i + 3 * F(LVL)) - k) - m;
        f0 += v0 * v0;
        f1 += v1 * v1;
        f2 += v2 * v2;
        f3 += v3 * v3;
        if (++groups == BNC_SUB / F(LNL)) {
            LN_FLUSH4(a, f0, f1, f2, f3);
            groups = 0;
        }
    }
    LN_FLUSH4(a, f0, f1, f2, f3);
    for (int l = 0; i < n; i++, l++) { /* the tail, in double */
        double v = ((double)x[i] - (double)k) - (double)m;
        a[l] += v * v;
    }
    return bnc_lanes_sum(a);
}

/* *s1 = sum(g), *s2 = sum(g * (x - m)) over a row, g = dy * w (w NULL: 1). */
BNC_HOT BNC_NOINLINE static void F(ln_dots)(const T *restrict dy, const T *restrict x,
                                            const T *restrict w, int64_t n, T m, double *s1,
                                            double *s2)
{
    double a[BNC_LANES] = {0}, b[BNC_LANES] = {0};
    F(lvec_t) f0 = {0}, f1 = {0}, f2 = {0}, f3 = {0};
    F(lvec_t) h0 = {0}, h1 = {0}, h2 = {0}, h3 = {0};
    int groups = 0;
    int64_t i = 0;
    for (; i + F(LNL) <= n; i += F(LNL)) {
        F(lvec_t) g0 = LN_LOAD(dy + i), g1 = LN_LOAD(dy + i + F(LVL));
        F(lvec_t) g2 = LN_LOAD(dy + i + 2 * F(LVL)), g3 = LN_LOAD(dy + i + 3 * F(LVL));
        if (w) {
            g0 *= LN_LOAD(w + i);
            g1 *= LN_LOAD(w + i + F(LVL));
            g2 *= LN_LOAD(w + i + 2 * F(LVL));
            g3 *= LN_LOAD(w + i + 3 * F(LVL));
        }
        f0 += g0;
        f1 += g1;
        f2 += g2;
        f3 += g3;
        h0 += g0 * (LN_LOAD(x + i) - m);
        h1 += g1 * (LN_LOAD(x + i + F(LVL)) - m);
        h2 += g2 * (LN_LOAD(x + i + 2 * F(LVL)) - m);
        h3 += g3 * (LN_LOAD(x + i + 3 * F(LVL)) - m);
        if (++groups == BNC_SUB / F(LNL)) {
            LN_FLUSH4(a, f0, f1, f2, f3);
            LN_FLUSH4(b, h0, h1, h2, h3);
            groups = 0;
        }
    }
    LN_FLUSH4(a, f0, f1, f2, f3);
    LN_FLUSH4(b, h0, h1, h2, h3);
    for (int l = 0; i < n; i++, l++) { /* the tail, in double */
        double g = (double)(w ? dy[i] * w[i] : dy[i]);
        a[l] += g;
        b[l] += g * ((double)x[i] - (double)m);
    }
    *s1 = bnc_lanes_sum(a);
    *s2 = bnc_lanes_sum(b);
}

/* ---- forward ---- */

typedef struct {
    int64_t rows, D;
    int rms;
    const T *x, *dy, *weight, *bias, *mean, *invstd;
    double eps;
    T *y, *save_mean, *save_invstd; /* y: the output, or dx in the backward */
    T *dweight, *dbias;
    double *parts; /* backward: nchunks x (1 or 2) x D column partials */
    int64_t nchunks;
} F(lctx_t);

/* Normalizes rows [r0, r1). */
BNC_HOT static void F(ln_fwd_rows)(const F(lctx_t) *k, int64_t r0, int64_t r1)
{
    const int64_t D = k->D;
    const T *restrict w = k->weight, *restrict b = k->bias;
    for (int64_t r = r0; r < r1; r++) {
        const T *restrict x = k->x + r * D;
        T *restrict y = k->y + r * D;
        double mean = 0, var, invstd;
        T cm = 0, cl = 0, a;
        if (k->rms) {
            var = F(ln_sqdev)(x, D, 0, 0) / (double)D;
        } else {
            /* shift by the row's first value, then squared deviations about
             * the mean rounded to T; the rounding is corrected exactly */
            const T kx = x[0];
            double mu = F(ln_sum)(x, D, kx) / (double)D;
            T mp = (T)mu;
            double d = mu - (double)mp;
            var = F(ln_sqdev)(x, D, kx, mp) / (double)D - d * d;
            if (var < 0)
                var = 0;
            mean = (double)kx + mu;
            /* y = ((x - cm) - cl) * a: x - cm is exact near the mean */
            cm = (T)mean;
            cl = (T)(mean - (double)cm);
        }
        invstd = 1.0 / sqrt(var + k->eps);
        a = (T)invstd;
        if (k->save_mean)
            k->save_mean[r] = (T)mean;
        if (k->save_invstd)
            k->save_invstd[r] = a;
        if (w && b)
            for (int64_t i = 0; i < D; i++)
                y[i] = (((x[i] - cm) - cl) * a) * w[i] + b[i];
        else if (w)
            for (int64_t i = 0; i < D; i++)
                y[i] = (((x[i] - cm) - cl) * a) * w[i];
        else if (b)
            for (int64_t i = 0; i < D; i++)
                y[i] = ((x[i] - cm) - cl) * a + b[i];
        else
            for (int64_t i = 0; i < D; i++)
                y[i] = ((x[i] - cm) - cl) * a;
    }
}

/* ---- backward ---- */

/* Rows [r0, r1) of the backward: dx, and (when acc) the column sums
 * cw += dy * xhat, cb += dy added to the double partials cw, cb (cb NULL:
 * RMS norm, no bias). */
BNC_HOT static void F(ln_bwd_rows)(const F(lctx_t) *k, int64_t r0, int64_t r1,
                                   double *restrict cw, double *restrict cb)
{
    const int64_t D = k->D;
    const T *restrict w = k->weight;
    const double n = (double)D;
    for (int64_t r = r0; r < r1; r++) {
        const T *restrict x = k->x + r * D, *restrict dy = k->dy + r * D;
        T *restrict dx = k->y ? k->y + r * D : NULL;
        const T m = k->rms ? (T)0 : k->mean[r], s = k->invstd[r];
        if (dx) {
            double s1, s2;
            F(ln_dots)(dy, x, w, D, m, &s1, &s2);
            /* dx = s * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - m) * s:
             * dx = ((g - ca) - (x - m) * cg) * s */
            const T ca = k->rms ? (T)0 : (T)(s1 / n);
            const T cg = (T)((double)s * (double)s * s2 / n);
            if (w)
                for (int64_t i = 0; i < D; i++)
                    dx[i] = ((dy[i] * w[i] - ca) - (x[i] - m) * cg) * s;
            else
                for (int64_t i = 0; i < D; i++)
                    dx[i] = ((dy[i] - ca) - (x[i] - m) * cg) * s;
        }
        if (cw)
            for (int64_t i = 0; i < D; i++)
                cw[i] += (double)(dy[i] * ((x[i] - m) * s));
        if (cb)
            for (int64_t i = 0; i < D; i++)
                cb[i] += (double)dy[i];
    }
}

/* Chunk j of the rows: [j * rows / nchunks, (j + 1) * rows / nchunks). */
static void F(ln_bwd_chunk)(const F(lctx_t) *k, int64_t j)
{
    const int64_t r0 = j * k->rows / k->nchunks, r1 = (j + 1) * k->rows / k->nchunks;
    double *cw = NULL, *cb = NULL;
    if (k->parts) {
        const int64_t width = k->dbias ? 2 : 1;
        cw = k->parts + j * width * k->D;
        cb = k->dbias ? cw + k->D : NULL;
        memset(cw, 0, sizeof(double) * (size_t)(width * k->D));
    }
    F(ln_bwd_rows)(k, r0, r1, cw, cb);
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
            k->dweight[i] = (T)sw;
        if (k->dbias)
            k->dbias[i] = (T)sb;
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
        BNC_LN_OMP(barrier)
    }
#endif
    F(ln_bwd_columns)(k, k->D * t / nt, k->D * (t + 1) / nt);
}

static int F(ln_run)(F(lctx_t) *k, int bwd, int n_threads)
{
    int nt = k->rows * k->D < BNC_SERIAL_BELOW ? 1 : n_threads;
    int64_t items = bwd ? k->nchunks : k->rows;
    if (nt > items)
        nt = (int)items;
    if (nt < 1)
        nt = 1;
#ifdef _OPENMP
    if (nt > 1) {
        BNC_LN_OMP(parallel num_threads(nt))
        F(ln_thread)(k, bwd, omp_get_thread_num(), omp_get_num_threads());
    } else
#endif
        F(ln_thread)(k, bwd, 0, 1);
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

static int F(ln_fwd)(int rms, int64_t rows, int64_t D, const T *x, const T *weight,
                     const T *bias, double eps, T *y, T *save_mean, T *save_invstd,
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
                     const T *weight, const T *mean, const T *invstd, T *dx, T *dweight,
                     T *dbias, int n_threads)
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
    /* chunks of rows: a function of the shape only; their column partials
     * (1 or 2 x D doubles each) stay within BNC_SCRATCH doubles */
    {
        const int64_t width = k.dbias ? 2 : 1;
        int64_t c = BNC_SCRATCH / (width * D);
        if (c < 1)
            c = 1;
        if (c > BNC_PIECES)
            c = BNC_PIECES;
        k.nchunks = c < rows ? c : rows;
        if (dweight || k.dbias) {
            k.parts = malloc(sizeof(double) * (size_t)(k.nchunks * width * D));
            if (!k.parts)
                return BNC_ERR_NOMEM;
        }
    }
    st = F(ln_run)(&k, 1, n_threads);
    free(k.parts);
    return st;
}

int F(bnc_layernorm_fwd)(int64_t rows, int64_t D, const T *x, const T *weight,
                         const T *bias, double eps, T *y, T *save_mean, T *save_invstd,
                         int n_threads)
{
    return F(ln_fwd)(0, rows, D, x, weight, bias, eps, y, save_mean, save_invstd, n_threads);
}

int F(bnc_layernorm_bwd)(int64_t rows, int64_t D, const T *dy, const T *x, const T *weight,
                         const T *mean, const T *invstd, T *dx, T *dweight, T *dbias,
                         int n_threads)
{
    return F(ln_bwd)(0, rows, D, dy, x, weight, mean, invstd, dx, dweight, dbias, n_threads);
}

int F(bnc_rmsnorm_fwd)(int64_t rows, int64_t D, const T *x, const T *weight, double eps,
                       T *y, T *save_invrms, int n_threads)
{
    return F(ln_fwd)(1, rows, D, x, weight, NULL, eps, y, NULL, save_invrms, n_threads);
}

int F(bnc_rmsnorm_bwd)(int64_t rows, int64_t D, const T *dy, const T *x, const T *weight,
                       const T *invrms, T *dx, T *dweight, int n_threads)
{
    return F(ln_bwd)(1, rows, D, dy, x, weight, NULL, invrms, dx, dweight, NULL, n_threads);
}

#undef LN_LOAD
#undef LN_FLUSH1
#undef LN_FLUSH4
#undef F
#undef T
#undef SFX
