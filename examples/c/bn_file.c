/* bn_file.c - batch norm from C with bnc's core, no Python.
 *
 * Reads x and dy, float32 arrays of shape (N, C, HW) stored C-contiguous,
 * from one binary file; runs the training forward (batch statistics) and its
 * backward; writes y, dx, then mean, invstd, dweight and dbias (C values
 * each) as float32 to another file, and prints a summary.
 *
 *   bn_file N C HW eps in.bin out.bin [n_threads]
 *
 * Build against an installed bnc (header and static core ship in the package):
 *   cc -O2 bn_file.c -I"$(python -c 'import bnc; print(bnc.get_include())')" \
 *      -L"$(python -c 'import bnc; print(bnc.get_library_dir())')" -lbnc -lm -fopenmp
 * or from the source tree alone: make -C examples/c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bnc/bnc.h"

static int fail(const char *what, const char *why)
{
    fprintf(stderr, "bn_file: %s: %s\n", what, why);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 8)
        return fail("usage", "bn_file N C HW eps in.bin out.bin [n_threads]");
    bnc_dims_t d = {atoll(argv[1]), atoll(argv[2]), atoll(argv[3])};
    double eps = atof(argv[4]);
    int n_threads = argc == 8 ? atoi(argv[7]) : bnc_default_threads();
    size_t n = (size_t)(d.outer * d.channels * d.inner), c = (size_t)d.channels;
    if (d.outer < 1 || d.channels < 1 || d.inner < 1)
        return fail("shape", "N, C and HW must be positive");

    /* x, dy | y, dx | mean, invstd, dweight, dbias */
    float *buf = malloc(sizeof(float) * (4 * n + 4 * c));
    if (!buf)
        return fail("malloc", "out of memory");
    float *x = buf, *dy = x + n, *y = dy + n, *dx = y + n;
    float *mean = dx + n, *invstd = mean + c, *dw = invstd + c, *db = dw + c;

    FILE *f = fopen(argv[5], "rb");
    if (!f || fread(x, sizeof(float), 2 * n, f) != 2 * n)
        return fail(argv[5], "cannot read 2 * N * C * HW float32 values");
    fclose(f);

    bnc_strides_t s = BNC_CONTIGUOUS(d);
    int st = bnc_batchnorm_fwd_train_f32(d, x, s, NULL, NULL, eps, y, s, mean, invstd, NULL,
                                         n_threads);
    if (st == BNC_OK)
        st = bnc_batchnorm_bwd_train_f32(d, dy, s, x, s, NULL, mean, invstd, dx, s, dw, db,
                                         n_threads);
    if (st != BNC_OK)
        return fail("bnc", bnc_strerror(st));

    f = fopen(argv[6], "wb");
    if (!f || fwrite(y, sizeof(float), 2 * n + 4 * c, f) != 2 * n + 4 * c)
        return fail(argv[6], "cannot write the results");
    fclose(f);
    printf("bnc %s (OpenMP %s, %d threads): N=%lld C=%lld HW=%lld, mean[0]=%.6g "
           "invstd[0]=%.6g\n", bnc_version(), bnc_openmp_enabled() ? "on" : "off", n_threads,
           (long long)d.outer, (long long)d.channels, (long long)d.inner, mean[0], invstd[0]);
    free(buf);
    return 0;
}
