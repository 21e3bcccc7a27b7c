/* test_batchnorm.c - C-only tests of the batch norm kernels (no Python).
 *
 * Every kernel is compared with a plain double-precision reference computed
 * here from the same input values, over shapes that hit each path (slab and
 * interleaved layouts, long rows split in pieces, few and many channels,
 * strided and negative-stride views), for f32, f64 and f16; results must be
 * bit-identical for 1..4 threads; bad arguments must give their status code.
 */
#include "internal.h" /* the float16 loops, the streamed loops, bnc_limit_isa */
#include "testutil.h"



/* A view: dims plus element strides, over a buffer with room for them. */
typedef struct {
    bnc_dims_t d;
    bnc_strides_t s;
    int64_t base; /* element offset of (0, 0, 0) in the buffer */
    int64_t len;  /* buffer length in elements */
} view_t;

static int64_t at(const view_t *v, int64_t o, int64_t c, int64_t i)
{
    return v->base + o * v->s.outer + c * v->s.channel + i;
}

/* layout 0: contiguous; 1: padded outer stride; 2: reversed channels;
 * 3: reversed outer rows and padded channel stride */
static view_t make_view(bnc_dims_t d, int layout)
{
    view_t v;
    int64_t cpad = layout == 3 ? d.inner + 3 : d.inner;
    int64_t opad = d.channels * cpad + (layout == 1 || layout == 3 ? 5 : 0);
    v.d = d;
    v.s.channel = layout == 2 ? -cpad : cpad;
    v.s.outer = layout == 3 ? -opad : opad;
    v.len = d.outer * opad;
    v.base = 0;
    if (layout == 2)
        v.base = (d.channels - 1) * cpad;
    if (layout == 3)
        v.base = (d.outer - 1) * opad;
    return v;
}

/* ---- the double reference ---- */

static void ref_stats(const view_t *v, enum dtype t, const void *x, double *mean, double *var)
{
    double n = (double)(v->d.outer * v->d.inner);
    for (int64_t c = 0; c < v->d.channels; c++) {
        double s = 0, q = 0;
        for (int64_t o = 0; o < v->d.outer; o++)
            for (int64_t i = 0; i < v->d.inner; i++)
                s += get(t, x, at(v, o, c, i));
        mean[c] = s / n;
        for (int pass = 0; pass < 2; pass++) { /* refine the mean, then the variance */
            double dev = 0;
            q = 0;
            for (int64_t o = 0; o < v->d.outer; o++)
                for (int64_t i = 0; i < v->d.inner; i++) {
                    double e = get(t, x, at(v, o, c, i)) - mean[c];
                    dev += e;
                    q += e * e;
                }
            if (pass == 0)
                mean[c] += dev / n;
        }
        var[c] = q / n;
    }
}

/* Largest |a - b| over the view, relative to max(1, max |b|). */
static double view_err(const view_t *va, enum dtype t, const void *a, const double *b)
{
    double err = 0, scale = 1;
    int64_t k = 0;
    for (int64_t o = 0; o < va->d.outer; o++)
        for (int64_t c = 0; c < va->d.channels; c++)
            for (int64_t i = 0; i < va->d.inner; i++, k++) {
                double e = fabs(get(t, a, at(va, o, c, i)) - b[k]);
                err = e > err ? e : err;
                scale = fabs(b[k]) > scale ? fabs(b[k]) : scale;
            }
    return err / scale;
}

static double vec_err(const double *a, const double *b, int64_t n)
{
    double err = 0, scale = 1;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        err = e > err ? e : err;
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    }
    return err / scale;
}

/* ---- calling a kernel in any dtype, per-channel arrays given as double ---- */

typedef struct {
    double *w, *b, *mean, *var, *invstd, *dw, *db, *sdy, *sdyx;
} chan_t;

static void *to_p(enum dtype t, const double *v, int64_t n)
{
    void *p = malloc((size_t)n * (t == F64 ? 8 : 4));
    for (int64_t i = 0; i < n; i++) {
        if (t == F64)
            ((double *)p)[i] = v[i];
        else
            ((float *)p)[i] = (float)v[i];
    }
    return p;
}

static void from_p(enum dtype t, const void *p, double *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = t == F64 ? ((const double *)p)[i] : ((const float *)p)[i];
}

/* The kernels take typed pointers; these wrappers take void * per dtype. */
static int k_stats(enum dtype t, const view_t *v, const void *x, double *m, double *var, int nt)
{
    const char *px = (const char *)x + v->base * (int64_t)dsize(t);
    if (t == F32)
        return bnc_batchnorm_stats_f32(v->d, (const float *)px, v->s, m, var, nt);
    if (t == F64)
        return bnc_batchnorm_stats_f64(v->d, (const double *)px, v->s, m, var, nt);
    return bnc_batchnorm_stats_f16(v->d, (const bnc_f16_t *)px, v->s, m, var, nt);
}

static int k_fwd_train(enum dtype t, const view_t *vx, const void *x, const void *w,
                       const void *b, double eps, const view_t *vy, void *y, void *sm,
                       void *si, void *sv, int nt)
{
    const char *px = (const char *)x + vx->base * (int64_t)dsize(t);
    char *py = (char *)y + vy->base * (int64_t)dsize(t);
    if (t == F32)
        return bnc_batchnorm_fwd_train_f32(vx->d, (const float *)px, vx->s, w, b, eps,
                                           (float *)py, vy->s, sm, si, sv, nt);
    if (t == F64)
        return bnc_batchnorm_fwd_train_f64(vx->d, (const double *)px, vx->s, w, b, eps,
                                           (double *)py, vy->s, sm, si, sv, nt);
    return bnc_batchnorm_fwd_train_f16(vx->d, (const bnc_f16_t *)px, vx->s, w, b, eps,
                                       (bnc_f16_t *)py, vy->s, sm, si, sv, nt);
}

static int k_fwd_eval(enum dtype t, const view_t *vx, const void *x, const void *w,
                      const void *b, const void *m, const void *var, double eps,
                      const view_t *vy, void *y, int nt)
{
    const char *px = (const char *)x + vx->base * (int64_t)dsize(t);
    char *py = (char *)y + vy->base * (int64_t)dsize(t);
    if (t == F32)
        return bnc_batchnorm_fwd_eval_f32(vx->d, (const float *)px, vx->s, w, b, m, var,
                                          eps, (float *)py, vy->s, nt);
    if (t == F64)
        return bnc_batchnorm_fwd_eval_f64(vx->d, (const double *)px, vx->s, w, b, m, var,
                                          eps, (double *)py, vy->s, nt);
    return bnc_batchnorm_fwd_eval_f16(vx->d, (const bnc_f16_t *)px, vx->s, w, b, m, var,
                                      eps, (bnc_f16_t *)py, vy->s, nt);
}

static int k_renorm(enum dtype t, const view_t *vx, const void *x, const void *w,
                    const void *b, const void *rm, const void *rv, double rmax, double dmax,
                    double eps, const view_t *vy, void *y, void *sm, void *si, void *sv,
                    void *sr, void *sd, int nt)
{
    const char *px = (const char *)x + vx->base * (int64_t)dsize(t);
    char *py = (char *)y + vy->base * (int64_t)dsize(t);
    if (t == F32)
        return bnc_batchrenorm_fwd_train_f32(vx->d, (const float *)px, vx->s, w, b, rm, rv,
                                             rmax, dmax, eps, (float *)py, vy->s, sm, si,
                                             sv, sr, sd, nt);
    if (t == F64)
        return bnc_batchrenorm_fwd_train_f64(vx->d, (const double *)px, vx->s, w, b, rm, rv,
                                             rmax, dmax, eps, (double *)py, vy->s, sm, si,
                                             sv, sr, sd, nt);
    return bnc_batchrenorm_fwd_train_f16(vx->d, (const bnc_f16_t *)px, vx->s, w, b, rm, rv,
                                         rmax, dmax, eps, (bnc_f16_t *)py, vy->s, sm, si,
                                         sv, sr, sd, nt);
}

static int k_bwd(enum dtype t, int train, const view_t *v, const void *dy, const void *x,
                 const void *w, const void *m, const void *is, void *dx, void *dw,
                 void *db, int nt)
{
    int64_t off = v->base * (int64_t)dsize(t);
    const char *pdy = (const char *)dy + off, *px = (const char *)x + off;
    char *pdx = (char *)dx + off;
    if (t == F32)
        return (train ? bnc_batchnorm_bwd_train_f32 : bnc_batchnorm_bwd_eval_f32)(
            v->d, (const float *)pdy, v->s, (const float *)px, v->s, w, m, is,
            (float *)pdx, v->s, dw, db, nt);
    if (t == F64)
        return (train ? bnc_batchnorm_bwd_train_f64 : bnc_batchnorm_bwd_eval_f64)(
            v->d, (const double *)pdy, v->s, (const double *)px, v->s, w, m, is,
            (double *)pdx, v->s, dw, db, nt);
    return (train ? bnc_batchnorm_bwd_train_f16 : bnc_batchnorm_bwd_eval_f16)(
        v->d, (const bnc_f16_t *)pdy, v->s, (const bnc_f16_t *)px, v->s, w, m, is,
        (bnc_f16_t *)pdx, v->s, dw, db, nt);
}

