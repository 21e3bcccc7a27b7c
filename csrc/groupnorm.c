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
#include "tmpl/groupnorm_body.h"

#define T double
#define P double
#define SFX f64
#include "tmpl/groupnorm_body.h"
