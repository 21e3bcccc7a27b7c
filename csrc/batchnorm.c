/* batchnorm.c - batch norm kernels: tmpl/batchnorm_body.h once per dtype. */
#include <stdlib.h>

#include "internal.h"

#define T float
#define P float
#define SFX f32
#define STAGED 0
#define LOAD(v) (v)
#define STORE(v) (v)
#include "tmpl/batchnorm_body.h"

#define T double
#define P double
#define SFX f64
#define STAGED 0
#define LOAD(v) (v)
#define STORE(v) (v)
#include "tmpl/batchnorm_body.h"

#define T bnc_f16_t
#define P float
#define SFX f16
#define STAGED 1 /* runs converted to float in chunks */
#define LOAD(v) bnc_half_to_float(v)
#define STORE(v) bnc_float_to_half(v)
#include "tmpl/batchnorm_body.h"
