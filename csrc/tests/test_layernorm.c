/* test_layernorm.c - C-only tests of the layer norm and RMS norm kernels.
 *
 * Each kernel is compared with a plain double-precision reference computed
 * here from the same input values (f32, f64, f16; short, tailed and long
 * rows), results must be bit-identical for 1..4 threads, and bad arguments
 * must give their status code.
 */
#include "testutil.h"

typedef struct {
    void *x, *dy, *w, *b, *y, *m, *s, *dx, *dw, *db;
} bufs_t;

static int fwd(enum dtype t, int rms, int64_t R, int64_t D, bufs_t *q, double eps, int nt)
{
    if (t == F32)
        return rms ? bnc_rmsnorm_fwd_f32(R, D, q->x, q->w, eps, q->y, q->s, nt)
                   : bnc_layernorm_fwd_f32(R, D, q->x, q->w, q->b, eps, q->y, q->m, q->s, nt);
    if (t == F64)
        return rms ? bnc_rmsnorm_fwd_f64(R, D, q->x, q->w, eps, q->y, q->s, nt)
                   : bnc_layernorm_fwd_f64(R, D, q->x, q->w, q->b, eps, q->y, q->m, q->s, nt);
    return rms ? bnc_rmsnorm_fwd_f16(R, D, q->x, q->w, eps, q->y, q->s, nt)
               : bnc_layernorm_fwd_f16(R, D, q->x, q->w, q->b, eps, q->y, q->m, q->s, nt);
}

static int bwd(enum dtype t, int rms, int64_t R, int64_t D, bufs_t *q, int nt)
{
    if (t == F32)
        return rms ? bnc_rmsnorm_bwd_f32(R, D, q->dy, q->x, q->w, q->s, q->dx, q->dw, nt)
                   : bnc_layernorm_bwd_f32(R, D, q->dy, q->x, q->w, q->m, q->s, q->dx, q->dw,
                                           q->db, nt);
    if (t == F64)
        return rms ? bnc_rmsnorm_bwd_f64(R, D, q->dy, q->x, q->w, q->s, q->dx, q->dw, nt)
                   : bnc_layernorm_bwd_f64(R, D, q->dy, q->x, q->w, q->m, q->s, q->dx, q->dw,
                                           q->db, nt);
    return rms ? bnc_rmsnorm_bwd_f16(R, D, q->dy, q->x, q->w, q->s, q->dx, q->dw, nt)
               : bnc_layernorm_bwd_f16(R, D, q->dy, q->x, q->w, q->m, q->s, q->dx, q->dw,
                                       q->db, nt);
}

static void alloc(bufs_t *q, enum dtype t, int64_t R, int64_t D)
{
    size_t n = (size_t)(R * D);
    q->x = malloc(n * dsize(t));
    q->dy = malloc(n * dsize(t));
    q->y = malloc(n * dsize(t));
    q->dx = malloc(n * dsize(t));
    q->w = malloc((size_t)D * psize(t));
    q->b = malloc((size_t)D * psize(t));
    q->dw = malloc((size_t)D * psize(t));
    q->db = malloc((size_t)D * psize(t));
    q->m = malloc((size_t)R * psize(t));
    q->s = malloc((size_t)R * psize(t));
}

static void release(bufs_t *q) { RELEASE_ALL(q); }