static int k_bwd_split(enum dtype t, const view_t *v, const void *dy, const void *x,
                       const void *w, const void *m, const void *is, void *dx, int nt)
{
    int64_t off = v->base * (int64_t)dsize(t), C = v->d.channels, st;
    const char *pdy = (const char *)dy + off, *px = (const char *)x + off;
    char *pdx = (char *)dx + off;
    double *sdy = malloc(sizeof(double) * (size_t)C), *sdyx = malloc(sizeof(double) * (size_t)C);
    int64_t n = v->d.outer * v->d.inner;
    if (t == F32) {
        st = bnc_batchnorm_bwd_reduce_f32(v->d, (const float *)pdy, v->s, (const float *)px,
                                          v->s, m, is, sdy, sdyx, nt);
        if (!st)
            st = bnc_batchnorm_bwd_elemt_f32(v->d, (const float *)pdy, v->s,
                                             (const float *)px, v->s, w, m, is, sdy, sdyx,
                                             n, (float *)pdx, v->s, nt);
    } else if (t == F64) {
        st = bnc_batchnorm_bwd_reduce_f64(v->d, (const double *)pdy, v->s,
                                          (const double *)px, v->s, m, is, sdy, sdyx, nt);
        if (!st)
            st = bnc_batchnorm_bwd_elemt_f64(v->d, (const double *)pdy, v->s,
                                             (const double *)px, v->s, w, m, is, sdy, sdyx,
                                             n, (double *)pdx, v->s, nt);
    } else {
        st = bnc_batchnorm_bwd_reduce_f16(v->d, (const bnc_f16_t *)pdy, v->s,
                                          (const bnc_f16_t *)px, v->s, m, is, sdy, sdyx, nt);
        if (!st)
            st = bnc_batchnorm_bwd_elemt_f16(v->d, (const bnc_f16_t *)pdy, v->s,
                                             (const bnc_f16_t *)px, v->s, w, m, is, sdy,
                                             sdyx, n, (bnc_f16_t *)pdx, v->s, nt);
    }
    free(sdy);
    free(sdyx);
    return (int)st;
}

/* The fused kernels; r, res views and y of the backward may be laid out
 * differently from x (dy, x, dx share vx). */
static int k_fwd_fused(enum dtype t, int train, const view_t *vx, const void *x, const void *w,
                       const void *b, const void *m, const void *var, double eps,
                       const view_t *vr, const void *r, int act, const view_t *vy, void *y,
                       void *sm, void *si, void *sv, int nt)
{
    const char *px = (const char *)x + vx->base * (int64_t)dsize(t);
    const char *pr = r ? (const char *)r + vr->base * (int64_t)dsize(t) : NULL;
    char *py = (char *)y + vy->base * (int64_t)dsize(t);
    if (t == F32)
        return train ? bnc_batchnorm_fwd_train_fused_f32(vx->d, (const float *)px, vx->s, w, b,
                                                         eps, (const float *)pr, vr->s, act,
                                                         (float *)py, vy->s, sm, si, sv, nt)
                     : bnc_batchnorm_fwd_eval_fused_f32(vx->d, (const float *)px, vx->s, w, b,
                                                        m, var, eps, (const float *)pr, vr->s,
                                                        act, (float *)py, vy->s, nt);
    if (t == F64)
        return train ? bnc_batchnorm_fwd_train_fused_f64(vx->d, (const double *)px, vx->s, w,
                                                         b, eps, (const double *)pr, vr->s,
                                                         act, (double *)py, vy->s, sm, si, sv,
                                                         nt)
                     : bnc_batchnorm_fwd_eval_fused_f64(vx->d, (const double *)px, vx->s, w,
                                                        b, m, var, eps, (const double *)pr,
                                                        vr->s, act, (double *)py, vy->s, nt);
    return train ? bnc_batchnorm_fwd_train_fused_f16(vx->d, (const bnc_f16_t *)px, vx->s, w, b,
                                                     eps, (const bnc_f16_t *)pr, vr->s, act,
                                                     (bnc_f16_t *)py, vy->s, sm, si, sv, nt)
                 : bnc_batchnorm_fwd_eval_fused_f16(vx->d, (const bnc_f16_t *)px, vx->s, w, b,
                                                    m, var, eps, (const bnc_f16_t *)pr, vr->s,
                                                    act, (bnc_f16_t *)py, vy->s, nt);
}

static int k_bwd_fused(enum dtype t, int train, const view_t *v, const void *dy,
                       const view_t *vy, const void *y, int act, const void *x, const void *w,
                       const void *m, const void *is, void *dx, const view_t *vr, void *dr,
                       void *dw, void *db, int nt)
{
    int64_t off = v->base * (int64_t)dsize(t);
    const char *pdy = (const char *)dy + off, *px = (const char *)x + off;
    const char *py = y ? (const char *)y + vy->base * (int64_t)dsize(t) : NULL;
    char *pdx = (char *)dx + off, *pdr = dr ? (char *)dr + vr->base * (int64_t)dsize(t) : NULL;
    if (t == F32)
        return (train ? bnc_batchnorm_bwd_train_fused_f32 : bnc_batchnorm_bwd_eval_fused_f32)(
            v->d, (const float *)pdy, v->s, (const float *)py, vy->s, act, (const float *)px,
            v->s, w, m, is, (float *)pdx, v->s, (float *)pdr, vr->s, dw, db, nt);
    if (t == F64)
        return (train ? bnc_batchnorm_bwd_train_fused_f64 : bnc_batchnorm_bwd_eval_fused_f64)(
            v->d, (const double *)pdy, v->s, (const double *)py, vy->s, act,
            (const double *)px, v->s, w, m, is, (double *)pdx, v->s, (double *)pdr, vr->s, dw,
            db, nt);
    return (train ? bnc_batchnorm_bwd_train_fused_f16 : bnc_batchnorm_bwd_eval_fused_f16)(
        v->d, (const bnc_f16_t *)pdy, v->s, (const bnc_f16_t *)py, vy->s, act,
        (const bnc_f16_t *)px, v->s, w, m, is, (bnc_f16_t *)pdx, v->s, (bnc_f16_t *)pdr,
        vr->s, dw, db, nt);
}

/* ---- one full case: every kernel on one shape, layout and dtype ---- */

