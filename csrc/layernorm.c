/* layernorm.c - layer norm and RMS norm kernels: tmpl/layernorm_body.h once per dtype. */
#include <stdlib.h>

#include "internal.h"

#define BNC_BODY "tmpl/layernorm_body.h"
#include "tmpl/dtypes.h"
