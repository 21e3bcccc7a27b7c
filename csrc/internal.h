/* internal.h - private helpers of the bnc C core (never seen by Cython). */
#ifndef BNC_INTERNAL_H
#define BNC_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bnc/bnc.h"

#ifdef _OPENMP
#include <omp.h>
#define BNC_PRAGMA(x) _Pragma(#x)
#define BNC_OMP(x) BNC_PRAGMA(omp x) /* an OpenMP directive, nothing without OpenMP */
#else
#define BNC_OMP(x)
#endif

#define BNC_CAT_(a, b) a##b
#define BNC_CAT(a, b) BNC_CAT_(a, b)

/* Work partition. These depend on nothing but the shape, so every thread
 * count reduces the same blocks in the same order (bit-identical results). */
#define BNC_BLOCK 4096          /* elements per block of a reduction, reduced while in cache */
#define BNC_MIN_ROWS 64         /* rows per block in the interleaved layout */
#define BNC_PIECES 64           /* aim for at least this many work items */
#define BNC_SERIAL_BELOW 32768  /* fewer elements than this: no parallel region */
#define BNC_SCRATCH (1 << 21)   /* doubles of chunk partials, unless C alone needs more */
#define BNC_WIDTH_MAX 6         /* the widest partial, in doubles per channel */
#define BNC_MAX_TEAM 256        /* most threads of one call (any n_threads above: this) */

/* The threads a call runs on: n_threads, but no more than its work items (a
 * thread without one would idle) nor BNC_MAX_TEAM (a team of a million
 * threads would fail to start), and 1 for small work. Results do not depend
 * on it. */
static inline int bnc_team(int n_threads, int64_t items, int64_t elements)
{
    int64_t nt = elements < BNC_SERIAL_BELOW ? 1 : n_threads;
    if (nt > items)
        nt = items;
    if (nt > BNC_MAX_TEAM)
        nt = BNC_MAX_TEAM;
    return nt < 1 ? 1 : (int)nt;
}

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
#define BNC_NOINLINE __attribute__((noinline))
/* A function written once with a constant variant argument (see the fused
 * batch norm passes): inlined into each caller, the variant's branches fold
 * away and each caller keeps loops of its own. */
#define BNC_ALWAYS_INLINE inline __attribute__((always_inline))

/* The most lanes of any dtype's contiguous reductions (float: 8 x 4), and
 * their fixed pairwise fold (unused lanes hold zeros). bnc_lanes_sum is
 * written for 32. */
#define BNC_LANES 32

/* Elements a lane sums in working precision before adding to its double. */
#define BNC_SUB 256

/* Bytes per vector of the contiguous reductions (see batchnorm_body.h):
 * one AVX register; the no-AVX build splits each into two. */
#define BNC_VEC_BYTES 32
#define BNC_WIDE_BYTES 64      /* the column sums' vectors (lanes.h) */
#define BNC_COLSUB 16          /* rows a column sum adds in working precision */

/* bias - lo * a: the low part lo of a mean split as head + lo, folded into
 * the bias of y = (x - head) * a + bias. Left out when lo is 0 or a is not
 * finite, so that an infinite scale gives +-inf as (x - mean) * a does, not
 * inf - inf. */
static inline double bnc_fold_low(double bias, double lo, double a)
{
    return lo != 0 && isfinite(a) ? bias - lo * a : bias;
}

/* The fold: lane l adds lane l + w for w = 16, 8, 4, 2, 1, in that order,
 * in local variables (a loop over the array itself waits on its own stores). */
static inline double bnc_lanes_sum(const double *a)
{
    double t[BNC_LANES / 2];
    for (int l = 0; l < 16; l++)
        t[l] = a[l] + a[l + 16];
    for (int l = 0; l < 8; l++)
        t[l] += t[l + 8];
    for (int l = 0; l < 4; l++)
        t[l] += t[l + 4];
    t[0] += t[2];
    t[1] += t[3];
    return t[0] + t[1];
}

/* ---- float16 <-> float32, round to nearest even ----
 * Branch-free (every case computed, then selected with masks) so that loops
 * over float16 data vectorize; exact for every value (tested exhaustively
 * one way and against the compiler's _Float16 the other). */

