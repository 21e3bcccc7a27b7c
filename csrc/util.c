/* util.c - status messages, version, build facts, float16 conversion,
 * streaming stores. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif
/* BNC_NO_SIMD: only the portable variants (to check that they build). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(BNC_NO_SIMD)
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

/* The streamed loops, written once: with nt, the elements before y's first
 * 64-byte boundary and after its last one with ordinary stores (ELEM(i):
 * element i) and the lines between with STREAM(p, v) (VEC(VT, i): the W
 * values from i, VT what VEC reads them with: a GNU vector type, or the
 * float16 loops' IN); without nt, every element with ordinary stores.
 * BNC_LD(VT, p): the VT at p, any alignment. */
#define BNC_LD(VT, p) __extension__({ VT v_; memcpy(&v_, (p), sizeof v_); v_; })
#define BNC_STREAM_LOOP(T, VT, W, STREAM, y, n, nt, ELEM, VEC)                 \
    do {                                                                      \
        const int64_t line_ = 64 / (int64_t)sizeof(T);                        \
        int64_t i = 0, h_ = (int64_t)((64 - ((uintptr_t)(y) & 63)) & 63) / (int64_t)sizeof(T); \
        h_ = (nt) && h_ < (n) ? h_ : (n);                                     \
        const int64_t e_ = h_ + ((n) - h_) / line_ * line_;                   \
        for (; i < h_; i++)                                                   \
            (y)[i] = ELEM(i);                                                 \
        for (; i < e_; i += (W))                                              \
            STREAM((y) + i, VEC(VT, i));                                      \
        for (; i < (n); i++)                                                  \
            (y)[i] = ELEM(i);                                                 \
    } while (0)

/* The float16 loops, written once: W values per step, VF a GNU vector of W
 * floats, IN(p) the W float16 values at p as a VF, OUT(p, v) v stored to p
 * as float16 (round to nearest even), NT(p, v) the same with a streaming
 * store (p 32-byte aligned; with nt, the passes stream whole lines as
 * BNC_STREAM_LOOP does); the tails and the portable variant convert one
 * value at a time. The arithmetic is on floats, one rounding per operation
 * in the order written (no contraction: -ffp-contract=off), so every variant
 * gives the bits of the staged float loops. */
#define BNC_F16_NORM_E(i) bnc_float_to_half((bnc_half_to_float(x[i]) - m) * a + s)
#define BNC_F16_NORM_V(IN, i) ((IN(x + (i)) - m) * a + s)
#define BNC_F16_GRAD_E(i)                                                     \
    bnc_float_to_half(((bnc_half_to_float(dy[i]) - a) - (bnc_half_to_float(x[i]) - m) * g) * s)
#define BNC_F16_GRAD_V(IN, i) (((IN(dy + (i)) - a) - (IN(x + (i)) - m) * g) * s)
#define BNC_F16_LOOPS(NAME, TARGET, W, VF, IN, OUT, NT)                       \
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
                                       float a, float s, int nt)              \
    {                                                                         \
        if (nt) {                                                             \
            BNC_STREAM_LOOP(bnc_f16_t, IN, W, NT, y, n, 1, BNC_F16_NORM_E, BNC_F16_NORM_V); \
            return;                                                           \
        }                                                                     \
        int64_t i = 0;                                                        \
        for (; W > 1 && i + W <= n; i += W)                                   \
            OUT(y + i, BNC_F16_NORM_V(IN, i));                                \
        for (; i < n; i++)                                                    \
            y[i] = BNC_F16_NORM_E(i);                                         \
    }                                                                         \
    TARGET static void f16_grad_##NAME(bnc_f16_t *dx, const bnc_f16_t *dy,    \
                                       const bnc_f16_t *x, int64_t n, float m, float a, \
                                       float g, float s, int nt)              \
    {                                                                         \
        if (nt) {                                                             \
            BNC_STREAM_LOOP(bnc_f16_t, IN, W, NT, dx, n, 1, BNC_F16_GRAD_E, BNC_F16_GRAD_V); \
            return;                                                           \
        }                                                                     \
        int64_t i = 0;                                                        \
        for (; W > 1 && i + W <= n; i += W)                                   \
            OUT(dx + i, BNC_F16_GRAD_V(IN, i));                               \
        for (; i < n; i++)                                                    \
            dx[i] = BNC_F16_GRAD_E(i);                                        \
    }

