/* internal.h - private helpers of the bnc C core (never seen by Cython). */
#ifndef BNC_INTERNAL_H
#define BNC_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bnc/bnc.h"

#define BNC_CAT_(a, b) a##b
#define BNC_CAT(a, b) BNC_CAT_(a, b)

/* Work partition. These depend on nothing but the shape, so every thread
 * count reduces the same blocks in the same order (bit-identical results). */
#define BNC_BLOCK 4096          /* elements reduced two-pass while in L1 */
#define BNC_MIN_ROWS 16         /* rows per block in the interleaved layout */
#define BNC_PIECES 64           /* aim for at least this many work items */
#define BNC_SERIAL_BELOW 32768  /* fewer elements than this: no parallel region */

/* Hot loops are compiled for several vector ISAs and picked at load time
 * (GCC's target_clones on x86-64 Linux). The loops fix their summation order
 * in the source (explicit lanes) and the build forbids contraction into FMA
 * (-ffp-contract=off), so every variant computes the same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && !defined(BNC_NO_CLONES)
#define BNC_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BNC_HOT
#endif

/* Lanes of the contiguous reductions, and their fixed pairwise fold. */
#define BNC_LANES 32

static inline double bnc_lanes_sum(double *a)
{
    for (int w = BNC_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            a[l] += a[l + w];
    return a[0];
}

/* ---- float16 <-> float32, round to nearest even ---- */

static inline float bnc_half_to_float(bnc_f16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else {
        f = (float)man * 0x1p-24f; /* zero or subnormal, exact */
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline bnc_f16_t bnc_float_to_half(float f)
{
    uint32_t x, ax, sign;
    memcpy(&x, &f, sizeof x);
    sign = (x >> 16) & 0x8000u;
    ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: keep it quiet and keep the top payload bits */
        return (bnc_f16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return (bnc_f16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: subnormal or zero */
        float a, t;
        memcpy(&a, &ax, sizeof a);
        t = a * 0x1p24f;              /* exact: units of 2^-24 */
        t = (t + 0x1p23f) - 0x1p23f;  /* round to an integer, ties to even */
        return (bnc_f16_t)(sign | (uint32_t)t);
    }
    ax += 0xfffu + ((ax >> 13) & 1u); /* round the 13 dropped bits, ties to even */
    return (bnc_f16_t)(sign | ((ax - 0x38000000u) >> 13));
}

/* ---- per-channel moments, merged with Chan et al.'s formula ---- */

typedef struct bnc_moments {
    double n, mean, m2; /* count, mean, sum of squared deviations */
} bnc_moments_t;

static inline bnc_moments_t bnc_moments_merge(bnc_moments_t a, bnc_moments_t b)
{
    bnc_moments_t r;
    double n = a.n + b.n, delta;
    if (b.n == 0)
        return a;
    if (a.n == 0)
        return b;
    delta = b.mean - a.mean;
    r.n = n;
    r.mean = a.mean + delta * (b.n / n);
    r.m2 = a.m2 + b.m2 + delta * delta * (a.n * b.n / n);
    return r;
}

/* ---- the canonical view and its work plan ---- */

/* How a channel's data is cut into blocks, and blocks into chunks.
 * Slab layout (inner > 1, or strided channels): per channel, a block is
 * `rows` consecutive outer rows of the whole inner run, or, when inner is
 * long, one of `pieces` parts of one row. Interleaved layout (inner == 1,
 * unit channel strides): a block is `rows` rows of all channels. A chunk is a
 * run of consecutive blocks; chunk j holds blocks [j*nblocks/nchunks, ...). */
typedef struct bnc_plan {
    int interleaved;   /* 1: rows of C interleaved channels */
    int64_t outer, channels, inner;
    int64_t rows;      /* outer rows per block */
    int64_t pieces;    /* parts per row (slab layout, long rows) */
    int64_t nblocks;   /* blocks per channel (slab) or in total (interleaved) */
    int64_t nchunks;   /* chunks per channel (slab) or in total (interleaved) */
} bnc_plan_t;

/* Block range [*b0, *b1) of chunk j. */
static inline void bnc_chunk_blocks(const bnc_plan_t *p, int64_t j, int64_t *b0,
                                    int64_t *b1)
{
    *b0 = j * p->nblocks / p->nchunks;
    *b1 = (j + 1) * p->nblocks / p->nchunks;
}

/* Outer rows [*r0, *r1) and inner range [*i0, *i1) of block b. */
static inline void bnc_block_extent(const bnc_plan_t *p, int64_t b, int64_t *r0,
                                    int64_t *r1, int64_t *i0, int64_t *i1)
{
    if (p->pieces > 1) {
        int64_t row = b / p->pieces, piece = b % p->pieces;
        *r0 = row;
        *r1 = row + 1;
        *i0 = piece * p->inner / p->pieces;
        *i1 = (piece + 1) * p->inner / p->pieces;
    } else {
        *r0 = b * p->rows;
        *r1 = *r0 + p->rows < p->outer ? *r0 + p->rows : p->outer;
        *i0 = 0;
        *i1 = p->interleaved ? 1 : p->inner;
    }
}

void bnc_plan_make(bnc_plan_t *p, bnc_dims_t d, int interleaved);

/* ---- the parallel sweep every kernel is built on ---- *
 * A kernel is up to three phases over the plan's work items:
 *   reduce(item) -> partial results (`width` doubles per channel and chunk),
 *   finalize(channels c0..c1-1): fold their partials in chunk order,
 *   apply(item): the elementwise pass.
 * Slab layout: an item is (channel, chunk). Interleaved layout: an item is a
 * chunk of rows covering every channel. When there are enough channels, each
 * thread takes whole channels and runs reduce, finalize and apply on one
 * channel back to back (its slab is still in cache); otherwise the phases run
 * one after the other over all items, finalize over ranges of at most
 * BNC_FINAL_CHANNELS channels. Both orders compute identical bits: every
 * channel's partials are folded the same way whatever range it is in. */
#define BNC_FINAL_CHANNELS 64

/* Partial w of chunk j of channel c is at base[c*channel + j*chunk + w*field]. */
typedef struct bnc_parts {
    const double *base;
    int64_t channel, chunk, field;
} bnc_parts_t;

typedef struct bnc_sweep {
    const bnc_plan_t *plan;
    int width; /* doubles per partial; 0: no reduce phase */
    void (*reduce)(void *ctx, int64_t c, int64_t j, double *part);
    void (*finalize)(void *ctx, int64_t c0, int64_t c1, bnc_parts_t parts);
    void (*apply)(void *ctx, int64_t c, int64_t j); /* may be NULL */
    void *ctx;
} bnc_sweep_t;

/* Runs the sweep; returns BNC_OK or BNC_ERR_NOMEM. */
int bnc_sweep_run(const bnc_sweep_t *s, int n_threads);

/* Common argument checks: sizes, pointer, threads. */
int bnc_check_dims(bnc_dims_t d, int n_threads);

#endif /* BNC_INTERNAL_H */