static inline uint32_t bnc_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bnc_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float bnc_half_to_float(bnc_f16_t h)
{
    uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t normal = (em << 13) + 0x38000000u;  /* rebias the exponent: 15 -> 127 */
    uint32_t special = (em << 13) | 0x7f800000u; /* infinity, NaN */
    uint32_t sub = bnc_f32_bits((float)(int32_t)em * 0x1p-24f); /* zero, subnormal */
    uint32_t is_special = 0u - (uint32_t)(em >= 0x7c00u);
    uint32_t is_normal = 0u - (uint32_t)(em >= 0x0400u);
    return bnc_bits_f32(((special & is_special) | (normal & is_normal & ~is_special) |
                         (sub & ~is_normal)) | sign);
}

static inline bnc_f16_t bnc_float_to_half(float f)
{
    uint32_t x = bnc_f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    /* normal range: round the 13 dropped bits to nearest even, rebias */
    uint32_t normal = (ax + 0xfffu + ((ax >> 13) & 1u) - 0x38000000u) >> 13;
    /* below 2^-14: count units of 2^-24, rounded to even by the float add */
    uint32_t small = ax < 0x38800000u ? ax : 0x38800000u;
    uint32_t sub = (uint32_t)(int32_t)((bnc_bits_f32(small) * 0x1p24f + 0x1p23f) - 0x1p23f);
    uint32_t nan = 0x7e00u | ((ax >> 13) & 0x3ffu); /* quiet, top payload bits kept */
    uint32_t is_nan = 0u - (uint32_t)(ax > 0x7f800000u);
    uint32_t is_inf = 0u - (uint32_t)(ax >= 0x477ff000u); /* >= 65520 */
    uint32_t is_normal = 0u - (uint32_t)(ax >= 0x38800000u);
    return (bnc_f16_t)((nan & is_nan) | (0x7c00u & is_inf & ~is_nan) |
                       (normal & is_normal & ~is_inf) | (sub & ~is_normal) | sign);
}

/* Converts n float16 values to float32 and back (round to nearest even),
 * with the CPU's vector conversions (AVX-512, F16C) where it has them; exact
 * either way. */
void bnc_f16_load(float *dst, const bnc_f16_t *src, int64_t n);
void bnc_f16_store(bnc_f16_t *dst, const float *src, int64_t n);
/* Batch norm's float16 elementwise passes in one loop, converting in
 * registers: y = (x - m) * a + s, dx = ((dy - a) - (x - m) * g) * s, in
 * float, the same bits as converting to float, computing and converting
 * back (x and y, dx and dy or x may be the same array). stream: write the
 * output with streaming stores (see below; the same bits). */
void bnc_f16_norm(bnc_f16_t *y, const bnc_f16_t *x, int64_t n, float m, float a, float s,
                  int stream);
void bnc_f16_grad(bnc_f16_t *dx, const bnc_f16_t *dy, const bnc_f16_t *x, int64_t n, float m,
                  float a, float g, float s, int stream);
/* For tests: the run-time dispatched loops of util.c use at most variant isa
 * (float16: 2 AVX-512, 1 AVX + F16C, 0 portable; streaming stores: >= 1 AVX,
 * 0 SSE2; < 0: the widest the CPU has); returns the previous cap. */
int bnc_limit_isa(int isa);

/* ---- streaming (non-temporal) stores ----
 * A call whose traffic exceeds the last-level cache gains nothing from
 * leaving its output in cache (its first lines are evicted
 * before the call ends, and a consumer reads those first), and an ordinary
 * store first reads each output line from memory. Such calls write the
 * output of the normalizing pass (and of batch norm's backward, dx) with
 * non-temporal stores from registers: whole
 * 64-byte lines only, the run's partial first and last lines with ordinary
 * stores (so no line is half streamed, and a line shared with a
 * neighbouring run, maybe another thread's, is never streamed). The values
 * are the same bits either way: one rounding per operation, in the order of
 * run_norm's loop. Runs shorter than BNC_STREAM_MIN_RUN bytes, float16's
 * channels-last rows and non-x86 builds store normally. */
#define BNC_STREAM_MIN_RUN 4096
/* 1 if a call that reads and writes `bytes` in all should stream. The
 * callers count a second read of an input too (the traffic model of
 * bench/): 2|x| for the inference forward, 3|x| for the training forwards
 * of batch and group norm (x read for the statistics and again to normalize
 * it), 5|x| for batch norm's backward (dy and x twice, dx). Measured on the project's
 * machine, batch norm's training forward from 12.8 MB of input and output
 * was faster with ordinary stores and from 25.7 MB faster streamed (by
 * 15-44%), while inference on 25.7 MB was faster with ordinary stores: it
 * reads x once. */