typedef float bnc_v1sf;
#define BNC_IN1(p) bnc_half_to_float(*(p))
#define BNC_OUT1(p, v) (*(p) = bnc_float_to_half(v))
BNC_F16_LOOPS(portable, , 1, bnc_v1sf, BNC_IN1, BNC_OUT1, BNC_OUT1)

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
#define BNC_NT8(p, v)                                                         \
    _mm_stream_si128((__m128i *)(p), _mm256_cvtps_ph((__m256)(v), _MM_FROUND_TO_NEAREST_INT))
#define BNC_NT16(p, v)                                                        \
    _mm256_stream_si256((__m256i *)(p),                                       \
                        _mm512_cvtps_ph((__m512)(v), _MM_FROUND_TO_NEAREST_INT))
BNC_F16_LOOPS(f16c, __attribute__((target("avx,f16c"))), 8, bnc_v8sf, BNC_IN8, BNC_OUT8, BNC_NT8)
BNC_F16_LOOPS(avx512, __attribute__((target("avx512f"))), 16, bnc_v16sf, BNC_IN16, BNC_OUT16,
              BNC_NT16)

static int isa_cap = 2; /* see bnc_limit_isa */

/* isa, at most the cap. */
static int capped(int isa)
{
    int cap = __atomic_load_n(&isa_cap, __ATOMIC_RELAXED);
    return isa < cap ? isa : cap;
}

/* The widest float16 variant the CPU runs: 2 AVX-512, 1 AVX + F16C, 0 portable. */
static int f16_isa(void)
{
    return capped(__builtin_cpu_supports("avx512f")                                  ? 2
                  : __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx") ? 1
                                                                                     : 0);
}
#endif

int bnc_limit_isa(int isa)
{
#ifdef BNC_HAVE_F16C_PATH
    int old = __atomic_load_n(&isa_cap, __ATOMIC_RELAXED);
    __atomic_store_n(&isa_cap, isa < 0 ? 2 : isa, __ATOMIC_RELAXED);
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

/* Whether the float16 passes stream a run of n values to y (as
 * BNC_STREAM_DISPATCH decides for float32): x86 builds with F16C or AVX-512,
 * runs of BNC_STREAM_MIN_RUN bytes or more, y aligned to its type. */
static int f16_nt(int stream, const bnc_f16_t *y, int64_t n)
{
#ifdef BNC_HAVE_F16C_PATH
    return stream && f16_isa() > 0 && 2 * n >= BNC_STREAM_MIN_RUN && (uintptr_t)y % 2 == 0;
#else
    (void)stream, (void)y, (void)n;
    return 0;
#endif
}

void bnc_f16_norm(bnc_f16_t *y, const bnc_f16_t *x, int64_t n, float m, float a, float s,
                  int stream)
{
    const int nt = f16_nt(stream, y, n);
    BNC_F16_CALL(f16_norm, y, x, n, m, a, s, nt);
#ifdef BNC_HAVE_F16C_PATH
    if (nt)
        _mm_sfence(); /* as BNC_STREAM_DISPATCH */
#endif
}

void bnc_f16_grad(bnc_f16_t *dx, const bnc_f16_t *dy, const bnc_f16_t *x, int64_t n, float m,
                  float a, float g, float s, int stream)
{
    const int nt = f16_nt(stream, dx, n);
    BNC_F16_CALL(f16_grad, dx, dy, x, n, m, a, g, s, nt);
#ifdef BNC_HAVE_F16C_PATH
    if (nt)
        _mm_sfence();
#endif
}

/* ---- streaming stores (see internal.h) ---- */

/* The last-level cache's size in bytes: Linux's sysfs (which reports what
 * this core shares; sysconf reported 10 times that on a VM), else 32 MiB. */
static int64_t llc_bytes(void)
{
    int64_t best = 0;
    for (int i = 0; i < 8; i++) {
        char path[64], buf[32];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f)
            break;
        char *got = fgets(buf, sizeof buf, f);
        fclose(f);
        if (!got)
            continue;
        char *end;
        long long v = strtoll(buf, &end, 10);
        v *= *end == 'K' ? 1024 : *end == 'M' ? 1024 * 1024 : 1;
        if (v > best)
            best = v;
    }
    return best > 0 ? best : (int64_t)32 << 20;
}

