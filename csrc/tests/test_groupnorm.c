/* test_groupnorm.c - C-only tests of the group norm kernels.
 *
 * Each kernel (f32, f64, f16; channels first and last) is compared with a plain
 * double-precision reference computed here from the same input values,
 * results must be bit-identical for 1..4 threads, and bad arguments must give
 * their status code.
 */
#include "testutil.h"

typedef struct {
    void *x, *dy, *w, *b, *y, *m, *s, *dx, *dw, *db;
} bufs_t;

typedef struct {
    int64_t N, C, HW, G;
    int cl;
} shape_t;

static int fwd(enum dtype t, shape_t d, bufs_t *q, double eps, int nt)
{
    if (t == F32)
        return bnc_groupnorm_fwd_f32(d.N, d.C, d.HW, d.G, d.cl, q->x, q->w, q->b, eps, q->y,
                                     q->m, q->s, nt);
    if (t == F64)
        return bnc_groupnorm_fwd_f64(d.N, d.C, d.HW, d.G, d.cl, q->x, q->w, q->b, eps, q->y,
                                     q->m, q->s, nt);
    return bnc_groupnorm_fwd_f16(d.N, d.C, d.HW, d.G, d.cl, q->x, q->w, q->b, eps, q->y, q->m,
                                 q->s, nt);
}

static int bwd(enum dtype t, shape_t d, bufs_t *q, int nt)
{
    if (t == F32)
        return bnc_groupnorm_bwd_f32(d.N, d.C, d.HW, d.G, d.cl, q->dy, q->x, q->w, q->m, q->s,
                                     q->dx, q->dw, q->db, nt);
    if (t == F64)
        return bnc_groupnorm_bwd_f64(d.N, d.C, d.HW, d.G, d.cl, q->dy, q->x, q->w, q->m, q->s,
                                     q->dx, q->dw, q->db, nt);
    return bnc_groupnorm_bwd_f16(d.N, d.C, d.HW, d.G, d.cl, q->dy, q->x, q->w, q->m, q->s,
                                 q->dx, q->dw, q->db, nt);
}

static void alloc(bufs_t *q, enum dtype t, shape_t d)
{
    size_t n = (size_t)(d.N * d.C * d.HW);
    q->x = malloc(n * dsize(t));
    q->dy = malloc(n * dsize(t));
    q->y = malloc(n * dsize(t));
    q->dx = malloc(n * dsize(t));
    q->w = malloc((size_t)d.C * psize(t));
    q->b = malloc((size_t)d.C * psize(t));
    q->dw = malloc((size_t)d.C * psize(t));
    q->db = malloc((size_t)d.C * psize(t));
    q->m = malloc((size_t)(d.N * d.G) * psize(t));
    q->s = malloc((size_t)(d.N * d.G) * psize(t));
}

static void release(bufs_t *q) { RELEASE_ALL(q); }

/* index of element (n, c, i) */
static int64_t at(shape_t d, int64_t n, int64_t c, int64_t i)
{
    return d.cl ? (n * d.HW + i) * d.C + c : (n * d.C + c) * d.HW + i;
}