static void run_case(enum dtype t, int rms, int64_t R, int64_t D, double loc, int nt)
{
    bufs_t q;
    const double eps = 1e-5, n = (double)R * (double)D;
    const double tol = t == F64 ? 1e-12 : t == F32 ? 1e-5 : 2e-3, stol = t == F64 ? 1e-12 : 1e-5;
    alloc(&q, t, R, D);
    for (int64_t i = 0; i < R * D; i++) {
        put(t, q.x, i, loc + nrand());
        put(t, q.dy, i, nrand());
    }
    for (int64_t i = 0; i < D; i++) {
        pput(t, q.w, i, 0.5 + urand());
        pput(t, q.b, i, nrand());
    }
    CHECK(fwd(t, rms, R, D, &q, eps, nt) == BNC_OK, "fwd status");
    CHECK(bwd(t, rms, R, D, &q, nt) == BNC_OK, "bwd status");
    double *ry = malloc(sizeof(double) * (size_t)n), *rdx = malloc(sizeof(double) * (size_t)n);
    double *rdw = calloc((size_t)D, sizeof(double)), *rdb = calloc((size_t)D, sizeof(double));
    double *rs = malloc(sizeof(double) * (size_t)R), *rsc = malloc(sizeof(double) * (size_t)n);
    for (int64_t r = 0; r < R; r++) {
        double mean = 0, var = 0, s1 = 0, s2 = 0;
        const int64_t o = r * D;
        if (!rms) { /* shifted by the row's first value: exact enough far from zero */
            const double x0 = get(t, q.x, o);
            for (int64_t i = 0; i < D; i++)
                mean += get(t, q.x, o + i) - x0;
            mean = x0 + mean / (double)D;
        }
        for (int64_t i = 0; i < D; i++) {
            double d = get(t, q.x, o + i) - mean;
            var += d * d;
        }
        var /= (double)D;
        rs[r] = 1 / sqrt(var + eps);
        /* the backward uses the kernel's saved statistics, as a framework would */
        double sm = rms ? 0 : pget(t, q.m, r), ss = pget(t, q.s, r);
        for (int64_t i = 0; i < D; i++) {
            double w = pget(t, q.w, i), b = rms ? 0 : pget(t, q.b, i);
            ry[o + i] = (get(t, q.x, o + i) - mean) * rs[r] * w + b;
            double g = get(t, q.dy, o + i) * w, xh = (get(t, q.x, o + i) - sm) * ss;
            s1 += g;
            s2 += g * xh;
        }
        for (int64_t i = 0; i < D; i++) {
            double g = get(t, q.dy, o + i) * pget(t, q.w, i);
            double xh = (get(t, q.x, o + i) - sm) * ss;
            rdx[o + i] = ss * (g - (rms ? 0 : s1 / (double)D) - xh * s2 / (double)D);
            rsc[o + i] = ss * g;
            rdw[i] += get(t, q.dy, o + i) * xh;
            rdb[i] += get(t, q.dy, o + i);
        }
    }
    double e;
    CHECK((e = relerr(t, 0, q.y, ry, NULL, R * D)) <= tol, "%s rms=%d %lldx%lld y err %.2e",
          dname[t], rms, (long long)R, (long long)D, e);
    CHECK((e = relerr(t, 1, q.s, rs, NULL, R)) <= stol, "%s rms=%d invstd err %.2e", dname[t], rms, e);
    CHECK((e = relerr(t, 0, q.dx, rdx, rsc, R * D)) <= 10 * tol, "%s rms=%d %lldx%lld dx err %.2e",
          dname[t], rms, (long long)R, (long long)D, e);
    CHECK((e = relerr(t, 1, q.dw, rdw, NULL, D)) <= stol, "%s rms=%d dw err %.2e", dname[t], rms, e);
    if (!rms)
        CHECK((e = relerr(t, 1, q.db, rdb, NULL, D)) <= stol, "%s db err %.2e", dname[t], e);

    /* thread invariance, bit for bit */
    for (int k = 1; k <= 4; k++) {
        bufs_t q2 = q;
        size_t bytes = (size_t)(R * D) * dsize(t);
        q2.y = malloc(bytes);
        q2.dx = malloc(bytes);
        q2.m = malloc((size_t)R * psize(t));
        q2.s = malloc((size_t)R * psize(t));
        q2.dw = malloc((size_t)D * psize(t));
        q2.db = malloc((size_t)D * psize(t));
        fwd(t, rms, R, D, &q2, eps, k);
        memcpy(q2.s, q.s, (size_t)R * psize(t)); /* same saved stats for the bwd */
        if (!rms)
            memcpy(q2.m, q.m, (size_t)R * psize(t));
        bwd(t, rms, R, D, &q2, k);
        CHECK(!memcmp(q2.y, q.y, bytes) && !memcmp(q2.dx, q.dx, bytes) &&
                  !memcmp(q2.dw, q.dw, (size_t)D * psize(t)) &&
                  (rms || !memcmp(q2.db, q.db, (size_t)D * psize(t))),
              "%s rms=%d %lldx%lld: %d threads differ", dname[t], rms, (long long)R,
              (long long)D, k);
        free(q2.y), free(q2.dx), free(q2.m), free(q2.s), free(q2.dw), free(q2.db);
    }
    free(ry), free(rdx), free(rdw), free(rdb), free(rs), free(rsc);
    release(&q);
}

static void test_errors(void)
{
    float x[4] = {1, 2, 3, 4}, y[4], s[2], m[2];
    CHECK(bnc_layernorm_fwd_f32(0, 2, x, NULL, NULL, 1e-5, y, m, s, 1) == BNC_ERR_SHAPE, "rows 0");
    CHECK(bnc_layernorm_fwd_f32(2, -1, x, NULL, NULL, 1e-5, y, m, s, 1) == BNC_ERR_SHAPE, "D < 0");
    CHECK(bnc_layernorm_fwd_f32(2, 2, NULL, NULL, NULL, 1e-5, y, m, s, 1) == BNC_ERR_NULL, "x");
    CHECK(bnc_layernorm_fwd_f32(2, 2, x, NULL, NULL, 1e-5, NULL, m, s, 1) == BNC_ERR_NULL, "y");
    CHECK(bnc_layernorm_fwd_f32(2, 2, x, NULL, NULL, 0.0, y, m, s, 1) == BNC_ERR_EPS, "eps 0");
    CHECK(bnc_rmsnorm_fwd_f32(2, 2, x, NULL, NAN, y, s, 1) == BNC_ERR_EPS, "eps nan");
    CHECK(bnc_layernorm_fwd_f32(2, 2, x, NULL, NULL, 1e-5, y, m, s, 0) == BNC_ERR_THREADS, "nt");
    CHECK(bnc_layernorm_bwd_f32(2, 2, x, x, NULL, NULL, s, y, NULL, NULL, 1) == BNC_ERR_NULL,
          "mean");
    CHECK(bnc_rmsnorm_bwd_f32(2, 2, NULL, x, NULL, s, y, NULL, 1) == BNC_ERR_NULL, "dy");
}

int main(void)
{
    rng_state = 7;
    static const int64_t shapes[][2] = {
        {1, 1}, {3, 1}, {4, 7}, {37, 129}, {300, 257}, {5, 1000}, {2, 20000}, {130, 3},
        {2000, 16}, {64, 768},
    };
    test_errors();
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++)
        for (int t = 0; t < 3; t++)
            for (int rms = 0; rms < 2; rms++)
                run_case((enum dtype)t, rms, shapes[si][0], shapes[si][1], 0.5, 1 + si % 3);
    run_case(F32, 0, 16, 300, 1e4, 2); /* far from zero */
    run_case(F64, 0, 16, 300, 1e6, 2);
    if (failures) {
        fprintf(stderr, "test_layernorm: %d failures\n", failures);
        return 1;
    }
    printf("test_layernorm: all checks passed (openmp=%d)\n", bnc_openmp_enabled());
    return 0;
}
