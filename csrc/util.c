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

#ifdef BNC_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) static void f16_load_f16c(float *dst, const bnc_f16_t *src,
                                                             int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++)
        dst[i] = bnc_half_to_float(src[i]);
}

__attribute__((target("avx,f16c"))) static void f16_store_f16c(bnc_f16_t *dst, const float *src,
                                                              int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = bnc_float_to_half(src[i]);
}
#endif

void bnc_f16_load(float *dst, const bnc_f16_t *src, int64_t n)
{
#ifdef BNC_HAVE_F16C_PATH
    if (__builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx")) {
        f16_load_f16c(dst, src, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        dst[i] = bnc_half_to_float(src[i]);
}

void bnc_f16_store(bnc_f16_t *dst, const float *src, int64_t n)
{
#ifdef BNC_HAVE_F16C_PATH
    if (__builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx")) {
        f16_store_f16c(dst, src, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        dst[i] = bnc_float_to_half(src[i]);
}
