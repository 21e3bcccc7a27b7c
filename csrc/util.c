/* util.c - status messages, version, build facts, float16 conversion. */
#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BNC_HAVE_F16C_PATH 1
#endif

const char *bnc_strerror(int status)
{
    switch (status) {
    case BNC_OK:
        return "success";
    case BNC_ERR_NULL:
        return "a required pointer is NULL";
    case BNC_ERR_SHAPE:
        return "sizes must be >= 1 and their product must fit in int64";
    case BNC_ERR_EPS:
        return "eps must be finite and > 0";
    case BNC_ERR_THREADS:
        return "n_threads must be >= 1";
    case BNC_ERR_NOMEM:
        return "out of memory for scratch space";
    case BNC_ERR_COUNT:
        return "count must be >= 1";
    case BNC_ERR_RMAX:
        return "rmax must be >= 1 (not NaN)";
    case BNC_ERR_DMAX:
        return "dmax must be >= 0 (not NaN)";
    case BNC_ERR_ACTIVATION:
        return "unknown activation code (BNC_ACT_NONE or BNC_ACT_RELU)";
    default:
        return "unknown bnc status code";
    }
}

const char *bnc_version(void) { return BNC_VERSION_STRING; }

int bnc_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int bnc_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

float bnc_f16_to_f32(bnc_f16_t h) { return bnc_half_to_float(h); }
bnc_f16_t bnc_f32_to_f16(float f) { return bnc_float_to_half(f); }

/* The float16 loops, written once: W values per step, VF a GNU vector of W
 * floats, IN(p) the W float16 values at p as a VF, OUT(p, v) v stored to p
 * as float16 (round to nearest even); the tails and the portable variant
 * convert one value at a time. The arithmetic is on floats, one rounding
 * per operation in the order written (no contraction: -ffp-contract=off),
 * so every variant gives the bits of the staged float loops. */
#define BNC_F16_LOOPS(NAME, TARGET, W, VF, IN, OUT)                           \
    TARGET static void f16_load_##NAME(float *dst, const bnc_f16_t *src, int64_t n) \
    {                                                                         \
        int64_t i = 0;                                                        \
        for (; W > 1 && i + W <= n; i += W) {                                 \
            VF v = IN(src + i);                                               \
            memcpy(dst + i, &v, sizeof v);                                    \
        }                                                                     \
        for (; i < n; i++)                                                    \
            dst[i] = bnc_half_to_float(src[i]);                               \
    }                                                                         \
    TARGET static void f16_store_##NAME(bnc_f16_t *dst, const float *src, int64_t n) \
    {                                                                         \
        int64_t i = 0;                                                        \
        for (; W > 1 && i + W <= n; i += W) {                                 \
            VF v;                                                             \
            memcpy(&v, src + i, sizeof v);                                    \
            OUT(dst + i, v);                                                  \
        }                                                                     \
        for (; i < n; i++)                                                    \
            dst[i] = bnc_float_to_half(src[i]);                               \
    }                                                                         \
    TARGET static void f16_norm_##NAME(bnc_f16_t *y, const bnc_f16_t *x, int64_t n, float m, \
                                       float a, float s)                      \
    {                                                                         \
        int64_t i = 0;                                                        \
        for (; W > 1 && i + W <= n; i += W)                                   \
            OUT(y + i, (IN(x + i) - m) * a + s);                              \
        for (; i < n; i++)                                                    \
            y[i] = bnc_float_to_half((bnc_half_to_float(x[i]) - m) * a + s);  \
    }                                                                         \
    TARGET static void f16_grad_##NAME(bnc_f16_t *dx, const bnc_f16_t *dy,    \
                                       const bnc_f16_t *x, int64_t n, float m, float a, \
                                       float g, float s)                      \
    {                                                                         \
        int64_t i = 0;                                                        \
        for (; W > 1 && i + W <= n; i += W)                                   \
            OUT(dx + i, ((IN(dy + i) - a) - (IN(x + i) - m) * g) * s);        \
        for (; i < n; i++)                                                    \
            dx[i] = bnc_float_to_half(((bnc_half_to_float(dy[i]) - a) -     \
                                       (bnc_half_to_float(x[i]) - m) * g) * s); \
    }