static void run_case(enum dtype t, shape_t d, double loc, int nt)
{
    bufs_t q;
    const double eps = 1e-5;
    const int64_t n = d.N * d.C * d.HW, Cg = d.C / d.G, L = Cg * d.HW;
    const double tol = t == F64 ? 1e-12 : t == F32 ? 1e-5 : 2e-3, stol = t == F64 ? 1e-12 : 1e-5;
    alloc(&q, t, d);
    for (int64_t i = 0; i < n; i++) {
        put(t, q.x, i, loc + nrand());
        put(t, q.dy, i, nrand());
    }
    for (int64_t c = 0; c < d.C; c++) {
        pput(t, q.w, c, 0.5 + urand());
        pput(t, q.b, c, nrand());
    }
    CHECK(fwd(t, d, &q, eps, nt) == BNC_OK, "fwd status");
    CHECK(bwd(t, d, &q, nt) == BNC_OK, "bwd status");
    double *ry = malloc(sizeof(double) * (size_t)n), *rdx = malloc(sizeof(double) * (size_t)n);
    double *rsc = malloc(sizeof(double) * (size_t)n);
    double *rdw = calloc((size_t)d.C, sizeof(double)), *rdb = calloc((size_t)d.C, sizeof(double));
    double *rs = malloc(sizeof(double) * (size_t)(d.N * d.G));
    for (int64_t s = 0; s < d.N; s++)
        for (int64_t g = 0; g < d.G; g++) {
            double mean = 0, var = 0, s1 = 0, s2 = 0;
            const double x0 = get(t, q.x, at(d, s, g * Cg, 0));
            for (int64_t c = g * Cg; c < (g + 1) * Cg; c++)
                for (int64_t i = 0; i < d.HW; i++)
                    mean += get(t, q.x, at(d, s, c, i)) - x0;
            mean = x0 + mean / (double)L;
            for (int64_t c = g * Cg; c < (g + 1) * Cg; c++)
                for (int64_t i = 0; i < d.HW; i++) {
                    double v = get(t, q.x, at(d, s, c, i)) - mean;
                    var += v * v;
                }
            rs[s * d.G + g] = 1 / sqrt(var / (double)L + eps);
            const double sm = pget(t, q.m, s * d.G + g), ss = pget(t, q.s, s * d.G + g);
            for (int64_t c = g * Cg; c < (g + 1) * Cg; c++)
                for (int64_t i = 0; i < d.HW; i++) {
                    const int64_t k = at(d, s, c, i);
                    const double w = pget(t, q.w, c), xh = (get(t, q.x, k) - sm) * ss;
                    ry[k] = (get(t, q.x, k) - mean) * rs[s * d.G + g] * w + pget(t, q.b, c);
                    s1 += get(t, q.dy, k) * w;
                    s2 += get(t, q.dy, k) * w * xh;
                    rdw[c] += get(t, q.dy, k) * xh;
                    rdb[c] += get(t, q.dy, k);
                }
            for (int64_t c = g * Cg; c < (g + 1) * Cg; c++)
                for (int64_t i = 0; i < d.HW; i++) {
                    const int64_t k = at(d, s, c, i);
                    const double gk = get(t, q.dy, k) * pget(t, q.w, c);
                    const double xh = (get(t, q.x, k) - sm) * ss;
                    rdx[k] = ss * (gk - s1 / (double)L - xh * s2 / (double)L);
                    rsc[k] = ss * gk;
                }
        }
    double e;
    CHECK((e = relerr(t, 0, q.y, ry, NULL, n)) <= tol, "%s cl=%d y err %.2e", dname[t], d.cl, e);
    CHECK((e = relerr(t, 1, q.s, rs, NULL, d.N * d.G)) <= stol, "%s invstd err %.2e", dname[t], e);
    CHECK((e = relerr(t, 0, q.dx, rdx, rsc, n)) <= 10 * tol, "%s cl=%d dx err %.2e", dname[t],
          d.cl, e);
    CHECK((e = relerr(t, 1, q.dw, rdw, NULL, d.C)) <= 10 * stol, "%s dw err %.2e", dname[t], e);
    CHECK((e = relerr(t, 1, q.db, rdb, NULL, d.C)) <= stol, "%s db err %.2e", dname[t], e);

    /* thread invariance, bit for bit */
    for (int k = 1; k <= 4; k++) {
        bufs_t q2 = q;
        const size_t bytes = (size_t)n * dsize(t), sb = (size_t)(d.N * d.G) * psize(t);
        q2.y = malloc(bytes);
        q2.dx = malloc(bytes);
        q2.m = malloc(sb);
        q2.s = malloc(sb);
        q2.dw = malloc((size_t)d.C * psize(t));
        q2.db = malloc((size_t)d.C * psize(t));
        fwd(t, d, &q2, eps, k);
        CHECK(!memcmp(q2.y, q.y, bytes) && !memcmp(q2.m, q.m, sb) && !memcmp(q2.s, q.s, sb),
              "%s cl=%d fwd: %d threads differ", dname[t], d.cl, k);
        bwd(t, d, &q2, k);
        CHECK(!memcmp(q2.dx, q.dx, bytes) && !memcmp(q2.dw, q.dw, (size_t)d.C * psize(t)) &&
                  !memcmp(q2.db, q.db, (size_t)d.C * psize(t)),
              "%s cl=%d bwd: %d threads differ", dname[t], d.cl, k);
        free(q2.y), free(q2.dx), free(q2.m), free(q2.s), free(q2.dw), free(q2.db);
    }
    free(ry), free(rdx), free(rsc), free(rdw), free(rdb), free(rs);
    release(&q);
}

