/* testutil.h - helpers shared by the C-only tests: a failure counter and
 * CHECK, data of any dtype read back as double, a seeded generator. */
#ifndef BNC_TESTUTIL_H
#define BNC_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnc/bnc.h"

static int failures = 0;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            failures++;                                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                             \
            fprintf(stderr, "\n");                                    \
        }                                                             \
    } while (0)

enum dtype { F32, F64, F16 };
static const char *dname[] = {"f32", "f64", "f16"};
static size_t dsize(enum dtype t) { return t == F64 ? 8 : t == F32 ? 4 : 2; }

/* ---- data in any dtype, read back as double ---- */

static void put(enum dtype t, void *buf, int64_t i, double v)
{
    if (t == F32)
        ((float *)buf)[i] = (float)v;
    else if (t == F64)
        ((double *)buf)[i] = v;
    else
        ((bnc_f16_t *)buf)[i] = bnc_f32_to_f16((float)v);
}

static double get(enum dtype t, const void *buf, int64_t i)
{
    if (t == F32)
        return ((const float *)buf)[i];
    if (t == F64)
        return ((const double *)buf)[i];
    return bnc_f16_to_f32(((const bnc_f16_t *)buf)[i]);
}

/* per-channel / per-row arrays: float for f32 and f16, double for f64 */
static inline size_t psize(enum dtype t) { return t == F64 ? 8 : 4; }
static inline void pput(enum dtype t, void *buf, int64_t i, double v) { put(t == F64 ? F64 : F32, buf, i, v); }
static inline double pget(enum dtype t, const void *buf, int64_t i) { return get(t == F64 ? F64 : F32, buf, i); }

/* norm-wise relative error of got (dtype t, or per-channel/row if per) vs
 * ref, relative to the larger of |ref| and |scale| (scale NULL: ref), as a
 * gradient can cancel to near zero */
static inline double relerr(enum dtype t, int per, const void *got, const double *ref,
                     const double *scale, int64_t n)
{
    double num = 0, den = 0, dsc = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = per ? pget(t, got, i) : get(t, got, i);
        num += (g - ref[i]) * (g - ref[i]);
        den += ref[i] * ref[i];
        if (scale)
            dsc += scale[i] * scale[i];
    }
    den = den > dsc ? den : dsc;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* frees every pointer of a struct made only of pointers */
#define RELEASE_ALL(q)                                                \
    do {                                                              \
        void **p_ = (void **)(q);                                     \
        for (size_t i_ = 0; i_ < sizeof *(q) / sizeof(void *); i_++)  \
            free(p_[i_]);                                             \
    } while (0)

/* ---- a seeded generator (each test file sets rng_state) ---- */

static uint64_t rng_state = 42;
static double urand(void) /* uniform in [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-53;
}
static double nrand(void) { return sqrt(-2 * log(1 - urand())) * cos(6.283185307179586 * urand()); }

#endif /* BNC_TESTUTIL_H */
