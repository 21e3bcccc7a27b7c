/* cbench.c - bnc's batch norm timed from C, with no Python in the way.
 *
 * run.py's suite, timing rule, traffic model and bnc columns, on
 * caller-allocated contiguous buffers and the C API alone: run.py's bnc time
 * minus this one is the cost of the Python binding. See bench/README.md.
 * Build and run: make -C bench && ./bench/build/cbench --help
 */
#define _GNU_SOURCE /* sched_getaffinity, madvise, localtime_r, clock_gettime */
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bnc/bnc.h"
#include "stream.h"

#ifndef CBENCH_FLAGS /* set by the Makefile */
#define CBENCH_FLAGS "unknown"
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define COMPILER "gcc " __VERSION__
#elif defined(__VERSION__)
#define COMPILER __VERSION__
#else
#define COMPILER "unknown"
#endif

#define EPS 1e-5
#define MIN_REPEATS 5
#define MAX_REPEATS 50
#define MIN_SAMPLE_S 1e-3  /* calls faster than this are looped inside a sample */
#define L2_BYTES (1 << 20) /* the per-core L2 the traffic model assumes */
#define CACHE_LINE 64
#define MAX_THREADS 16 /* entries of --threads */

enum op { OP_TRAIN, OP_INFER, OP_BACKWARD, N_OPS };
static const char *const op_name[N_OPS] = {"train", "infer", "backward"};
enum dtype { F32, F64, F16 };
static const char *const dtype_name[] = {"float32", "float64", "float16"};
static const int64_t itemsize[] = {4, 8, 2};

/* A case: the logical shape, (N, C, H, W) or (N, C), and how it is stored. */
struct bcase {
    int64_t shape[4];
    int ndim;
    const char *layout; /* NCHW, NHWC (array N,H,W,C) or NC */
    enum dtype dt;
};
#define IMG(n, c, h, w, lay) {{n, c, h, w}, 4, lay, F32}
static const struct bcase full_suite[] = {
    IMG(32, 64, 56, 56, "NCHW"), IMG(32, 64, 56, 56, "NHWC"), IMG(8, 256, 14, 14, "NCHW"),
    IMG(8, 256, 14, 14, "NHWC"), IMG(4, 3, 224, 224, "NCHW"), IMG(4, 3, 224, 224, "NHWC"),
    IMG(64, 64, 112, 112, "NCHW"), IMG(64, 64, 112, 112, "NHWC"),
    {{256, 1024}, 2, "NC", F32}, {{16, 8}, 2, "NC", F32},
    {{32, 64, 56, 56}, 4, "NCHW", F64}, {{32, 64, 56, 56}, 4, "NCHW", F16},
};
static const struct bcase quick_suite[] = {
    IMG(32, 64, 56, 56, "NCHW"), IMG(32, 64, 56, 56, "NHWC"), IMG(8, 256, 14, 14, "NCHW"),
    {{256, 1024}, 2, "NC", F32},
};

/* One table row (and JSON record). */
struct row {
    const struct bcase *k;
    enum op op;
    int thr, factor, repeats, inner;
    int64_t nbytes, footprint;
    double med_ms, min_ms, gbs, copy_gbs, pct_copy, samples_ms[MAX_REPEATS];
};

/* The buffers of one case: out is y (train, infer) or dx (backward); the
 * per-channel arrays are double for float64 x, float otherwise. */
struct bufs {
    enum dtype dt;
    bnc_dims_t d;
    void *x, *dy, *out, *w, *b, *rm, *rv, *sm, *si, *sv, *dw, *db;
};

static void check(int status, const char *what)
{
    if (status != BNC_OK) {
        fprintf(stderr, "cbench: %s: %s (status %d)\n", what, bnc_strerror(status), status);
        exit(1);
    }
}