static void run_case(bnc_dims_t d, int layout, enum dtype t, double offset, int nt)
{
    const int64_t C = d.channels, n = d.outer * d.inner, total = n * C;
    const double tol = t == F64 ? 1e-12 : t == F32 ? 2e-5 : 4e-3;
    view_t v = make_view(d, layout);
    size_t bytes = (size_t)v.len * dsize(t);
    void *x = calloc(1, bytes), *y = calloc(1, bytes), *dy = calloc(1, bytes),
         *dx = calloc(1, bytes), *dx2 = calloc(1, bytes);
    double *w = malloc(sizeof(double) * (size_t)C), *b = malloc(sizeof(double) * (size_t)C);
    double *rm = malloc(sizeof(double) * (size_t)C), *rv = malloc(sizeof(double) * (size_t)C);
    double *km = malloc(sizeof(double) * (size_t)C), *kv = malloc(sizeof(double) * (size_t)C);
    double *ry = calloc((size_t)total, sizeof(double)), *rdx = calloc((size_t)total, sizeof(double));
    double *tmp = malloc(sizeof(double) * (size_t)C * 3);
    double eps = 1e-5;
    char what[160];
    snprintf(what, sizeof what, "%s outer=%lld C=%lld inner=%lld layout=%d offset=%g nt=%d",
             dname[t], (long long)d.outer, (long long)C, (long long)d.inner, layout, offset, nt);

    for (int64_t o = 0; o < d.outer; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < d.inner; i++) {
                put(t, x, at(&v, o, c, i), offset * (1 + c % 3) + (1 + 0.5 * (double)c) * nrand());
                put(t, dy, at(&v, o, c, i), nrand());
            }
    for (int64_t c = 0; c < C; c++) {
        w[c] = 0.5 + urand();
        b[c] = nrand();
    }
    if (t != F64) /* per-channel values as the kernel sees them */
        for (int64_t c = 0; c < C; c++) {
            w[c] = (float)w[c];
            b[c] = (float)b[c];
        }

    /* statistics */
    ref_stats(&v, t, x, rm, rv);
    CHECK(k_stats(t, &v, x, km, kv, nt) == BNC_OK, "stats status %s", what);
    /* blocks are reduced in working precision (float for float16/float32),
     * merged in double: a float partial adds up to 16 squared deviations,
     * so the variance is within 16 rounding errors (2^-20; typically 2-4,
     * and 4.7 was seen: 2^-22 is not a bound) */
    for (int64_t c = 0; c < C; c++) {
        double stol = t == F64 ? 1e-13 : 1e-7;
        CHECK(fabs(km[c] - rm[c]) <= stol * (sqrt(rv[c]) + fabs(rm[c])),
              "stats mean %s c=%lld: %.17g vs %.17g", what, (long long)c, km[c], rm[c]);
        CHECK(fabs(kv[c] - rv[c]) <= (t == F64 ? 1e-12 : 0x1p-20) * rv[c] + 1e-300,
              "stats var %s c=%lld: %.17g vs %.17g", what, (long long)c, kv[c], rv[c]);
    }

    /* training forward */
    {
        void *pw = to_p(t, w, C), *pb = to_p(t, b, C), *sm = to_p(t, km, C),
             *si = to_p(t, km, C), *sv = to_p(t, km, C);
        int64_t k = 0;
        CHECK(k_fwd_train(t, &v, x, pw, pb, eps, &v, y, sm, si, sv, nt) == BNC_OK,
              "fwd_train status %s", what);
        for (int64_t o = 0; o < d.outer; o++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t i = 0; i < d.inner; i++, k++)
                    ry[k] = (get(t, x, at(&v, o, c, i)) - rm[c]) / sqrt(rv[c] + eps) * w[c] + b[c];
        CHECK(view_err(&v, t, y, ry) <= tol, "fwd_train y %s: %g", what, view_err(&v, t, y, ry));
        from_p(t, sv, tmp, C);
        CHECK(vec_err(tmp, rv, C) <= (t == F64 ? 1e-12 : 1e-6), "fwd_train save_var %s", what);

        /* inference with the saved (P-rounded) statistics */
        memset(y, 0, bytes);
        CHECK(k_fwd_eval(t, &v, x, pw, pb, sm, sv, eps, &v, y, nt) == BNC_OK,
              "fwd_eval status %s", what);
        {
            double *pm = malloc(sizeof(double) * (size_t)C);
            from_p(t, sm, pm, C);
            k = 0;
            for (int64_t o = 0; o < d.outer; o++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t i = 0; i < d.inner; i++, k++)
                        ry[k] = (get(t, x, at(&v, o, c, i)) - pm[c]) / sqrt(tmp[c] + eps) * w[c] + b[c];
            free(pm);
        }
        CHECK(view_err(&v, t, y, ry) <= tol, "fwd_eval y %s: %g", what, view_err(&v, t, y, ry));

        /* backward through batch statistics */
        {
            void *dw = to_p(t, w, C), *db = to_p(t, w, C);
            double *rdw = malloc(sizeof(double) * (size_t)C), *rdb = malloc(sizeof(double) * (size_t)C);
            double *mean_p = malloc(sizeof(double) * (size_t)C), *is_p = malloc(sizeof(double) * (size_t)C);
            from_p(t, sm, mean_p, C);
            from_p(t, si, is_p, C);
            for (int64_t c = 0; c < C; c++) {
                double sdy = 0, sdyx = 0;
                for (int64_t o = 0; o < d.outer; o++)
                    for (int64_t i = 0; i < d.inner; i++) {
                        double g = get(t, dy, at(&v, o, c, i));
                        sdy += g;
                        sdyx += g * (get(t, x, at(&v, o, c, i)) - mean_p[c]) * is_p[c];
                    }
                rdb[c] = sdy;
                rdw[c] = sdyx;
                for (int64_t o = 0; o < d.outer; o++)
                    for (int64_t i = 0; i < d.inner; i++) {
                        double xh = (get(t, x, at(&v, o, c, i)) - mean_p[c]) * is_p[c];
                        rdx[(o * C + c) * d.inner + i] =
                            w[c] * is_p[c] * (get(t, dy, at(&v, o, c, i)) - sdy / (double)n - xh * sdyx / (double)n);
                    }
            }
            CHECK(k_bwd(t, 1, &v, dy, x, pw, sm, si, dx, dw, db, nt) == BNC_OK,
                  "bwd_train status %s", what);
            CHECK(view_err(&v, t, dx, rdx) <= tol * 4, "bwd_train dx %s: %g", what,
                  view_err(&v, t, dx, rdx));
            from_p(t, dw, tmp, C);
            CHECK(vec_err(tmp, rdw, C) <= (t == F64 ? 1e-10 : 1e-5), "bwd_train dw %s", what);
            from_p(t, db, tmp, C);
            CHECK(vec_err(tmp, rdb, C) <= (t == F64 ? 1e-10 : 1e-5), "bwd_train db %s", what);

            /* the split reduce/elemt pair gives the same bits as the fused call */
            CHECK(k_bwd_split(t, &v, dy, x, pw, sm, si, dx2, nt) == BNC_OK,
                  "bwd split status %s", what);
            CHECK(memcmp(dx, dx2, bytes) == 0, "bwd split differs from bwd_train %s", what);

            /* backward with constant statistics: dx = dy * w * invstd */
            {
                int64_t kk = 0;
                for (int64_t o = 0; o < d.outer; o++)
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t i = 0; i < d.inner; i++, kk++)
                            rdx[kk] = get(t, dy, at(&v, o, c, i)) * w[c] * is_p[c];
            }
            CHECK(k_bwd(t, 0, &v, dy, x, pw, sm, si, dx, dw, db, nt) == BNC_OK,
                  "bwd_eval status %s", what);
            CHECK(view_err(&v, t, dx, rdx) <= tol, "bwd_eval dx %s: %g", what,
                  view_err(&v, t, dx, rdx));
            from_p(t, dw, tmp, C);
            CHECK(vec_err(tmp, rdw, C) <= (t == F64 ? 1e-10 : 1e-5), "bwd_eval dw %s", what);
            free(dw);
            free(db);
            free(rdw);
            free(rdb);
            free(mean_p);
            free(is_p);
        }
        free(pw);
        free(pb);
        free(sm);
        free(si);
        free(sv);
    }
    free(x); free(y); free(dy); free(dx); free(dx2);
    free(w); free(b); free(rm); free(rv); free(km); free(kv); free(ry); free(rdx); free(tmp);
}

/* ---- the fused kernels: y = act(bn(x) + r) and its backward, against the
 * unfused kernels composed with the add and the ReLU done here. In float32
 * and float64 (P = T) the composition rounds as the fused kernels do: equal
 * bits. In float16 the fused forward rounds once (the composition twice):
 * against the double reference. The backward sees the same dz either way:
 * equal bits in every dtype, except in the packed few-channel layout that
 * the fused backward leaves out (same sums, another order). ---- */

static int packed_view(const view_t *v)
{
    return v->d.inner == 1 && v->d.channels <= 32 && v->s.channel == 1 &&
           v->s.outer == v->d.channels;
}

/* Every element of the view, in (o, c, i) order, as doubles. */
static void view_vals(const view_t *v, enum dtype t, const void *a, double *out)
{
    int64_t k = 0;
    for (int64_t o = 0; o < v->d.outer; o++)
        for (int64_t c = 0; c < v->d.channels; c++)
            for (int64_t i = 0; i < v->d.inner; i++, k++)
                out[k] = get(t, a, at(v, o, c, i));
}

/* The elements of two views hold the same bits. */
static int view_same(const view_t *va, const void *a, const view_t *vb, const void *b,
                     enum dtype t)
{
    size_t z = dsize(t);
    for (int64_t o = 0; o < va->d.outer; o++)
        for (int64_t c = 0; c < va->d.channels; c++)
            for (int64_t i = 0; i < va->d.inner; i++)
                if (memcmp((const char *)a + at(va, o, c, i) * (int64_t)z,
                           (const char *)b + at(vb, o, c, i) * (int64_t)z, z))
                    return 0;
    return 1;
}