typedef float bnc_v1sf;
#define BNC_IN1(p) bnc_half_to_float(*(p))
#define BNC_OUT1(p, v) (*(p) = bnc_float_to_half(v))
BNC_F16_LOOPS(portable, , 1, bnc_v1sf, BNC_IN1, BNC_OUT1)

#ifdef BNC_HAVE_F16C_PATH
typedef float bnc_v8sf __attribute__((vector_size(32)));
typedef float bnc_v16sf __attribute__((vector_size(64)));
#define BNC_IN8(p) ((bnc_v8sf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p))))
#define BNC_OUT8(p, v)                                                        \
    _mm_storeu_si128((__m128i *)(p), _mm256_cvtps_ph((__m256)(v), _MM_FROUND_TO_NEAREST_INT))
#define BNC_IN16(p) ((bnc_v16sf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p))))
#define BNC_OUT16(p, v)                                                       \
    _mm256_storeu_si256((__m256i *)(p),                                       \
                        _mm512_cvtps_ph((__m512)(v), _MM_FROUND_TO_NEAREST_INT))
BNC_F16_LOOPS(f16c, __attribute__((target("avx,f16c"))), 8, bnc_v8sf, BNC_IN8, BNC_OUT8)
BNC_F16_LOOPS(avx512, __attribute__((target("avx512f"))), 16, bnc_v16sf, BNC_IN16, BNC_OUT16)

static int f16_isa_cap = 2; /* see bnc_f16_limit_isa */

/* The widest variant the CPU runs: 2 AVX-512, 1 AVX + F16C, 0 portable. */
static int f16_isa(void)
{
    int isa = __builtin_cpu_supports("avx512f")                                  ? 2
              : __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx") ? 1
                                                                                 : 0;
    int cap = __atomic_load_n(&f16_isa_cap, __ATOMIC_RELAXED);
    return isa < cap ? isa : cap;
}
#endif

int bnc_f16_limit_isa(int isa)
{
#ifdef BNC_HAVE_F16C_PATH
    int old = __atomic_load_n(&f16_isa_cap, __ATOMIC_RELAXED);
    __atomic_store_n(&f16_isa_cap, isa < 0 ? 2 : isa, __ATOMIC_RELAXED);
    return old;
#else
    (void)isa;
    return 0;
#endif
}

#ifdef BNC_HAVE_F16C_PATH
#define BNC_F16_CALL(fn, ...)                                                 \
    do {                                                                      \
        switch (f16_isa()) {                                                  \
        case 2:                                                               \
            fn##_avx512(__VA_ARGS__);                                         \
            break;                                                            \
        case 1:                                                               \
            fn##_f16c(__VA_ARGS__);                                           \
            break;                                                            \
        default:                                                              \
            fn##_portable(__VA_ARGS__);                                       \
        }                                                                     \
    } while (0)
#else
#define BNC_F16_CALL(fn, ...) fn##_portable(__VA_ARGS__)
#endif

void bnc_f16_load(float *dst, const bnc_f16_t *src, int64_t n)
{
    BNC_F16_CALL(f16_load, dst, src, n);
}

void bnc_f16_store(bnc_f16_t *dst, const float *src, int64_t n)
{
    BNC_F16_CALL(f16_store, dst, src, n);
}

void bnc_f16_norm(bnc_f16_t *y, const bnc_f16_t *x, int64_t n, float m, float a, float s)
{
    BNC_F16_CALL(f16_norm, y, x, n, m, a, s);
}

void bnc_f16_grad(bnc_f16_t *dx, const bnc_f16_t *dy, const bnc_f16_t *x, int64_t n, float m,
                  float a, float g, float s)
{
    BNC_F16_CALL(f16_grad, dx, dy, x, n, m, a, g, s);
}
