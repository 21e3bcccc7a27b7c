/* sweep.c - work plans and the parallel sweep shared by every kernel. */
#include <stdlib.h>

#include "internal.h"

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

void bnc_plan_make(bnc_plan_t *p, bnc_dims_t d, int interleaved)
{
    p->interleaved = interleaved;
    p->outer = d.outer;
    p->channels = d.channels;
    p->inner = d.inner;
    p->pieces = 1;
    if (interleaved) {
        p->rows = max64(BNC_MIN_ROWS, BNC_BLOCK / d.channels);
        p->nblocks = ceil_div(d.outer, p->rows);
        /* chunks hold C-wide partials: cap their scratch at BNC_SCRATCH doubles */
        p->nchunks = min64(min64(p->nblocks, BNC_PIECES),
                           max64(1, BNC_SCRATCH / (BNC_WIDTH_MAX * d.channels)));
        return;
    }
    if (d.inner >= BNC_BLOCK) {
        p->rows = 1;
        p->pieces = ceil_div(d.inner, BNC_BLOCK);
        p->nblocks = d.outer * p->pieces;
    } else {
        p->rows = BNC_BLOCK / d.inner;
        p->nblocks = ceil_div(d.outer, p->rows);
    }
    p->nchunks = min64(p->nblocks, ceil_div(BNC_PIECES, d.channels));
}

int bnc_check_dims(bnc_dims_t d, int n_threads)
{
    if (d.outer < 1 || d.channels < 1 || d.inner < 1)
        return BNC_ERR_SHAPE;
    if (d.outer > INT64_MAX / d.channels / d.inner)
        return BNC_ERR_SHAPE;
    if (n_threads < 1)
        return BNC_ERR_THREADS;
    return BNC_OK;
}

/* Applies s->apply to the elements [e0, e1) of the (outer, C, inner) index
 * space, in memory order, as few calls as possible (whole rows, whole channel
 * runs of a row, or part of one run). */
static void apply_span(const bnc_sweep_t *s, int64_t e0, int64_t e1)
{
    const int64_t C = s->plan->channels, inner = s->plan->inner, row = C * inner;
    int64_t e = e0;
    while (e < e1) {
        int64_t r = e / row, c = (e % row) / inner, i = e % inner, n;
        if (i != 0 || e1 - e < inner) { /* part of one channel run */
            n = min64(inner - i, e1 - e);
            s->apply(s->ctx, c, c + 1, r, r + 1, i, i + n);
        } else if (c != 0 || e1 - e < row) { /* whole runs of one row */
            n = min64(C - c, (e1 - e) / inner);
            s->apply(s->ctx, c, c + n, r, r + 1, 0, inner);
            n *= inner;
        } else { /* whole rows */
            int64_t rows = (e1 - e) / row;
            s->apply(s->ctx, 0, C, r, r + rows, 0, inner);
            n = rows * row;
        }
        e += n;
    }
}

/* Thread t of nt runs its share of every phase (a static partition; the
 * results do not depend on it). With nt == 1 it runs outside any OpenMP
 * region: small calls never enter the OpenMP runtime. */
static void sweep_thread(const bnc_sweep_t *s, double *parts, bnc_parts_t pv, int64_t t,
                         int64_t nt)
{
    const bnc_plan_t *p = s->plan;
    const int64_t C = p->channels, k = p->nchunks, total = p->outer * C * p->inner;
    const int64_t items = p->interleaved ? k : C * k;
    const int64_t slot = p->interleaved ? (int64_t)s->width * C : s->width;
    if (s->width > 0 && !p->interleaved && (nt == 1 || C >= 4 * nt || C % nt == 0)) {
        /* whole channels per thread: reduce, finalize, apply back to back,
         * the second pass over a channel finds its slab still in cache */
        for (int64_t c = C * t / nt; c < C * (t + 1) / nt; c++) {
            for (int64_t j = 0; j < k; j++)
                s->reduce(s->ctx, c, j, parts + c * k * slot + j * slot);
            s->finalize(s->ctx, c, c + 1, pv);
            if (s->apply)
                s->apply(s->ctx, c, c + 1, 0, p->outer, 0, p->inner);
        }
        return;
    }
    /* one phase after the other: reductions over all items, then the
     * elementwise pass in memory order, an equal span per thread */
    if (s->width > 0) {
        const int64_t ranges = (C + BNC_FINAL_CHANNELS - 1) / BNC_FINAL_CHANNELS;
        for (int64_t it = items * t / nt; it < items * (t + 1) / nt; it++)
            s->reduce(s->ctx, p->interleaved ? -1 : it / k, p->interleaved ? it : it % k,
                      parts + it * slot);
        if (nt > 1) {
            BNC_OMP(barrier)
        }
        for (int64_t r = ranges * t / nt; r < ranges * (t + 1) / nt; r++) {
            int64_t c0 = r * BNC_FINAL_CHANNELS;
            s->finalize(s->ctx, c0, min64(C, c0 + BNC_FINAL_CHANNELS), pv);
        }
        if (nt > 1) {
            BNC_OMP(barrier)
        }
    }
    if (s->apply)
        apply_span(s, total * t / nt, total * (t + 1) / nt);
}

int bnc_sweep_run(const bnc_sweep_t *s, int n_threads)
{
    const bnc_plan_t *p = s->plan;
    const int64_t C = p->channels, k = p->nchunks, total = p->outer * C * p->inner;
    const int64_t items = p->interleaved ? k : C * k;
    const int64_t slot = p->interleaved ? (int64_t)s->width * C : s->width;
    double *parts = NULL;
    /* every thread has elementwise work, whatever the reduction items */
    int nt = bnc_team(n_threads, total, total);

    if (s->width > 0) {
        parts = malloc(sizeof(double) * (size_t)(items * slot));
        if (!parts)
            return BNC_ERR_NOMEM;
    }
    bnc_parts_t pv = {parts, p->interleaved ? 1 : k * slot, slot, p->interleaved ? C : 1};
#ifdef _OPENMP
    if (nt > 1) {
        BNC_OMP(parallel num_threads(nt))
        sweep_thread(s, parts, pv, omp_get_thread_num(), omp_get_num_threads());
    } else
#endif
        sweep_thread(s, parts, pv, 0, 1);
    (void)nt;
    free(parts);
    return BNC_OK;
}