static void run_fused_case(bnc_dims_t d, int layout, enum dtype t, int act, int with_res,
                           int nt)
{
    const int64_t C = d.channels, total = d.outer * C * d.inner;
    const double tol = t == F64 ? 1e-12 : t == F32 ? 2e-5 : 4e-3, eps = 1e-5;
    view_t v = make_view(d, layout), vr = make_view(d, (layout + 1) % 4);
    size_t bytes = (size_t)v.len * dsize(t), rbytes = (size_t)vr.len * dsize(t);
    size_t pb = (size_t)C * psize(t);
    void *x = calloc(1, bytes), *r = calloc(1, rbytes), *dy = calloc(1, bytes);
    void *yf = calloc(1, bytes), *yu = calloc(1, bytes), *dz = calloc(1, bytes);
    void *dxf = calloc(1, bytes), *dxu = calloc(1, bytes), *dr = calloc(1, rbytes);
    void *dwf = malloc(pb), *dbf = malloc(pb), *dwu = malloc(pb), *dbu = malloc(pb);
    void *s1[3], *s2[3];
    double *w = malloc(sizeof(double) * (size_t)C), *b = malloc(sizeof(double) * (size_t)C);
    double *vals = malloc(sizeof(double) * (size_t)total), *ry = malloc(sizeof(double) * (size_t)total);
    double *rvals = malloc(sizeof(double) * (size_t)total);
    const void *rp = with_res ? r : NULL;
    int exact = t != F16, bexact = !packed_view(&v);
    char what[200];
    snprintf(what, sizeof what, "fused %s outer=%lld C=%lld inner=%lld layout=%d act=%d res=%d nt=%d",
             dname[t], (long long)d.outer, (long long)C, (long long)d.inner, layout, act,
             with_res, nt);
    for (int q = 0; q < 3; q++) {
        s1[q] = malloc(pb);
        s2[q] = malloc(pb);
    }
    for (int64_t o = 0; o < d.outer; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < d.inner; i++) {
                put(t, x, at(&v, o, c, i), 0.5 * (double)(c % 3) + nrand());
                put(t, r, at(&vr, o, c, i), 0.5 * nrand());
                put(t, dy, at(&v, o, c, i), nrand());
            }
    for (int64_t c = 0; c < C; c++) {
        w[c] = (c % 2 ? -1 : 1) * (0.5 + urand());
        b[c] = 0.3 * nrand();
        if (t != F64) {
            w[c] = (float)w[c];
            b[c] = (float)b[c];
        }
    }
    {
        void *pw = to_p(t, w, C), *pbias = to_p(t, b, C);
        double *mu = malloc(sizeof(double) * (size_t)C), *var = malloc(sizeof(double) * (size_t)C);
        for (int train = 1; train >= 0; train--) {
            /* forward: the unfused kernel, then + r and the ReLU in P */
            CHECK(k_fwd_fused(t, train, &v, x, pw, pbias, s2[0], s2[2], eps, &vr, rp, act, &v,
                              yf, s1[0], s1[1], s1[2], nt) == BNC_OK, "fwd status %s", what);
            if (train)
                CHECK(k_fwd_train(t, &v, x, pw, pbias, eps, &v, yu, s2[0], s2[1], s2[2], nt) ==
                          BNC_OK, "fwd_train status %s", what);
            else
                CHECK(k_fwd_eval(t, &v, x, pw, pbias, s2[0], s2[2], eps, &v, yu, nt) == BNC_OK,
                      "fwd_eval status %s", what);
            if (train)
                CHECK(!memcmp(s1[0], s2[0], pb) && !memcmp(s1[1], s2[1], pb) &&
                          !memcmp(s1[2], s2[2], pb), "saved statistics differ %s", what);
            from_p(t, s2[0], mu, C);
            from_p(t, s2[2], var, C);
            for (int64_t o = 0; o < d.outer; o++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t i = 0; i < d.inner; i++) {
                        int64_t ki = at(&v, o, c, i), kr = at(&vr, o, c, i);
                        double u = get(t, yu, ki), rv = with_res ? get(t, r, kr) : 0;
                        double e = (get(t, x, ki) - mu[c]) / sqrt(var[c] + eps) * w[c] + b[c];
                        double z = t == F64 ? u + rv : (double)((float)u + (float)rv);
                        e += rv;
                        put(t, yu, ki, act && z < 0 ? 0 : z);
                        ry[(o * C + c) * d.inner + i] = act && e < 0 ? 0 : e;
                    }
            if (exact)
                CHECK(view_same(&v, yf, &v, yu, t), "fused y differs from the composition %s train=%d",
                      what, train);
            CHECK(view_err(&v, t, yf, ry) <= tol, "fused y %s train=%d: %g", what, train,
                  view_err(&v, t, yf, ry));

            /* backward: the unfused kernel on dz */
            view_vals(&v, t, yf, vals);
            for (int64_t o = 0; o < d.outer; o++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t i = 0; i < d.inner; i++) {
                        int64_t ki = at(&v, o, c, i);
                        if (act && !(get(t, yf, ki) > 0) && !isnan(get(t, yf, ki)))
                            put(t, dz, ki, 0.0);
                        else
                            memcpy((char *)dz + ki * (int64_t)dsize(t),
                                   (char *)dy + ki * (int64_t)dsize(t), dsize(t));
                    }
            CHECK(k_bwd(t, train, &v, dz, x, pw, s2[0], s1[1], dxu, dwu, dbu, nt) == BNC_OK,
                  "bwd status %s", what);
            memset(dr, 0xff, rbytes);
            CHECK(k_bwd_fused(t, train, &v, dy, &v, act ? yf : NULL, act, x, pw, s2[0], s1[1],
                              dxf, &vr, with_res ? dr : NULL, dwf, dbf, nt) == BNC_OK,
                  "bwd fused status %s", what);
            if (with_res)
                CHECK(view_same(&vr, dr, &v, dz, t), "dres != dz %s train=%d", what, train);
            if (bexact) {
                CHECK(view_same(&v, dxf, &v, dxu, t), "fused dx differs %s train=%d", what, train);
                CHECK(!memcmp(dwf, dwu, pb) && !memcmp(dbf, dbu, pb),
                      "fused dweight/dbias differ %s train=%d", what, train);
            } else {
                view_vals(&v, t, dxu, vals);
                CHECK(view_err(&v, t, dxf, vals) <= tol * 4, "fused dx %s train=%d: %g", what,
                      train, view_err(&v, t, dxf, vals));
                from_p(t, dwu, rvals, C);
                CHECK(relerr(t, 1, dwf, rvals, NULL, C) <= (t == F64 ? 1e-12 : 1e-5),
                      "fused dweight %s train=%d", what, train);
            }

            /* bit-identical for any thread count */
            if (bnc_openmp_enabled())
                for (int n = 1; n <= 4; n++) {
                    CHECK(k_fwd_fused(t, train, &v, x, pw, pbias, s2[0], s2[2], eps, &vr, rp, act,
                                      &v, yu, s1[0], s1[1], s1[2], n) == BNC_OK, "status %s", what);
                    CHECK(view_same(&v, yf, &v, yu, t), "fused y differs with %d threads %s", n, what);
                    CHECK(k_bwd_fused(t, train, &v, dy, &v, act ? yf : NULL, act, x, pw, s2[0],
                                      s1[1], dxu, &vr, with_res ? dr : NULL, dwu, dbu, n) == BNC_OK,
                          "status %s", what);
                    CHECK(view_same(&v, dxf, &v, dxu, t) && !memcmp(dwf, dwu, pb) &&
                              !memcmp(dbf, dbu, pb), "fused grads differ with %d threads %s", n, what);
                }
        }
        /* in place: y = x and y = r (same view) give the out-of-place bits */
        if (with_res) {
            void *xc = malloc(bytes), *rc = malloc(rbytes);
            view_t vr2 = v;
            memcpy(xc, x, bytes);
            k_fwd_fused(t, 0, &v, x, pw, pbias, s2[0], s2[2], eps, &vr, r, act, &v, yf, NULL,
                        NULL, NULL, nt);
            CHECK(k_fwd_fused(t, 0, &v, xc, pw, pbias, s2[0], s2[2], eps, &vr, r, act, &v, xc,
                              NULL, NULL, NULL, nt) == BNC_OK, "status %s", what);
            CHECK(view_same(&v, yf, &v, xc, t), "y = x in place differs %s", what);
            /* r in x's layout, overwritten by y */
            memset(rc, 0, rbytes);
            rc = realloc(rc, bytes);
            for (int64_t o = 0; o < d.outer; o++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t i = 0; i < d.inner; i++)
                        memcpy((char *)rc + at(&v, o, c, i) * (int64_t)dsize(t),
                               (char *)r + at(&vr, o, c, i) * (int64_t)dsize(t), dsize(t));
            CHECK(k_fwd_fused(t, 1, &v, x, pw, pbias, NULL, NULL, eps, &vr2, rc, act, &v, rc,
                              NULL, NULL, NULL, nt) == BNC_OK, "status %s", what);
            k_fwd_fused(t, 1, &v, x, pw, pbias, NULL, NULL, eps, &vr, r, act, &v, yf, NULL,
                        NULL, NULL, nt);
            CHECK(view_same(&v, yf, &v, rc, t), "y = r in place differs %s", what);
            free(xc);
            free(rc);
        }
        free(pw);
        free(pbias);
        free(mu);
        free(var);
    }
    for (int q = 0; q < 3; q++) {
        free(s1[q]);
        free(s2[q]);
    }
    free(x); free(r); free(dy); free(yf); free(yu); free(dz); free(dxf); free(dxu); free(dr);
    free(dwf); free(dbf); free(dwu); free(dbu); free(w); free(b); free(vals); free(ry);
    free(rvals);
}