static int64_t stream_min_bytes = -1; /* < 0: not yet read; see bnc_set_stream_min_bytes */

static int64_t stream_threshold(void)
{
    int64_t t = __atomic_load_n(&stream_min_bytes, __ATOMIC_RELAXED);
    if (t < 0) {
        t = llc_bytes();
        __atomic_store_n(&stream_min_bytes, t, __ATOMIC_RELAXED);
    }
    return t;
}

int bnc_stream_wanted(int64_t bytes) { return bytes >= stream_threshold(); }

int64_t bnc_set_stream_min_bytes(int64_t bytes)
{
    int64_t old = stream_threshold();
    __atomic_store_n(&stream_min_bytes, bytes < 0 ? llc_bytes() : bytes, __ATOMIC_RELAXED);
    return old;
}

/* y = (x - m) * a + s and dx = ((dy - a) - (x - m) * g) * s (batch norm's
 * normalizing and backward passes: run_norm, grad_p), element and vector. */
#define BNC_NORM_E(i) ((x[i] - m) * a + s)
#define BNC_NORM_V(VT, i) ((BNC_LD(VT, x + (i)) - m) * a + s)
#define BNC_GRAD_E(i) (((dy[i] - a) - (x[i] - m) * g) * s)
#define BNC_GRAD_V(VT, i) (((BNC_LD(VT, dy + (i)) - a) - (BNC_LD(VT, x + (i)) - m) * g) * s)
/* Rows of C channels (channels last), dense: element i of the run is
 * channel j = i % C, kept as a running count (ELEM and VEC advance it); the
 * coefficients m, a, s are followed by their first W values again, so that
 * a vector's channels never wrap. */
#define BNC_ROWS_E(i) __extension__({                                          \
        const __typeof__(*x) v_ = (x[i] - m[j]) * a[j] + s[j];                 \
        j = j + 1 == C ? 0 : j + 1;                                           \
        v_; })
#define BNC_ROWS_V(VT, i) __extension__({                                      \
        const VT v_ = (BNC_LD(VT, x + (i)) - BNC_LD(VT, m + j)) * BNC_LD(VT, a + j) + \
                      BNC_LD(VT, s + j);                                      \
        for (j += (int64_t)(sizeof(VT) / sizeof(*x)); j >= C; j -= C) {       \
        }                                                                     \
        v_; })
#define BNC_STREAM_FNS(NAME, TARGET, T, VT, W, STREAM)                         \
    TARGET static void stream_rows_##NAME(T *y, const T *x, int64_t n, int64_t C,  \
                                          const T *m, const T *a, const T *s, int nt) \
    {                                                                         \
        int64_t j = 0;                                                        \
        BNC_STREAM_LOOP(T, VT, W, STREAM, y, n, nt, BNC_ROWS_E, BNC_ROWS_V);  \
    }                                                                         \
    TARGET static void stream_norm_##NAME(T *y, const T *x, int64_t n, T m, T a, T s, int nt) \
    {                                                                         \
        BNC_STREAM_LOOP(T, VT, W, STREAM, y, n, nt, BNC_NORM_E, BNC_NORM_V);  \
    }                                                                         \
    TARGET static void stream_grad_##NAME(T *dx, const T *dy, const T *x, int64_t n, T m, \
                                          T a, T g, T s, int nt)              \
    {                                                                         \
        BNC_STREAM_LOOP(T, VT, W, STREAM, dx, n, nt, BNC_GRAD_E, BNC_GRAD_V); \
    }

