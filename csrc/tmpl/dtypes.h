/*
 * dtypes.h - instantiates the kernel body named by BNC_BODY once per dtype:
 *   f32: T = P = float;  f64: T = P = double;
 *   f16: T = bnc_f16_t, computed in P = float (STAGED: runs converted to
 *        float in chunks where the body stages them).
 * Each body undefines what it was given (tmpl/body_end.h).
 */
#define T float
#define P float
#define SFX f32
#define STAGED 0
#define LOAD(v) (v)
#define STORE(v) (v)
#include BNC_BODY

#define T double
#define P double
#define SFX f64
#define STAGED 0
#define LOAD(v) (v)
#define STORE(v) (v)
#include BNC_BODY

#define T bnc_f16_t
#define P float
#define SFX f16
#define STAGED 1
#define LOAD(v) bnc_half_to_float(v)
#define STORE(v) bnc_float_to_half(v)
#include BNC_BODY

#undef BNC_BODY