static void test_fused_errors(void)
{
    float x[8] = {0}, y[8], dx[8], m[2] = {0, 0}, v[2] = {1, 1};
    bnc_dims_t d = {2, 2, 2};
    bnc_strides_t s = BNC_CONTIGUOUS(d);
    CHECK(bnc_batchnorm_fwd_train_fused_f32(d, x, s, NULL, NULL, 1e-5, x, s, 2, y, s, NULL, NULL,
                                            NULL, 1) == BNC_ERR_ACTIVATION, "activation 2");
    CHECK(bnc_batchnorm_fwd_eval_fused_f32(d, x, s, NULL, NULL, m, v, 1e-5, NULL, s, -1, y, s,
                                           1) == BNC_ERR_ACTIVATION, "activation -1");
    CHECK(bnc_batchnorm_fwd_eval_fused_f32(d, x, s, NULL, NULL, m, v, 0.0, NULL, s, 1, y, s,
                                           1) == BNC_ERR_EPS, "fused eps");
    CHECK(bnc_batchnorm_bwd_train_fused_f32(d, x, s, NULL, s, BNC_ACT_RELU, x, s, NULL, m, v, dx,
                                            s, NULL, s, NULL, NULL, 1) == BNC_ERR_NULL,
          "ReLU backward without y");
    CHECK(bnc_batchnorm_bwd_eval_fused_f32(d, x, s, y, s, BNC_ACT_RELU, x, s, NULL, m, v, NULL,
                                           s, y, s, NULL, NULL, 1) == BNC_ERR_NULL,
          "fused backward without dx");
    CHECK(bnc_batchnorm_bwd_eval_fused_f32(d, x, s, y, s, 7, x, s, NULL, m, v, dx, s, NULL, s,
                                           NULL, NULL, 1) == BNC_ERR_ACTIVATION,
          "backward activation 7");
    CHECK(bnc_batchnorm_bwd_train_fused_f32(d, x, s, NULL, s, BNC_ACT_NONE, x, s, NULL, m, v, dx,
                                            s, NULL, s, NULL, NULL, 0) == BNC_ERR_THREADS,
          "fused threads");
    CHECK(strcmp(bnc_strerror(BNC_ERR_ACTIVATION), bnc_strerror(-100)) != 0,
          "activation error message");
}

/* A ReLU at exactly 0, -0.0 and NaN: forward as torch.relu, backward mask
 * as threshold_backward (y <= 0 blocks, NaN passes). */
static void test_fused_relu_edges(void)
{
    bnc_dims_t d = {4, 1, 1};
    bnc_strides_t s = BNC_CONTIGUOUS(d);
    float x[4] = {1, 2, 3, 4}, r[4], y[4], dy[4] = {1, 1, 1, 1}, dx[4], dres[4];
    float m[1] = {0}, v[1] = {1}, w[1] = {1}, b[1] = {0}, is[1] = {1};
    /* eval with mean 0, var 1 - eps: y = x + r */
    v[0] = 1.0f - 1e-5f;
    r[0] = -1.0f;                /* 0 exactly */
    r[1] = -3.0f;                /* negative -> 0 */
    r[2] = NAN;                  /* NaN propagates */
    r[3] = -4.0f;                /* 0 */
    CHECK(bnc_batchnorm_fwd_eval_fused_f32(d, x, s, w, b, m, v, 1e-5, r, s, BNC_ACT_RELU, y, s,
                                           1) == BNC_OK, "edges status");
    CHECK(y[0] == 0 && y[1] == 0 && isnan(y[2]) && y[3] == 0 && !signbit(y[1]),
          "ReLU edges: %g %g %g %g", y[0], y[1], y[2], y[3]);
    y[0] = -0.0f;
    CHECK(bnc_batchnorm_bwd_eval_fused_f32(d, dy, s, y, s, BNC_ACT_RELU, x, s, w, m, is, dx, s,
                                           dres, s, NULL, NULL, 1) == BNC_OK, "edges bwd status");
    CHECK(dres[0] == 0 && dres[1] == 0 && dres[2] == 1 && dres[3] == 0 && !signbit(dres[0]),
          "ReLU mask edges: %g %g %g %g", dres[0], dres[1], dres[2], dres[3]);
}

/* Every output must be bit-identical for 1..4 threads. */
static void check_thread_invariance(bnc_dims_t d, int layout, enum dtype t)
{
    view_t v = make_view(d, layout);
    size_t bytes = (size_t)v.len * dsize(t);
    int64_t C = d.channels;
    void *x = calloc(1, bytes), *dy = calloc(1, bytes), *y1 = calloc(1, bytes),
         *y2 = calloc(1, bytes), *dx1 = calloc(1, bytes), *dx2 = calloc(1, bytes);
    double *m1 = malloc(sizeof(double) * (size_t)C), *m2 = malloc(sizeof(double) * (size_t)C);
    double *v1 = malloc(sizeof(double) * (size_t)C), *v2 = malloc(sizeof(double) * (size_t)C);
    size_t pb = (size_t)C * (t == F64 ? 8 : 4);
    void *s1 = malloc(pb * 3), *s2 = malloc(pb * 3), *g1 = malloc(pb * 2), *g2 = malloc(pb * 2);
    for (int64_t k = 0; k < v.len; k++) {
        put(t, x, k, 3 + nrand());
        put(t, dy, k, nrand());
    }
    k_stats(t, &v, x, m1, v1, 1);
    k_fwd_train(t, &v, x, NULL, NULL, 1e-5, &v, y1, s1, (char *)s1 + pb, (char *)s1 + 2 * pb, 1);
    k_bwd(t, 1, &v, dy, x, NULL, s1, (char *)s1 + pb, dx1, g1, (char *)g1 + pb, 1);
    for (int nt = 2; nt <= 4; nt++) {
        k_stats(t, &v, x, m2, v2, nt);
        k_fwd_train(t, &v, x, NULL, NULL, 1e-5, &v, y2, s2, (char *)s2 + pb, (char *)s2 + 2 * pb, nt);
        k_bwd(t, 1, &v, dy, x, NULL, s1, (char *)s1 + pb, dx2, g2, (char *)g2 + pb, nt);
        CHECK(!memcmp(m1, m2, sizeof(double) * (size_t)C) && !memcmp(v1, v2, sizeof(double) * (size_t)C),
              "stats differ with %d threads (%s C=%lld)", nt, dname[t], (long long)C);
        CHECK(!memcmp(y1, y2, bytes) && !memcmp(s1, s2, pb * 3),
              "fwd_train differs with %d threads (%s C=%lld)", nt, dname[t], (long long)C);
        CHECK(!memcmp(dx1, dx2, bytes) && !memcmp(g1, g2, pb * 2),
              "bwd_train differs with %d threads (%s C=%lld)", nt, dname[t], (long long)C);
    }
    free(x); free(dy); free(y1); free(y2); free(dx1); free(dx2);
    free(m1); free(m2); free(v1); free(v2); free(s1); free(s2); free(g1); free(g2);
}

static void test_f16_conversion(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = bnc_f16_to_f32((bnc_f16_t)h);
        bnc_f16_t back = bnc_f32_to_f16(f);
        if (isnan(f))
            bad += !((back & 0x7c00) == 0x7c00 && (back & 0x3ff));
        else
            bad += back != h;
    }
    CHECK(bad == 0, "float16 round trip: %d bit patterns differ", bad);
    /* rounding: ties to even, overflow to infinity, subnormals */
    CHECK(bnc_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "tie rounds to even (down)");
    CHECK(bnc_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "tie rounds to even (up)");
    CHECK(bnc_f32_to_f16(65519.0f) == 0x7bff, "65519 -> 65504");
    CHECK(bnc_f32_to_f16(65520.0f) == 0x7c00, "65520 -> inf");
    CHECK(bnc_f32_to_f16(0x1p-25f) == 0, "2^-25 ties to zero");
    CHECK(bnc_f32_to_f16(0x1.8p-25f) == 1, "1.5 * 2^-25 rounds to the smallest subnormal");
    CHECK(bnc_f32_to_f16(-0x1p-24f) == 0x8001, "negative subnormal");
    CHECK(bnc_f32_to_f16(0x1.ffcp-15f) == 0x0400, "rounding up into the normal range");
#if defined(__FLT16_MAX__)
    {
        int diff = 0;
        for (int k = 0; k < 200000; k++) { /* compare with the compiler's own conversion */
            float f = (float)(nrand() * pow(2.0, (int)(urand() * 40) - 26));
            __extension__ _Float16 h = f;
            bnc_f16_t bits;
            memcpy(&bits, &h, sizeof bits);
            diff += bits != bnc_f32_to_f16(f);
        }
        CHECK(diff == 0, "float16 rounding differs from _Float16 for %d values", diff);
        diff = 0;
        for (int k = 0; k < 4000000; k++) { /* any bit pattern: NaN, inf, subnormal */
            uint32_t u;
            float f;
            rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
            u = (uint32_t)(rng_state >> 32);
            memcpy(&f, &u, sizeof f);
            __extension__ _Float16 h = f;
            bnc_f16_t bits, mine = bnc_f32_to_f16(f);
            memcpy(&bits, &h, sizeof bits);
            if (isnan(f))
                diff += !((mine & 0x7c00) == 0x7c00 && (mine & 0x3ff));
            else
                diff += bits != mine;
        }
        CHECK(diff == 0, "float16 rounding of random bit patterns: %d differ", diff);
    }
#endif
}

/* The bulk conversions (F16C where the CPU has it) equal the scalar ones. */