static void *xmalloc(int64_t bytes)
{
    void *p = malloc((size_t)bytes);
    if (!p) {
        fprintf(stderr, "cbench: out of memory (%lld bytes)\n", (long long)bytes);
        exit(1);
    }
#ifdef MADV_HUGEPAGE
    /* NumPy asks for transparent huge pages for arrays of 4 MiB and more;
     * so do we, or the comparison with run.py would measure the TLB. */
    if (bytes >= (1 << 22)) {
        uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
        madvise((void *)a, (size_t)((uintptr_t)p + (uintptr_t)bytes - a), MADV_HUGEPAGE);
    }
#endif
    return p;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* n values uniform in [lo, hi) from a 64-bit LCG, stored as dt. */
static void fill(void *p, enum dtype dt, int64_t n, double lo, double hi, uint64_t *s)
{
    for (int64_t i = 0; i < n; i++) {
        double v;
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        v = lo + (hi - lo) * ((double)(*s >> 11) / 9007199254740992.0);
        if (dt == F64)
            ((double *)p)[i] = v;
        else if (dt == F32)
            ((float *)p)[i] = (float)v;
        else
            ((bnc_f16_t *)p)[i] = bnc_f32_to_f16((float)v);
    }
}

/* run.py's minimal-traffic model: the bytes of the cache lines holding one
 * channel of x (its slab when inner > 1, else outer lines of min(C*isz, 64)),
 * and the bytes a call moves, in units of |x|. */
static int64_t footprint(bnc_dims_t d, enum dtype dt)
{
    int64_t isz = itemsize[dt], row = d.channels * isz;
    if (d.inner > 1)
        return d.outer * d.inner * isz;
    return d.outer * (row < CACHE_LINE ? row : CACHE_LINE);
}

static int traffic_factor(enum op op, int64_t slab)
{
    if (op == OP_TRAIN)
        return slab <= L2_BYTES ? 2 : 3;
    if (op == OP_BACKWARD)
        return 2 * slab <= L2_BYTES ? 3 : 5;
    return 2;
}

/* One call of op: the same three calls for every dtype. */
#define BNC_CALL(SFX)                                                                        \
    (op == OP_TRAIN                                                                          \
         ? bnc_batchnorm_fwd_train_##SFX(d, b->x, s, b->w, b->b, EPS, b->out, s, b->sm, b->si, \
                                         b->sv, thr)                                         \
     : op == OP_INFER                                                                        \
         ? bnc_batchnorm_fwd_eval_##SFX(d, b->x, s, b->w, b->b, b->rm, b->rv, EPS, b->out, s, \
                                        thr)                                                 \
         : bnc_batchnorm_bwd_train_##SFX(d, b->dy, s, b->x, s, b->w, b->sm, b->si, b->out, s, \
                                         b->dw, b->db, thr))

static int call(const struct bufs *b, enum op op, int thr)
{
    bnc_dims_t d = b->d;
    bnc_strides_t s = bnc_contiguous(d);
    return b->dt == F32 ? BNC_CALL(f32) : b->dt == F64 ? BNC_CALL(f64) : BNC_CALL(f16);
}

static void bufs_init(struct bufs *b, const struct bcase *k)
{
    enum dtype pdt = k->dt == F64 ? F64 : F32;
    void **params[] = {&b->w, &b->b, &b->rm, &b->rv, &b->sm, &b->si, &b->sv, &b->dw, &b->db};
    uint64_t seed = 12345;
    int64_t C = k->shape[1], n, xb;
    b->dt = k->dt;
    b->d = (bnc_dims_t){k->shape[0], C, 1};
    for (int i = 2; i < k->ndim; i++) { /* NHWC: H, W fold into outer */
        if (strcmp(k->layout, "NHWC") == 0)
            b->d.outer *= k->shape[i];
        else
            b->d.inner *= k->shape[i];
    }
    n = b->d.outer * C * b->d.inner;
    xb = n * itemsize[k->dt];
    b->x = xmalloc(xb);
    b->dy = xmalloc(xb);
    b->out = xmalloc(xb);
    for (size_t i = 0; i < sizeof params / sizeof *params; i++)
        *params[i] = xmalloc(C * itemsize[pdt]);
    fill(b->x, k->dt, n, 0.5 - 2.6, 0.5 + 2.6, &seed); /* mean 0.5, sd 1.5 */
    fill(b->dy, k->dt, n, -1.73, 1.73, &seed);         /* sd 1 */
    memset(b->out, 0, (size_t)xb);                     /* no page faults in the timings */
    fill(b->w, pdt, C, 0.5, 1.5, &seed);
    fill(b->b, pdt, C, -0.2, 0.2, &seed);
    fill(b->rm, pdt, C, 0.3, 0.7, &seed);
    fill(b->rv, pdt, C, 1.5, 3.0, &seed);
    /* the backward's saved statistics, outside every timing */
    check(call(b, OP_TRAIN, 1), "train (statistics for the backward)");
}

static void bufs_free(struct bufs *b)
{
    void *all[] = {b->x, b->dy, b->out, b->w, b->b, b->rm, b->rv, b->sm, b->si, b->sv, b->dw, b->db};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        free(all[i]);
}