static void test_errors(void)
{
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8], s[4], m[4];
    CHECK(bnc_groupnorm_fwd_f32(0, 2, 2, 1, 0, x, NULL, NULL, 1e-5, y, m, s, 1) == BNC_ERR_SHAPE,
          "N 0");
    CHECK(bnc_groupnorm_fwd_f32(2, 4, 1, 3, 0, x, NULL, NULL, 1e-5, y, m, s, 1) == BNC_ERR_SHAPE,
          "C not a multiple of G");
    CHECK(bnc_groupnorm_fwd_f32(2, 4, 1, 0, 1, x, NULL, NULL, 1e-5, y, m, s, 1) == BNC_ERR_SHAPE,
          "G 0");
    CHECK(bnc_groupnorm_fwd_f32(2, 2, 2, 1, 0, NULL, NULL, NULL, 1e-5, y, m, s, 1) ==
              BNC_ERR_NULL, "x");
    CHECK(bnc_groupnorm_fwd_f32(2, 2, 2, 1, 0, x, NULL, NULL, 1e-5, NULL, m, s, 1) ==
              BNC_ERR_NULL, "y");
    CHECK(bnc_groupnorm_fwd_f32(2, 2, 2, 1, 0, x, NULL, NULL, 0.0, y, m, s, 1) == BNC_ERR_EPS,
          "eps");
    CHECK(bnc_groupnorm_fwd_f32(2, 2, 2, 1, 1, x, NULL, NULL, 1e-5, y, m, s, 0) ==
              BNC_ERR_THREADS, "nt");
    CHECK(bnc_groupnorm_bwd_f32(2, 2, 2, 1, 0, x, x, NULL, NULL, s, y, NULL, NULL, 1) ==
              BNC_ERR_NULL, "mean");
}

/* Instance norm is group norm with G = C: the same bits, plus the variance
 * (checked against a double two-pass) and the constant-statistics backward
 * dx = dy * w * invstd. */
static void test_instancenorm(int cl)
{
    enum { N = 3, C = 5, HW = 70 };
    static float x[N * C * HW], dy[N * C * HW], y[N * C * HW], yg[N * C * HW], dx[N * C * HW];
    float w[C], b[C], m[N * C], s[N * C], v[N * C], mg[N * C], sg[N * C], dw[C], db[C];
    shape_t d = {N, C, HW, C, cl};
    for (int i = 0; i < N * C * HW; i++) {
        x[i] = (float)(3.0 + 2.0 * urand());
        dy[i] = (float)urand();
    }
    for (int c = 0; c < C; c++) {
        w[c] = (float)(0.5 + urand());
        b[c] = (float)urand();
    }
    CHECK(bnc_instancenorm_fwd_f32(N, C, HW, cl, x, w, b, 1e-5, y, m, s, v, 2) == BNC_OK,
          "instancenorm fwd status");
    CHECK(bnc_groupnorm_fwd_f32(N, C, HW, C, cl, x, w, b, 1e-5, yg, mg, sg, 1) == BNC_OK,
          "groupnorm fwd status");
    CHECK(!memcmp(y, yg, sizeof y) && !memcmp(m, mg, sizeof m) && !memcmp(s, sg, sizeof s),
          "instance norm (cl=%d) differs from group norm with G = C", cl);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double mu = 0, ss = 0;
            for (int i = 0; i < HW; i++)
                mu += x[at(d, n, c, i)];
            mu /= HW;
            for (int i = 0; i < HW; i++)
                ss += (x[at(d, n, c, i)] - mu) * (x[at(d, n, c, i)] - mu);
            CHECK(fabs(v[n * C + c] - ss / HW) <= 1e-5 * ss / HW, "cl=%d var(%d, %d)", cl, n,
                  c);
        }
    CHECK(bnc_instancenorm_bwd_f32(N, C, HW, cl, dy, x, w, m, s, 0, dx, dw, db, 2) == BNC_OK,
          "instancenorm bwd status");
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) {
                int64_t j = at(d, n, c, i);
                CHECK(dx[j] == (dy[j] * w[c]) * s[n * C + c], "cl=%d frozen dx", cl);
            }
    CHECK(bnc_instancenorm_fwd_f32(N, C, HW, cl, x, w, b, -1.0, y, m, s, v, 1) == BNC_ERR_EPS,
          "instancenorm eps");
    CHECK(bnc_instancenorm_bwd_f32(N, C, HW, cl, dy, x, w, NULL, s, 1, dx, dw, db, 1) ==
              BNC_ERR_NULL,
          "instancenorm NULL mean");
}

