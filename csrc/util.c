/* util.c - status messages, version, build facts, float16 conversion. */
#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
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
