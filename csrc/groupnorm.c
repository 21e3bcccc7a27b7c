/* groupnorm.c - group norm kernels: tmpl/groupnorm_body.h once per dtype. */
#include <stdlib.h>

#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#define BNC_GN_PRAGMA(x) _Pragma(#x)
#define BNC_GN_OMP(x) BNC_GN_PRAGMA(omp x)
#endif

#define T float
#define P float
#define SFX f32
#define STAGED 0
#define LOAD(v) (v)
#include "tmpl/groupnorm_body.h"

#define T double
#define P double
#define SFX f64
#define STAGED 0
#define LOAD(v) (v)
#include "tmpl/groupnorm_body.h"

#define T bnc_f16_t
#define P float
#define SFX f16
#define STAGED 1 /* converted to float in chunks (NCHW) or rows (NHWC) */
#define LOAD(v) bnc_half_to_float(v)
#include "tmpl/groupnorm_body.h"