int bnc_stream_wanted(int64_t bytes);
/* For tests: calls of at least `bytes` stream (< 0: back to the default,
 * the last-level cache's size); returns the previous setting. */
int64_t bnc_set_stream_min_bytes(int64_t bytes);
/* Batch norm's normalizing and backward passes (run_norm, grad_p),
 * streaming: y = (x - m) * a + s, dx = ((dy - a) - (x - m) * g) * s over n
 * values (the output may be an input array). */
void bnc_stream_norm_f32(float *y, const float *x, int64_t n, float m, float a, float s);
void bnc_stream_norm_f64(double *y, const double *x, int64_t n, double m, double a, double s);
/* y = (x - m[c]) * a[c] + s[c] over n values of dense rows of C channels
 * (element i is channel i % C), streaming when C >= 64 / sizeof(T): the
 * channels-last normalizing passes of batch norm (norm_row) and group norm. */
void bnc_stream_rows_f32(float *y, const float *x, int64_t n, int64_t C, const float *m,
                         const float *a, const float *s);
void bnc_stream_rows_f64(double *y, const double *x, int64_t n, int64_t C, const double *m,
                         const double *a, const double *s);
void bnc_stream_grad_f32(float *dx, const float *dy, const float *x, int64_t n, float m,
                         float a, float g, float s);
void bnc_stream_grad_f64(double *dx, const double *dy, const double *x, int64_t n, double m,
                         double a, double g, double s);

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

/* Few interleaved channels (C <= BNC_PACK_C) in dense rows: the kernels run
 * over a block of rows as one contiguous run, in BNC_PACK / C * C lanes that
 * repeat the channel pattern, instead of a loop of C per row. */
#define BNC_PACK 256
#define BNC_PACK_C 32

/* Lanes of a packed run of `rows` rows: whole repeats of the C channels,
 * at most BNC_PACK, and no more than the run (small calls set up less). */
static inline int64_t bnc_pack_lanes(int64_t C, int64_t rows)
{
    return (BNC_PACK / C < rows ? BNC_PACK / C : rows) * C;
}

static inline int bnc_packable(const bnc_plan_t *p, bnc_strides_t a, bnc_strides_t b,
                               bnc_strides_t c)
{
    const int64_t C = p->channels;
    return p->interleaved && C <= BNC_PACK_C && a.outer == C && a.channel == 1 &&
           b.outer == C && b.channel == 1 && c.outer == C && c.channel == 1;
}

/* ---- the parallel sweep every kernel is built on ---- *
 * A kernel is up to three phases over the plan's work items:
 *   reduce(item) -> partial results (`width` doubles per channel and chunk),
 *   finalize(channels c0..c1-1): fold their partials in chunk order,
 *   apply(span): the elementwise pass, on any span of elements.
 * Slab layout: an item is (channel, chunk). Interleaved layout: an item is a
 * chunk of rows covering every channel. When there are enough channels, each
 * thread takes whole channels and runs reduce, finalize and apply on one
 * channel back to back (its slab is still in cache); otherwise the phases run
 * one after the other: reduce over all items, finalize over ranges of at most
 * BNC_FINAL_CHANNELS channels, apply in memory order over an equal span of
 * elements per thread. Both orders compute identical bits: every channel's
 * partials are folded the same way whatever range it is in, and the
 * elementwise pass does not depend on how it is cut. */
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
    /* the elementwise pass over rows [r0, r1) x channels [c0, c1) x inner
     * [i0, i1), in that loop order; may be NULL */
    void (*apply)(void *ctx, int64_t c0, int64_t c1, int64_t r0, int64_t r1, int64_t i0,
                  int64_t i1);
    void *ctx;
} bnc_sweep_t;

/* Runs the sweep; returns BNC_OK or BNC_ERR_NOMEM. */
int bnc_sweep_run(const bnc_sweep_t *s, int n_threads);

/* Common argument checks: sizes, pointer, threads. */
int bnc_check_dims(bnc_dims_t d, int n_threads);

#endif /* BNC_INTERNAL_H */
