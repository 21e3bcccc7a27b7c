/* groupnorm.c - group norm kernels: tmpl/groupnorm_body.h once per dtype. */
#include <stdlib.h>

#include "internal.h"

#define BNC_BODY "tmpl/groupnorm_body.h"
#include "tmpl/dtypes.h"