static void test_f16_bulk_conversion(void)
{
    static bnc_f16_t h[65536 + 5], back[65536 + 5];
    static float f[65536 + 5];
    int bad = 0;
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (bnc_f16_t)i;
    bnc_f16_load(f, h, 65536); /* every bit pattern */
    for (uint32_t i = 0; i < 65536; i++) {
        float g = bnc_f16_to_f32(h[i]);
        bad += isnan(g) ? !isnan(f[i]) : memcmp(&g, &f[i], sizeof g) != 0;
    }
    CHECK(bad == 0, "bulk float16 load differs from the scalar one for %d values", bad);
    bad = 0;
    for (int k = 0; k < 65536 + 5; k++) { /* odd length: vector body and tail */
        uint32_t u;
        rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
        u = (uint32_t)(rng_state >> 32);
        memcpy(&f[k], &u, sizeof u);
    }
    bnc_f16_store(back, f, 65536 + 5);
    for (int k = 0; k < 65536 + 5; k++) {
        bnc_f16_t want = bnc_f32_to_f16(f[k]);
        if (isnan(f[k]))
            bad += !((back[k] & 0x7c00) == 0x7c00 && (back[k] & 0x3ff));
        else
            bad += back[k] != want;
    }
    CHECK(bad == 0, "bulk float16 store differs from the scalar one for %d values", bad);
}

/* The float16 passes that convert in registers (bnc_f16_norm, bnc_f16_grad)
 * give the bits of converting, computing in float and converting back, over
 * finite random values (the vector body and an odd tail), in place too, with
 * ordinary and with streaming stores (outputs starting anywhere in a line;
 * runs shorter than the streaming minimum store normally). */

static bnc_f16_t random_finite_half(void)
{
    bnc_f16_t h;
    do {
        rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
        h = (bnc_f16_t)(rng_state >> 48);
    } while ((h & 0x7c00) == 0x7c00);
    return h;
}

static void test_f16_fused_passes(void)
{
    enum { N = 4099, PAD = 40 };
    static _Alignas(64) bnc_f16_t x[N], dy[N], y[N + PAD], dx[N + PAD], ey[N], ed[N];
    static const int64_t ns[] = {N, 2048, 2047, 100};
    const float m = 0.3125f, a = -1.75f, s = 0.0625f, g = 0.4375f, c = -0.125f;
    int bad = 0;
    for (int i = 0; i < N; i++) {
        x[i] = random_finite_half();
        dy[i] = random_finite_half();
        float xf = bnc_f16_to_f32(x[i]), gf = bnc_f16_to_f32(dy[i]);
        ey[i] = bnc_f32_to_f16((xf - m) * a + s);
        ed[i] = bnc_f32_to_f16(((gf - c) - (xf - m) * g) * s);
    }
    for (int stream = 0; stream < 2; stream++)
        for (int ni = 0; ni < (int)(sizeof ns / sizeof ns[0]); ni++)
            for (int off = 0; off < PAD; off += stream ? 3 : PAD) {
                const int64_t n = ns[ni];
                bnc_f16_t *yo = y + off, *dxo = dx + off;
                bnc_f16_norm(yo, x, n, m, a, s, stream);
                bnc_f16_grad(dxo, dy, x, n, m, c, g, s, stream);
                for (int64_t i = 0; i < n; i++) { /* NaN: any NaN */
                    bad += (ey[i] & 0x7fff) > 0x7c00 ? (yo[i] & 0x7fff) <= 0x7c00 : yo[i] != ey[i];
                    bad += (ed[i] & 0x7fff) > 0x7c00 ? (dxo[i] & 0x7fff) <= 0x7c00
                                                     : dxo[i] != ed[i];
                }
                CHECK(bad == 0, "float16 passes in registers (stream %d, n %lld, offset %d) "
                      "differ from the staged ones for %d values", stream, (long long)n, off,
                      bad);
                memcpy(dxo, dy, (size_t)n * sizeof *dy); /* dx = dy in place */
                bnc_f16_grad(dxo, dxo, x, n, m, c, g, s, stream);
                memcpy(yo, x, (size_t)n * sizeof *x);
                bnc_f16_norm(yo, yo, n, m, a, s, stream);
                CHECK(memcmp(dxo, ed, (size_t)n * sizeof *dy) == 0 &&
                          memcmp(yo, ey, (size_t)n * sizeof *x) == 0,
                      "float16 passes in place differ (stream %d)", stream);
            }
}

static void test_errors(void)
{
    float x[8] = {0}, y[8], m[2], v[2];
    double dm[2], dv[2];
    bnc_dims_t d = {2, 2, 2}, bad = {2, 0, 2};
    bnc_strides_t s = BNC_CONTIGUOUS(d);
    CHECK(bnc_batchnorm_stats_f32(d, NULL, s, dm, dv, 1) == BNC_ERR_NULL, "NULL x");
    CHECK(bnc_batchnorm_stats_f32(bad, x, s, dm, dv, 1) == BNC_ERR_SHAPE, "C = 0");
    CHECK(bnc_batchnorm_stats_f32(d, x, s, dm, dv, 0) == BNC_ERR_THREADS, "0 threads");
    CHECK(bnc_batchnorm_fwd_train_f32(d, x, s, NULL, NULL, 0.0, y, s, m, m, v, 1) == BNC_ERR_EPS, "eps 0");
    CHECK(bnc_batchnorm_fwd_train_f32(d, x, s, NULL, NULL, NAN, y, s, m, m, v, 1) == BNC_ERR_EPS, "eps NaN");
    CHECK(bnc_batchnorm_fwd_eval_f32(d, x, s, NULL, NULL, m, NULL, 1e-5, y, s, 1) == BNC_ERR_NULL, "NULL var");
    {
        bnc_dims_t huge = {INT64_MAX / 2, 4, 4};
        CHECK(bnc_batchnorm_stats_f32(huge, x, s, dm, dv, 1) == BNC_ERR_SHAPE, "size overflow");
    }
    for (int st = 0; st >= BNC_ERR_LAST - 1; st--)
        CHECK(bnc_strerror(st) != NULL && bnc_strerror(st)[0], "strerror(%d)", st);
    CHECK(strcmp(bnc_version(), BNC_VERSION_STRING) == 0, "version");
}

/* Constant channels normalize to exactly the bias; large offsets keep the variance. */
static void test_numerics(void)
{
    bnc_dims_t d = {64, 3, 100};
    bnc_strides_t s = BNC_CONTIGUOUS(d);
    int64_t total = d.outer * d.channels * d.inner;
    float *x = malloc(sizeof(float) * (size_t)total), *y = malloc(sizeof(float) * (size_t)total);
    float b[3] = {0.25f, -3.0f, 7.5f}, m[3], is[3], v[3];
    double dm[3], dv[3];
    int ok = 1;
    for (int64_t k = 0; k < total; k++)
        x[k] = 1234.5678f;
    bnc_batchnorm_fwd_train_f32(d, x, s, NULL, b, 1e-5, y, s, m, is, v, 2);
    for (int64_t k = 0; k < total; k++)
        ok &= y[k] == b[(k / d.inner) % 3];
    CHECK(ok, "a constant channel must normalize to exactly the bias");
    /* |mean|/std = 1e4 in float32 */
    for (int64_t k = 0; k < total; k++)
        x[k] = (float)(1e4 + nrand());
    {
        view_t vw = make_view(d, 0);
        double rm[3], rv[3];
        ref_stats(&vw, F32, x, rm, rv);
        bnc_batchnorm_stats_f32(d, x, s, dm, dv, 2);
        for (int c = 0; c < 3; c++)
            CHECK(fabs(dv[c] - rv[c]) <= 1e-7 * rv[c], "offset 1e4 var %.9g vs %.9g", dv[c],
                  rv[c]);
    }
    free(x);
    free(y);
}

/* ---- batch renorm: y against a double reference; rmax = 1, dmax = 0 is
 * batch norm bit for bit; r and d hit both bounds of their clipping ---- */

