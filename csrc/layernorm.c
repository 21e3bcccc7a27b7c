/* layernorm.c - layer norm and RMS norm kernels: tmpl/layernorm_body.h once per dtype. */
#include <stdlib.h>

#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#define BNC_LN_PRAGMA(x) _Pragma(#x)
#define BNC_LN_OMP(x) BNC_LN_PRAGMA(omp x)
#endif

#define T float
#define SFX f32
#include "tmpl/layernorm_body.h"

#define T double
#define SFX f64
#include "tmpl/layernorm_body.h"
