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

/* ---- a seeded generator (each test file sets rng_state) ---- */

static uint64_t rng_state = 42;
static double urand(void) /* uniform in [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-53;
}
static double nrand(void) { return sqrt(-2 * log(1 - urand())) * cos(6.283185307179586 * urand()); }

#endif /* BNC_TESTUTIL_H */