/* Seconds per call over `inner` back-to-back calls. */
static double sample(const struct bufs *b, enum op op, int thr, int inner)
{
    double t0 = now();
    for (int i = 0; i < inner; i++)
        check(call(b, op, thr), op_name[op]);
    return (now() - t0) / inner;
}

static int clamp_repeats(double r)
{
    return r < MIN_REPEATS ? MIN_REPEATS : r > MAX_REPEATS ? MAX_REPEATS : (int)r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* run.py's rule: warm up (twice if a call takes under 0.25 s), loop calls
 * under 1 ms inside a sample, take as many samples as fill the budget. */
static void measure(struct row *r, const struct bufs *b, double budget)
{
    double est = sample(b, r->op, r->thr, 1), sorted[MAX_REPEATS];
    int m;
    if (est < 0.25)
        est = sample(b, r->op, r->thr, 1);
    r->inner = 1;
    if (est < MIN_SAMPLE_S) {
        double k = MIN_SAMPLE_S / (est > 1e-7 ? est : 1e-7);
        r->inner = k >= 10000 ? 10000 : (int)k + 1;
    }
    r->repeats = clamp_repeats(budget / (est * r->inner));
    for (int i = 0; i < r->repeats; i++)
        r->samples_ms[i] = 1e3 * sample(b, r->op, r->thr, r->inner);
    memcpy(sorted, r->samples_ms, (size_t)r->repeats * sizeof *sorted);
    qsort(sorted, (size_t)r->repeats, sizeof *sorted, cmp_double);
    m = r->repeats / 2;
    r->med_ms = r->repeats % 2 ? sorted[m] : 0.5 * (sorted[m - 1] + sorted[m]);
    r->min_ms = sorted[0];
}

/* Copy bandwidth in GB/s (2 * bytes / best time) at this size and thread count. */
static double copy_gbs(int64_t bytes, int thr, double budget)
{
    double t = bench_copy_seconds((size_t)bytes, thr, 1);
    if (t >= 0)
        t = bench_copy_seconds((size_t)bytes, thr, clamp_repeats(budget / (t > 1e-9 ? t : 1e-9)));
    if (t < 0) {
        fprintf(stderr, "cbench: out of memory in the copy benchmark\n");
        exit(1);
    }
    return 2.0 * (double)bytes / (t > 1e-9 ? t : 1e-9) / 1e9;
}

static void shape_label(char *buf, size_t n, const struct bcase *k)
{
    size_t len = 0;
    for (int i = 0; i < k->ndim && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%lld", i ? "x" : "", (long long)k->shape[i]);
}

static void print_row(const struct row *r)
{
    char shape[64], med[32], mn[32], model[8], pct[16];
    double v[2] = {r->med_ms, r->min_ms};
    char *out[2] = {med, mn};
    for (int i = 0; i < 2; i++) /* run.py's fmt_ms: 4-5 significant digits */
        snprintf(out[i], 32, "%.*f",
                 v[i] >= 1000 ? 0 : v[i] >= 100 ? 1 : v[i] >= 10 ? 2 : v[i] >= 1 ? 3 : 4, v[i]);
    shape_label(shape, sizeof shape, r->k);
    snprintf(model, sizeof model, "%dx", r->factor);
    snprintf(pct, sizeof pct, "%.0f%%", r->pct_copy);
    printf("%-9s  %-15s  %-6s  %-7s  %3d  %8s  %8s  %6.1f  %5s  %6s\n", op_name[r->op], shape,
           r->k->layout, dtype_name[r->k->dt], r->thr, med, mn, r->gbs, model, pct);
    fflush(stdout);
}

/* The first "model name" (x86), "Model" or "Hardware" (ARM) of /proc/cpuinfo. */
static void cpu_model(char *buf, size_t n)
{
    char line[512], *v;
    FILE *f = fopen("/proc/cpuinfo", "r");
    snprintf(buf, n, "unknown");
    while (f && fgets(line, sizeof line, f)) {
        if ((strncmp(line, "model name", 10) && strncmp(line, "Model", 5) &&
             strncmp(line, "Hardware", 8)) || !(v = strchr(line, ':')))
            continue;
        v += 1 + strspn(v + 1, " \t");
        v[strcspn(v, "\n")] = '\0';
        snprintf(buf, n, "%s", v);
        break;
    }
    if (f)
        fclose(f);
}

static void loadavg(char *buf, size_t n)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double a[3];
    if (f && fscanf(f, "%lf %lf %lf", &a[0], &a[1], &a[2]) == 3)
        snprintf(buf, n, "%.2f %.2f %.2f", a[0], a[1], a[2]);
    else
        snprintf(buf, n, "unknown");
    if (f)
        fclose(f);
}

static int usable_cores(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
#endif
    return (int)sysconf(_SC_NPROCESSORS_ONLN);
}

static void json_str(FILE *f, const char *key, const char *s)
{
    fprintf(f, "\"%s\": \"", key);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", (unsigned)*s);
        else
            fputc(*s, f);
    }
    fprintf(f, "\", ");
}