/* Streamed when the run is at least BNC_STREAM_MIN_RUN bytes and the output
 * is aligned to its type; AVX: 32-byte streams (as fast as 64-byte ones on
 * the AVX-512 machine measured), else SSE2, which every x86-64 has. The
 * fence orders the streamed stores before whatever the caller does next
 * (another thread may read the output after the parallel region). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(BNC_NO_SIMD)
typedef float bnc_v4sf __attribute__((vector_size(16)));
typedef double bnc_v2df __attribute__((vector_size(16)));
typedef double bnc_v4df __attribute__((vector_size(32)));
#define BNC_NT_PS(p, v) _mm_stream_ps((p), (__m128)(v))
#define BNC_NT_PD(p, v) _mm_stream_pd((p), (__m128d)(v))
#define BNC_NT_PS8(p, v) _mm256_stream_ps((p), (__m256)(v))
#define BNC_NT_PD4(p, v) _mm256_stream_pd((p), (__m256d)(v))
BNC_STREAM_FNS(f32_sse2, , float, bnc_v4sf, 4, BNC_NT_PS)
BNC_STREAM_FNS(f64_sse2, , double, bnc_v2df, 2, BNC_NT_PD)
BNC_STREAM_FNS(f32_avx, __attribute__((target("avx"))), float, bnc_v8sf, 8, BNC_NT_PS8)
BNC_STREAM_FNS(f64_avx, __attribute__((target("avx"))), double, bnc_v4df, 4, BNC_NT_PD4)
#define BNC_STREAM_DISPATCH(T, SFX, fn, ok, y, n, ...)                         \
    do {                                                                      \
        const int nt = (ok) && (int64_t)sizeof(T) * (n) >= BNC_STREAM_MIN_RUN && \
                       (uintptr_t)(y) % sizeof(T) == 0;                       \
        if (capped(__builtin_cpu_supports("avx")))                            \
            fn##_##SFX##_avx(y, __VA_ARGS__, nt);                             \
        else                                                                  \
            fn##_##SFX##_sse2(y, __VA_ARGS__, nt);                            \
        if (nt)                                                               \
            _mm_sfence();                                                     \
    } while (0)
#else
#define BNC_STORE1(p, v) (*(p) = (v))
BNC_STREAM_FNS(f32_portable, , float, float, 1, BNC_STORE1)
BNC_STREAM_FNS(f64_portable, , double, double, 1, BNC_STORE1)
#define BNC_STREAM_DISPATCH(T, SFX, fn, ok, y, n, ...) fn##_##SFX##_portable(y, __VA_ARGS__, 0)
#endif
#define BNC_STREAM_CALLS(T, SFX)                                              \
    void bnc_stream_norm_##SFX(T *y, const T *x, int64_t n, T m, T a, T s)     \
    {                                                                         \
        BNC_STREAM_DISPATCH(T, SFX, stream_norm, 1, y, n, x, n, m, a, s);        \
    }                                                                         \
    void bnc_stream_grad_##SFX(T *dx, const T *dy, const T *x, int64_t n, T m, T a, T g, \
                               T s)                                           \
    {                                                                         \
        BNC_STREAM_DISPATCH(T, SFX, stream_grad, 1, dx, n, dy, x, n, m, a, g, s); \
    }                                                                         \
    void bnc_stream_rows_##SFX(T *y, const T *x, int64_t n, int64_t C, const T *m, const T *a, \
                               const T *s)                                    \
    {                                                                         \
        const int64_t w = 64 / (int64_t)sizeof(T), cw = C + w;                \
        /* NULL (fewer channels than a line holds, or no memory): ordinary stores */ \
        T *e = C >= w ? malloc(3 * (size_t)cw * sizeof(T)) : NULL;             \
        const T *src[3] = {m, a, s};                                          \
        for (int k = 0; e && k < 3; k++) {                                    \
            memcpy(e + k * cw, src[k], (size_t)C * sizeof(T));                \
            memcpy(e + k * cw + C, src[k], (size_t)w * sizeof(T));            \
        }                                                                     \
        BNC_STREAM_DISPATCH(T, SFX, stream_rows, e != NULL, y, n, x, n, C, e ? e : m, \
                            e ? e + cw : a, e ? e + 2 * cw : s);              \
        free(e);                                                              \
    }
BNC_STREAM_CALLS(float, f32)
BNC_STREAM_CALLS(double, f64)