static double clip(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

static void run_renorm_case(bnc_dims_t d, int layout, enum dtype t, int nt)
{
    const int64_t C = d.channels, total = d.outer * C * d.inner;
    const double tol = t == F64 ? 1e-12 : t == F32 ? 2e-5 : 4e-3, eps = 1e-5;
    const double rmax = 1.5, dmax = 0.5;
    view_t v = make_view(d, layout);
    size_t bytes = (size_t)v.len * dsize(t), pbytes = (size_t)C * (t == F64 ? 8 : 4);
    void *x = calloc(1, bytes), *y = calloc(1, bytes), *y2 = calloc(1, bytes);
    double *w = malloc(sizeof(double) * (size_t)C), *b = malloc(sizeof(double) * (size_t)C);
    double *mu = malloc(sizeof(double) * (size_t)C), *var = malloc(sizeof(double) * (size_t)C);
    double *rm = malloc(sizeof(double) * (size_t)C), *rv = malloc(sizeof(double) * (size_t)C);
    double *rr = malloc(sizeof(double) * (size_t)C), *rd = malloc(sizeof(double) * (size_t)C);
    double *tmp = malloc(sizeof(double) * (size_t)C), *ry = malloc(sizeof(double) * (size_t)total);
    void *s[5], *s2[5];
    int lo_r = 0, hi_r = 0, lo_d = 0, hi_d = 0;
    char what[160];
    snprintf(what, sizeof what, "renorm %s outer=%lld C=%lld inner=%lld layout=%d nt=%d",
             dname[t], (long long)d.outer, (long long)C, (long long)d.inner, layout, nt);
    for (int k = 0; k < 5; k++) {
        s[k] = malloc(pbytes);
        s2[k] = malloc(pbytes);
    }
    for (int64_t o = 0; o < d.outer; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < d.inner; i++)
                put(t, x, at(&v, o, c, i), 0.5 * (double)(c % 5) + (1 + 0.25 * (double)c) * nrand());
    ref_stats(&v, t, x, mu, var);
    for (int64_t c = 0; c < C; c++) {
        /* running stats around the batch's: r from 0.25x to 4x, d from -2 to 2 */
        double sig = sqrt(var[c] + eps), ratio = pow(2.0, 4 * urand() - 2);
        w[c] = 0.5 + urand();
        b[c] = nrand();
        rv[c] = sig * sig * ratio * ratio - eps;
        rv[c] = rv[c] > 0 ? rv[c] : 0;
        rm[c] = mu[c] - (4 * urand() - 2) * sqrt(rv[c] + eps);
        if (t != F64) {
            w[c] = (float)w[c];
            b[c] = (float)b[c];
            rm[c] = (float)rm[c];
            rv[c] = (float)rv[c];
        }
        sig = sqrt(rv[c] + eps);
        rr[c] = clip(sqrt(var[c] + eps) / sig, 1 / rmax, rmax);
        rd[c] = clip((mu[c] - rm[c]) / sig, -dmax, dmax);
        lo_r += rr[c] == 1 / rmax;
        hi_r += rr[c] == rmax;
        lo_d += rd[c] == -dmax;
        hi_d += rd[c] == dmax;
    }
    {
        void *pw = to_p(t, w, C), *pb = to_p(t, b, C), *prm = to_p(t, rm, C),
             *prv = to_p(t, rv, C);
        int64_t k = 0;
        CHECK(k_renorm(t, &v, x, pw, pb, prm, prv, rmax, dmax, eps, &v, y, s[0], s[1], s[2],
                       s[3], s[4], nt) == BNC_OK, "status %s", what);
        for (int64_t o = 0; o < d.outer; o++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t i = 0; i < d.inner; i++, k++)
                    ry[k] = w[c] * ((get(t, x, at(&v, o, c, i)) - mu[c]) / sqrt(var[c] + eps) * rr[c] + rd[c]) + b[c];
        CHECK(view_err(&v, t, y, ry) <= tol, "y %s: %g", what, view_err(&v, t, y, ry));
        from_p(t, s[3], tmp, C);
        CHECK(vec_err(tmp, rr, C) <= (t == F64 ? 1e-12 : 1e-6), "save_r %s", what);
        from_p(t, s[4], tmp, C);
        CHECK(vec_err(tmp, rd, C) <= (t == F64 ? 1e-12 : 1e-6), "save_d %s", what);
        if (C >= 16)
            CHECK(lo_r && hi_r && lo_d && hi_d, "clipping not exercised %s", what);

        /* rmax = 1, dmax = 0: batch norm's training forward, same bits */
        memset(y, 0, bytes);
        memset(y2, 0, bytes);
        CHECK(k_renorm(t, &v, x, pw, pb, prm, prv, 1.0, 0.0, eps, &v, y, s[0], s[1], s[2],
                       s[3], s[4], nt) == BNC_OK, "status rmax=1 %s", what);
        CHECK(k_fwd_train(t, &v, x, pw, pb, eps, &v, y2, s2[0], s2[1], s2[2], nt) == BNC_OK,
              "status bn %s", what);
        CHECK(!memcmp(y, y2, bytes) && !memcmp(s[0], s2[0], pbytes) &&
                  !memcmp(s[1], s2[1], pbytes) && !memcmp(s[2], s2[2], pbytes),
              "rmax=1, dmax=0 differs from batch norm %s", what);
        from_p(t, s[3], tmp, C);
        for (int64_t c = 0; c < C; c++)
            CHECK(tmp[c] == 1.0, "r != 1 with rmax=1 %s", what);
        from_p(t, s[4], tmp, C);
        for (int64_t c = 0; c < C; c++)
            CHECK(tmp[c] == 0.0 && !signbit(tmp[c]), "d != +0 with dmax=0 %s", what);

        /* bit-identical for 1..4 threads, save_* may be NULL */
        if (bnc_openmp_enabled()) {
            k_renorm(t, &v, x, pw, pb, prm, prv, rmax, dmax, eps, &v, y, s[0], s[1], s[2],
                     s[3], s[4], 1);
            for (int n = 2; n <= 4; n++) {
                CHECK(k_renorm(t, &v, x, pw, pb, prm, prv, rmax, dmax, eps, &v, y2, NULL,
                               NULL, NULL, s2[3], NULL, n) == BNC_OK, "status NULL saves %s", what);
                CHECK(!memcmp(y, y2, bytes) && !memcmp(s[3], s2[3], pbytes),
                      "renorm differs with %d threads %s", n, what);
            }
        }
        free(pw);
        free(pb);
        free(prm);
        free(prv);
    }
    for (int k = 0; k < 5; k++) {
        free(s[k]);
        free(s2[k]);
    }
    free(x); free(y); free(y2); free(w); free(b); free(mu); free(var); free(rm); free(rv);
    free(rr); free(rd); free(tmp); free(ry);
}

static void test_renorm_errors(void)
{
    float x[8] = {0}, y[8], m[2] = {0, 0}, v[2] = {1, 1};
    bnc_dims_t d = {2, 2, 2};
    bnc_strides_t s = BNC_CONTIGUOUS(d);
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, NULL, v, 2, 1, 1e-5, y, s, NULL,
                                        NULL, NULL, NULL, NULL, 1) == BNC_ERR_NULL,
          "renorm NULL running_mean");
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, m, NULL, 2, 1, 1e-5, y, s, NULL,
                                        NULL, NULL, NULL, NULL, 1) == BNC_ERR_NULL,
          "renorm NULL running_var");
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, m, v, 0.5, 1, 1e-5, y, s, NULL,
                                        NULL, NULL, NULL, NULL, 1) == BNC_ERR_RMAX, "rmax < 1");
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, m, v, NAN, 1, 1e-5, y, s, NULL,
                                        NULL, NULL, NULL, NULL, 1) == BNC_ERR_RMAX, "rmax NaN");
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, m, v, 2, -1, 1e-5, y, s, NULL,
                                        NULL, NULL, NULL, NULL, 1) == BNC_ERR_DMAX, "dmax < 0");
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, m, v, 2, NAN, 1e-5, y, s, NULL,
                                        NULL, NULL, NULL, NULL, 1) == BNC_ERR_DMAX, "dmax NaN");
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, m, v, 2, 1, 0.0, y, s, NULL,
                                        NULL, NULL, NULL, NULL, 1) == BNC_ERR_EPS, "renorm eps");
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, m, v, 2, 1, 1e-5, y, s, NULL,
                                        NULL, NULL, NULL, NULL, 0) == BNC_ERR_THREADS,
          "renorm threads");
    CHECK(bnc_batchrenorm_fwd_train_f32(d, x, s, NULL, NULL, m, v, INFINITY, INFINITY, 1e-5,
                                        y, s, NULL, NULL, NULL, NULL, NULL, 1) == BNC_OK,
          "rmax = dmax = inf (no clipping) is valid");
    CHECK(strcmp(bnc_strerror(BNC_ERR_RMAX), bnc_strerror(BNC_ERR_DMAX)) != 0,
          "rmax and dmax errors have their own messages");
}

/* The streamed loops (util.c) give the bits of the plain loops, for outputs
 * starting anywhere in a line, short and long runs, in place, and rows of
 * any channel count from a line's worth. */