static void write_json(const char *path, const char *date, const char *cpu, int quick,
                       double budget, const struct row *rows, int nrows)
{
    char shape[64];
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fprintf(f, "{\"info\": {");
    json_str(f, "date", date);
    json_str(f, "machine", cpu);
    json_str(f, "compiler", COMPILER);
    json_str(f, "cflags", CBENCH_FLAGS);
    json_str(f, "bnc", bnc_version());
    fprintf(f, "\"cores\": %ld, \"usable_cores\": %d, \"bnc_openmp\": %d, \"suite\": \"%s\", "
               "\"budget_s\": %g, \"l2_model_bytes\": %d},\n \"results\": [",
            sysconf(_SC_NPROCESSORS_ONLN), usable_cores(), bnc_openmp_enabled(),
            quick ? "quick" : "full", budget, L2_BYTES);
    for (int i = 0; i < nrows; i++) {
        const struct row *r = &rows[i];
        shape_label(shape, sizeof shape, r->k);
        fprintf(f, "%s\n  {\"op\": \"%s\", \"shape\": \"%s\", \"layout\": \"%s\", \"dtype\": \"%s\", "
                   "\"threads\": %d, \"nbytes\": %lld, \"channel_footprint_bytes\": %lld, "
                   "\"traffic_factor\": %d, \"median_ms\": %.6g, \"min_ms\": %.6g, "
                   "\"repeats\": %d, \"inner\": %d, \"GBs\": %.6g, \"copy_GBs\": %.6g, "
                   "\"pct_copy\": %.6g, \"samples_ms\": [",
                i ? "," : "", op_name[r->op], shape, r->k->layout, dtype_name[r->k->dt], r->thr,
                (long long)r->nbytes, (long long)r->footprint, r->factor, r->med_ms, r->min_ms,
                r->repeats, r->inner, r->gbs, r->copy_gbs, r->pct_copy);
        for (int j = 0; j < r->repeats; j++)
            fprintf(f, "%s%.6g", j ? ", " : "", r->samples_ms[j]);
        fprintf(f, "]}");
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static void usage(FILE *f, int status)
{
    fprintf(f, "usage: cbench [--quick] [--threads 1,2] [--budget SEC] [--json PATH] [--help]\n"
               "Times bnc's batch norm C kernels on run.py's suite (see bench/README.md).\n"
               "  --quick       4 float32 cases, budget 0.1 s\n"
               "  --threads L   comma list of thread counts (default: 1 and the usable cores)\n"
               "  --budget SEC  time one measurement aims at (default 0.3, quick 0.1);\n"
               "                it sets the repeat count, clamped to [%d, %d]\n"
               "  --json PATH   write the raw rows (every sample) as JSON\n",
            MIN_REPEATS, MAX_REPEATS);
    exit(status);
}

static void parse_args(int argc, char **argv, int *quick, int *thr, int *nthr, double *budget,
                       const char **json)
{
    *budget = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        char *end = NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            usage(stdout, 0);
        if (!strcmp(a, "--quick")) {
            *quick = 1;
            continue;
        }
        if (!strcmp(a, "--budget")) {
            *budget = strtod(v, &end);
            bad = *end || !(*budget > 0);
        } else if (!strcmp(a, "--json")) {
            *json = v;
            bad = !*v;
        } else if (!strcmp(a, "--threads")) {
            bad = !*v;
            for (const char *p = v; *p && !bad; p = *end ? end + 1 : end) {
                long t = strtol(p, &end, 10);
                bad = end == p || (*end && *end != ',') || t < 1 || t > 4096 || *nthr == MAX_THREADS;
                if (!bad)
                    thr[(*nthr)++] = (int)t;
            }
        } else {
            fprintf(stderr, "cbench: unknown option '%s'\n", a);
            usage(stderr, 2);
        }
        if (bad) {
            fprintf(stderr, "cbench: bad value for %s: '%s'\n", a, v);
            usage(stderr, 2);
        }
        i++;
    }
    if (*budget < 0)
        *budget = *quick ? 0.1 : 0.3;
    if (*nthr == 0) {
        thr[(*nthr)++] = 1;
        if (usable_cores() > 1)
            thr[(*nthr)++] = usable_cores();
    }
}

int main(int argc, char **argv)
{
    int quick = 0, thr[MAX_THREADS], nthr = 0, ncases, nrows = 0;
    double budget, t_start = now();
    const char *json = NULL;
    const struct bcase *suite;
    struct row *rows;
    char date[64], cpu[256], load[64], thrs[128] = "", head[256];
    time_t tnow = time(NULL);
    struct tm tm;

    parse_args(argc, argv, &quick, thr, &nthr, &budget, &json);
    suite = quick ? quick_suite : full_suite;
    ncases = quick ? (int)(sizeof quick_suite / sizeof *quick_suite)
                   : (int)(sizeof full_suite / sizeof *full_suite);
    rows = xmalloc((int64_t)ncases * N_OPS * nthr * (int64_t)sizeof *rows);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S%z", localtime_r(&tnow, &tm));
    cpu_model(cpu, sizeof cpu);
    loadavg(load, sizeof load);
    for (int t = 0; t < nthr; t++)
        snprintf(thrs + strlen(thrs), sizeof thrs - strlen(thrs), "%s%d", t ? "," : "", thr[t]);

    printf("bnc batch-norm benchmark, compiled C (no Python)\n");
    printf("  date      %s; load average %s\n", date, load);
    printf("  machine   %s, %ld cores (%d usable)\n", cpu, sysconf(_SC_NPROCESSORS_ONLN),
           usable_cores());
    printf("  compiler  %s; flags %s\n", COMPILER, CBENCH_FLAGS);
    printf("  bnc       %s  openmp_enabled=%d  default threads=%d\n", bnc_version(),
           bnc_openmp_enabled(), bnc_default_threads());
    printf("  suite     %s, threads %s, budget %g s per measurement, %d..%d timed repeats after "
           "warm-up\n", quick ? "quick" : "full", thrs, budget, MIN_REPEATS, MAX_REPEATS);
    printf("Columns: ms per C call on preallocated buffers (median and min over repeats; sub-ms "
           "calls are looped\n  and averaged per sample). infer compares with run.py's "
           "infer:out row (no allocation).\n");
    printf("  GB/s: bytes under the minimal-traffic model (model = bytes moved / |x|; L2 = %d "
           "KiB) / min time.\n", L2_BYTES / 1024);
    printf("  %%copy: GB/s as a percent of a copy bandwidth at |x| bytes with thr threads "
           "(bench_copy_seconds, 2*|x| / min time).\n\n");
    snprintf(head, sizeof head, "%-9s  %-15s  %-6s  %-7s  %3s  %8s  %8s  %6s  %5s  %6s", "op",
             "shape", "layout", "dtype", "thr", "med ms", "min ms", "GB/s", "model", "%copy");
    printf("%s\n", head);
    memset(head, '-', strlen(head));
    printf("%s\n", head);

    for (int c = 0; c < ncases; c++) {
        struct bufs b;
        double copy[MAX_THREADS];
        int64_t nbytes, slab;
        bufs_init(&b, &suite[c]);
        nbytes = b.d.outer * b.d.channels * b.d.inner * itemsize[b.dt];
        slab = footprint(b.d, b.dt);
        for (int t = 0; t < nthr; t++)
            copy[t] = copy_gbs(nbytes, thr[t], budget);
        for (int op = 0; op < N_OPS; op++) {
            for (int t = 0; t < nthr; t++) {
                struct row *r = &rows[nrows++];
                *r = (struct row){.k = &suite[c], .op = (enum op)op, .thr = thr[t],
                                  .nbytes = nbytes, .footprint = slab, .copy_gbs = copy[t]};
                r->factor = traffic_factor(r->op, slab);
                measure(r, &b, budget);
                r->gbs = (double)r->factor * (double)nbytes / (r->min_ms * 1e-3) / 1e9;
                r->pct_copy = 100.0 * r->gbs / r->copy_gbs;
                print_row(r);
            }
        }
        printf("\n");
        bufs_free(&b);
    }
    loadavg(load, sizeof load);
    printf("total %.0f s; load average at the end %s\n", now() - t_start, load);
    if (json) {
        write_json(json, date, cpu, quick, budget, rows, nrows);
        fprintf(stderr, "raw results written to %s\n", json);
    }
    free(rows);
    return 0;
}
