/* stream.c - STREAM-style copy bandwidth, the roofline of bnc's benchmarks.
 *
 * bench_copy_seconds() times dst[i] = src[i] over `bytes` bytes with
 * `threads` OpenMP threads (static, contiguous halves: the access pattern of
 * a memory-bound elementwise kernel) and returns the minimum over `repeats`.
 * Built into the C benchmark and, as a shared library, loaded by run.py.
 */
#define _GNU_SOURCE /* clock_gettime, madvise */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "stream.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Like NumPy (and cbench), ask for transparent huge pages from 4 MiB on:
 * otherwise the copy would measure TLB misses the kernels do not pay. */
static float *alloc_floats(int64_t n)
{
    size_t bytes = (size_t)n * sizeof(float);
    float *p = malloc(bytes);
#ifdef MADV_HUGEPAGE
    if (p && bytes >= (1u << 22)) {
        uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
        madvise((void *)a, (size_t)((uintptr_t)p + bytes - a), MADV_HUGEPAGE);
    }
#endif
    return p;
}

static void copy_span(float *restrict dst, const float *restrict src, int64_t n, int threads)
{
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t a = n * t / nt, b = n * (t + 1) / nt;
        memcpy(dst + a, src + a, (size_t)(b - a) * sizeof(float));
    }
#else
    (void)threads;
    memcpy(dst, src, (size_t)n * sizeof(float));
#endif
}

double bench_copy_seconds(size_t bytes, int threads, int repeats)
{
    int64_t n = (int64_t)(bytes / sizeof(float));
    float *src, *dst;
    double best = 1e30;
    if (n < 1)
        n = 1;
    src = alloc_floats(n);
    dst = alloc_floats(n);
    if (!src || !dst) {
        free(src);
        free(dst);
        return -1.0;
    }
    for (int64_t i = 0; i < n; i++) /* touch every page, the same way the copy will */
        src[i] = (float)(i & 1023);
    copy_span(dst, src, n, threads);
    for (int r = 0; r < repeats; r++) {
        double t0 = now();
        copy_span(dst, src, n, threads);
        double t = now() - t0;
        if (t < best)
            best = t;
    }
    free(src);
    free(dst);
    return best;
}