#define STREAM_CHECK(T, SFX)                                                  \
    do {                                                                      \
        static _Alignas(64) T x[4200], dy[4200], y[4200], e[4200];            \
        for (int i = 0; i < 4200; i++) {                                      \
            x[i] = (T)(1.0 + 0.37 * (i % 101) - 0.001 * i);                   \
            dy[i] = (T)(0.5 - 0.013 * (i % 57));                              \
        }                                                                     \
        const T m = (T)1.3, a = (T)0.77, g = (T)0.041, s = (T)2.1;            \
        for (int ni = 0; ni < (int)(sizeof ns / sizeof ns[0]); ni++)          \
            for (int off = 0; off < 17; off++) {                              \
                const int64_t n = ns[ni];                                     \
                T *yo = y + off;                                              \
                for (int64_t i = 0; i < n; i++)                               \
                    e[i] = (x[off + i] - m) * a + s;                          \
                bnc_stream_norm_##SFX(yo, x + off, n, m, a, s);               \
                CHECK(memcmp(yo, e, (size_t)n * sizeof(T)) == 0, "stream_norm " #SFX); \
                memcpy(yo, x + off, (size_t)n * sizeof(T));                   \
                bnc_stream_norm_##SFX(yo, yo, n, m, a, s);                    \
                CHECK(memcmp(yo, e, (size_t)n * sizeof(T)) == 0, "stream_norm in place " #SFX); \
                for (int64_t i = 0; i < n; i++)                               \
                    e[i] = ((dy[off + i] - a) - (x[off + i] - m) * g) * s;    \
                bnc_stream_grad_##SFX(yo, dy + off, x + off, n, m, a, g, s);  \
                CHECK(memcmp(yo, e, (size_t)n * sizeof(T)) == 0, "stream_grad " #SFX); \
                memcpy(yo, dy + off, (size_t)n * sizeof(T));                  \
                bnc_stream_grad_##SFX(yo, yo, x + off, n, m, a, g, s);        \
                CHECK(memcmp(yo, e, (size_t)n * sizeof(T)) == 0, "stream_grad in place " #SFX); \
                for (int ci = 0; ci < (int)(sizeof cs / sizeof cs[0]); ci++) {    \
                    const int64_t C = cs[ci]; /* below a line: ordinary stores */ \
                    for (int64_t i = 0; i < n; i++)                           \
                        e[i] = (x[off + i] - dy[i % C]) * dy[100 + i % C] + dy[200 + i % C]; \
                    bnc_stream_rows_##SFX(yo, x + off, n, C, dy, dy + 100, dy + 200); \
                    CHECK(memcmp(yo, e, (size_t)n * sizeof(T)) == 0, "stream_rows " #SFX); \
                }                                                             \
            }                                                                 \
    } while (0)

static void test_stream_loops(void)
{
    static const int64_t ns[] = {0, 1, 15, 17, 500, 1023, 1024, 1025, 1039, 2048, 4100};
    static const int64_t cs[] = {3, 8, 16, 17, 64, 100}; /* channels of the rows */
    STREAM_CHECK(float, f32);
    STREAM_CHECK(double, f64);
}

/* The status and the sums of one exact-sums call (test_exact_grad_sums). */
static void check_exact_sums(const char *dt, int status, bnc_dims_t d, const double *got_g,
                             const double *got_gx, const double *want_g, const double *want_gx)
{
    CHECK(status == BNC_OK, "exact %s status", dt);
    for (int64_t c = 0; c < d.channels; c++)
        CHECK(got_g[c] == want_g[c] && got_gx[c] == want_gx[c],
              "%s (%lld,%lld,%lld): sums %g %g, want %g %g", dt, (long long)d.outer,
              (long long)d.channels, (long long)d.inner, got_g[c], got_gx[c], want_g[c],
              want_gx[c]);
}

/* Integer data, mean 0 and invstd 1: every partial sum of the backward's
 * reduction is an integer far below 2^24, so sum_dy and sum_dy_xhat must be
 * exact for every inner length (runs shorter and longer than the lanes,
 * masked tail windows, rows split into pieces) and thread count. */
static void test_exact_grad_sums(void)
{
    static const int64_t inner[] = {1, 5, 31, 32, 33, 49, 196, 255, 257, 1000, 5000, 70000};
    enum { C = 2 };
    float mf[C] = {0, 0}, sf[C] = {1, 1};
    double md[C] = {0, 0}, sd[C] = {1, 1};
    for (int ii = 0; ii < (int)(sizeof inner / sizeof inner[0]); ii++)
        for (int64_t N = 1; N <= 3; N += 2) {
            const bnc_dims_t d = {N, C, inner[ii]};
            const bnc_strides_t s = bnc_contiguous(d);
            const int64_t n = N * C * inner[ii];
            float *xf = malloc(sizeof(float) * (size_t)n), *gf = malloc(sizeof(float) * (size_t)n);
            double *xd = malloc(sizeof(double) * (size_t)n), *gd = malloc(sizeof(double) * (size_t)n);
            bnc_f16_t *xh = malloc(sizeof(bnc_f16_t) * (size_t)n);
            bnc_f16_t *gh = malloc(sizeof(bnc_f16_t) * (size_t)n);
            double want_g[C] = {0}, want_gx[C] = {0}, got_g[C], got_gx[C];
            for (int64_t i = 0; i < n; i++) {
                const int xv = (int)(urand() * 9) - 4, gv = (int)(urand() * 7) - 3;
                const int c = (int)(i / inner[ii] % C);
                xf[i] = (float)xv;
                gf[i] = (float)gv;
                xd[i] = xv;
                gd[i] = gv;
                xh[i] = bnc_f32_to_f16((float)xv);
                gh[i] = bnc_f32_to_f16((float)gv);
                want_g[c] += gv;
                want_gx[c] += gv * xv;
            }
            for (int nt = 1; nt <= 2; nt++) {
                check_exact_sums("f32", bnc_batchnorm_bwd_reduce_f32(d, gf, s, xf, s, mf, sf, got_g,
                                                                     got_gx, nt),
                                 d, got_g, got_gx, want_g, want_gx);
                check_exact_sums("f64", bnc_batchnorm_bwd_reduce_f64(d, gd, s, xd, s, md, sd, got_g,
                                                                     got_gx, nt),
                                 d, got_g, got_gx, want_g, want_gx);
                check_exact_sums("f16", bnc_batchnorm_bwd_reduce_f16(d, gh, s, xh, s, mf, sf, got_g,
                                                                     got_gx, nt),
                                 d, got_g, got_gx, want_g, want_gx);
            }
            free(xf);
            free(gf);
            free(xd);
            free(gd);
            free(xh);
            free(gh);
        }
}

int main(void)
{
    static const bnc_dims_t shapes[] = {
        {1, 1, 7},      {5, 3, 1},       {2, 1, 3},     {16, 8, 1},   {300, 5, 1},
        {4, 3, 5000},   {3, 2, 9000},    {8, 16, 49},   {2, 64, 3},   {2000, 4, 1},
        {1, 70, 2},     {37, 9, 123},    {900, 40, 1},  {2, 3, 4100}, {6, 130, 1},
    };
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
    test_f16_conversion();
    for (int isa = 2; isa >= 0; isa--) { /* every variant the CPU runs */
        bnc_limit_isa(isa);
        test_f16_bulk_conversion();
        test_f16_fused_passes();
        test_stream_loops();
    }
    bnc_limit_isa(-1);
    test_errors();
    test_numerics();
    test_exact_grad_sums();
    for (int si = 0; si < nshapes; si++)
        for (int layout = 0; layout < 4; layout++)
            for (int t = 0; t < 3; t++)
                run_case(shapes[si], layout, (enum dtype)t, 0.0, 1 + (si + layout) % 3);
    run_case((bnc_dims_t){50, 4, 60}, 0, F64, 1e8, 2);
    run_case((bnc_dims_t){500, 4, 1}, 0, F64, 1e8, 2);
    /* many blocks far from zero: Chan's merge must not lose the variance */
    run_case((bnc_dims_t){5000, 3, 1}, 0, F64, 1e8, 2);
    run_case((bnc_dims_t){8, 16, 1024}, 0, F64, 1e8, 2);
    run_case((bnc_dims_t){8, 16, 1024}, 0, F32, 1e4, 2);
    run_case((bnc_dims_t){50, 4, 60}, 0, F32, 1e4, 2);
    test_renorm_errors();
    for (int si = 0; si < nshapes; si++)
        for (int layout = 0; layout < 4; layout++)
            for (int t = 0; t < 3; t++)
                run_renorm_case(shapes[si], layout, (enum dtype)t, 1 + (si + layout) % 3);
    run_renorm_case((bnc_dims_t){32, 64, 60}, 0, F32, 2);  /* fused per-channel sweep */
    run_renorm_case((bnc_dims_t){3000, 40, 1}, 1, F64, 2); /* interleaved */
    test_fused_errors();
    test_fused_relu_edges();
    for (int si = 0; si < nshapes; si++)
        for (int layout = 0; layout < 4; layout++)
            for (int t = 0; t < 3; t++)
                for (int v = 0; v < 3; v++) /* ReLU + residual, ReLU, residual */
                    run_fused_case(shapes[si], layout, (enum dtype)t, v < 2, v != 1,
                                   1 + (si + layout + v) % 3);
    run_fused_case((bnc_dims_t){32, 64, 60}, 0, F32, 1, 1, 2);  /* per-channel sweep */
    run_fused_case((bnc_dims_t){3000, 40, 1}, 1, F64, 1, 1, 2); /* interleaved */
    run_fused_case((bnc_dims_t){3000, 16, 1}, 0, F16, 1, 1, 2); /* packed forward */
    if (bnc_openmp_enabled()) {
        static const bnc_dims_t tshapes[] = {
            {64, 1, 1000}, {4, 3, 20000}, {32, 64, 60}, {3000, 16, 1}, {2048, 3, 1}, {50, 5, 700},
        };
        for (int si = 0; si < 6; si++)
            for (int t = 0; t < 3; t++)
                check_thread_invariance(tshapes[si], si % 2 ? 1 : 0, (enum dtype)t);
    }
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("test_batchnorm: all checks passed (openmp=%d)\n", bnc_openmp_enabled());
    return 0;
}