/* Integer data, mean 0 and invstd 1: every partial sum of the backward is an
 * integer far below 2^24, so grad_bias = sum dy and grad_weight = sum dy * x
 * must come out exact, whatever the run's length: each element summed once
 * (short runs' masked tail windows, the folds every BNC_SUB elements). */
static void test_exact_sums(void)
{
    static const int64_t lens[] = {1,   2,   7,   15,  16,  17,  31,  32,  33,  63,  64,
                                   65,  100, 196, 255, 256, 257, 300, 511, 512, 513, 700,
                                   1025};
    enum { C = 3, MAXL = 1025 };
    static float xf[C * MAXL], gf[C * MAXL], dxf[C * MAXL];
    static double xd[C * MAXL], gd[C * MAXL], dxd[C * MAXL];
    static bnc_f16_t xh[C * MAXL], gh[C * MAXL], dxh[C * MAXL];
    float mf[C] = {0}, sf[C] = {1, 1, 1}, dwf[C], dbf[C];
    double md[C] = {0}, sd[C] = {1, 1, 1}, dwd[C], dbd[C];
    for (int li = 0; li < (int)(sizeof lens / sizeof lens[0]); li++) {
        const int64_t L = lens[li];
        double want_b[C] = {0}, want_w[C] = {0};
        for (int64_t i = 0; i < C * L; i++) {
            const int xv = (int)(urand() * 17) - 8, gv = (int)(urand() * 9) - 4;
            xd[i] = xv;
            gd[i] = gv;
            xf[i] = (float)xv;
            gf[i] = (float)gv;
            xh[i] = bnc_f32_to_f16((float)xv);
            gh[i] = bnc_f32_to_f16((float)gv);
            want_b[i / L] += gv;
            want_w[i / L] += gv * xv;
        }
        CHECK(bnc_groupnorm_bwd_f32(1, C, L, C, 0, gf, xf, NULL, mf, sf, dxf, dwf, dbf, 1) ==
                  BNC_OK, "exact f32 status");
        CHECK(bnc_groupnorm_bwd_f64(1, C, L, C, 0, gd, xd, NULL, md, sd, dxd, dwd, dbd, 1) ==
                  BNC_OK, "exact f64 status");
        for (int c = 0; c < C; c++) {
            CHECK(dbf[c] == want_b[c] && dwf[c] == want_w[c], "f32 run of %lld: sums %g %g, "
                  "want %g %g", (long long)L, dbf[c], dwf[c], want_b[c], want_w[c]);
            CHECK(dbd[c] == want_b[c] && dwd[c] == want_w[c], "f64 run of %lld: sums %g %g, "
                  "want %g %g", (long long)L, dbd[c], dwd[c], want_b[c], want_w[c]);
        }
        CHECK(bnc_groupnorm_bwd_f16(1, C, L, C, 0, gh, xh, NULL, mf, sf, dxh, dwf, dbf, 1) ==
                  BNC_OK, "exact f16 status");
        for (int c = 0; c < C; c++)
            CHECK(dbf[c] == want_b[c] && dwf[c] == want_w[c], "f16 run of %lld: sums %g %g, "
                  "want %g %g", (long long)L, dbf[c], dwf[c], want_b[c], want_w[c]);
    }
}

int main(void)
{
    rng_state = 11;
    static const int64_t shapes[][4] = {
        {1, 1, 1, 1}, {2, 6, 1, 3}, {3, 8, 17, 4}, {2, 12, 35, 1}, {2, 12, 35, 12},
        {1, 4, 5000, 2}, {5, 32, 81, 8}, {4, 64, 300, 32},
    };
    test_errors();
    test_exact_sums();
    test_instancenorm(0);
    test_instancenorm(1);
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++)
        for (int t = 0; t < 3; t++)
            for (int cl = 0; cl < 2; cl++) {
                shape_t d = {shapes[si][0], shapes[si][1], shapes[si][2], shapes[si][3], cl};
                run_case((enum dtype)t, d, 0.5, 1 + si % 3);
            }
    shape_t far = {4, 8, 300, 2, 0};
    run_case(F32, far, 1e4, 2);
    far.cl = 1;
    run_case(F32, far, 1e4, 2);
    if (failures) {
        fprintf(stderr, "test_groupnorm: %d failures\n", failures);
        return 1;
    }
    printf("test_groupnorm: all checks passed (openmp=%d)\n", bnc_openmp_enabled());
    return 0;
}
