/* batchnorm.c - batch norm kernels: tmpl/batchnorm_body.h once per dtype. */
#include <stdlib.h>

#include "internal.h"

#define BNC_BODY "tmpl/batchnorm_body.h"
#include "tmpl/dtypes.h"
