/*
 * _outcache.h - a NumPy memory handler that keeps the memory of large
 * outputs bnc allocated, for the next output of a similar size.
 *
 * Why: glibc serves allocations above its mmap threshold (at most 32 MiB)
 * with fresh pages from the kernel and gives them back when the array is
 * freed, so every call that allocates a larger output pays for zeroing its
 * pages at the first write: as long as the kernel itself on a 205 MB output.
 * Smaller blocks are kept by malloc and reused already.
 *
 * How: bnc installs this handler (PyDataMem_SetHandler) only around the
 * allocation of an output of at least bnc_outcache_min bytes; NumPy keeps
 * the handler with the array and calls its free when the array goes. Freed
 * blocks of at least that size are kept, at most BNC_OUTCACHE_SLOTS of them
 * and bnc_outcache_limit bytes in all (the most recently freed first: older
 * blocks are released to make room), and handed out again to an output of
 * at least half their size. Each block starts with a 64-byte header holding
 * its capacity; the data after it is 64-byte aligned.
 *
 * NumPy calls the handler with the GIL held (array creation, deallocation,
 * resize), which serializes it: no lock of its own.
 */
#ifndef BNC_OUTCACHE_H
#define BNC_OUTCACHE_H

#include <Python.h>
#include <numpy/arrayobject.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BNC_OUTCACHE_SLOTS 4
#define BNC_OUTCACHE_HEAD 64

typedef struct {
    char *block[BNC_OUTCACHE_SLOTS]; /* blocks (headers included), newest first */
    size_t cap[BNC_OUTCACHE_SLOTS];  /* their data capacities */
    int n;                           /* blocks held: slots [0, n) */
    size_t held;                     /* their bytes in all */
    size_t limit;                    /* at most this many bytes held */
    size_t min;                      /* blocks of at least this size are kept */
} bnc_outcache_t;

static bnc_outcache_t bnc_outcache = {{NULL}, {0}, 0, 0, (size_t)1 << 30, (size_t)32 << 20};

/* Takes slot i's block out (the slots after it move up one). */
static char *bnc_outcache_take(int i)
{
    char *block = bnc_outcache.block[i];
    bnc_outcache.held -= bnc_outcache.cap[i];
    for (int j = i; j + 1 < bnc_outcache.n; j++) {
        bnc_outcache.block[j] = bnc_outcache.block[j + 1];
        bnc_outcache.cap[j] = bnc_outcache.cap[j + 1];
    }
    bnc_outcache.n--;
    return block;
}

/* Releases the oldest blocks until at most `blocks` are held, in at most
 * `bytes`. */
static void bnc_outcache_trim(int blocks, size_t bytes)
{
    while (bnc_outcache.n > blocks || (bnc_outcache.n > 0 && bnc_outcache.held > bytes))
        free(bnc_outcache_take(bnc_outcache.n - 1));
}

/* Keeps a freed block of capacity cap as the newest, releasing older ones
 * to stay within the limit; frees it instead if it is too small or alone
 * larger than the limit. */
static void bnc_outcache_put(char *block, size_t cap)
{
    if (cap < bnc_outcache.min || cap > bnc_outcache.limit) {
        free(block);
        return;
    }
    bnc_outcache_trim(BNC_OUTCACHE_SLOTS - 1, bnc_outcache.limit - cap);
    for (int j = bnc_outcache.n; j > 0; j--) {
        bnc_outcache.block[j] = bnc_outcache.block[j - 1];
        bnc_outcache.cap[j] = bnc_outcache.cap[j - 1];
    }
    bnc_outcache.block[0] = block;
    bnc_outcache.cap[0] = cap;
    bnc_outcache.held += cap;
    bnc_outcache.n++;
}

static void *bnc_outcache_malloc(void *ctx, size_t size)
{
    int best = -1;
    char *block;
    (void)ctx;
    for (int i = 0; i < bnc_outcache.n; i++) /* the smallest that holds it */
        if (bnc_outcache.cap[i] >= size && bnc_outcache.cap[i] / 2 <= size &&
            (best < 0 || bnc_outcache.cap[i] < bnc_outcache.cap[best]))
            best = i;
    if (best >= 0) {
        block = bnc_outcache_take(best);
    } else {
        size_t cap = size ? size : 1;
        void *p = NULL;
        if (cap > SIZE_MAX - BNC_OUTCACHE_HEAD ||
            posix_memalign(&p, BNC_OUTCACHE_HEAD, BNC_OUTCACHE_HEAD + cap) != 0)
            return NULL;
        block = p;
        memcpy(block, &cap, sizeof cap);
    }
    return block + BNC_OUTCACHE_HEAD;
}

static size_t bnc_outcache_capacity(const void *ptr)
{
    size_t cap;
    memcpy(&cap, (const char *)ptr - BNC_OUTCACHE_HEAD, sizeof cap);
    return cap;
}

static void *bnc_outcache_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize && nelem > SIZE_MAX / elsize)
        return NULL;
    void *p = bnc_outcache_malloc(ctx, nelem * elsize);
    if (p)
        memset(p, 0, nelem * elsize);
    return p;
}

static void bnc_outcache_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx, (void)size;
    if (ptr)
        bnc_outcache_put((char *)ptr - BNC_OUTCACHE_HEAD, bnc_outcache_capacity(ptr));
}

static void *bnc_outcache_realloc(void *ctx, void *ptr, size_t new_size)
{
    if (!ptr)
        return bnc_outcache_malloc(ctx, new_size);
    size_t cap = bnc_outcache_capacity(ptr);
    if (new_size <= cap && cap / 2 <= new_size)
        return ptr;
    void *p = bnc_outcache_malloc(ctx, new_size);
    if (!p)
        return NULL; /* ptr stays valid, as realloc's contract */
    memcpy(p, ptr, cap < new_size ? cap : new_size);
    bnc_outcache_free(ctx, ptr, cap);
    return p;
}

static PyDataMem_Handler bnc_outcache_handler = {
    "bnc_output_cache",
    1,
    {NULL, bnc_outcache_malloc, bnc_outcache_calloc, bnc_outcache_realloc, bnc_outcache_free}};

/* The handler as the capsule PyDataMem_SetHandler takes (a new reference). */
static PyObject *bnc_outcache_capsule(void)
{
    return PyCapsule_New(&bnc_outcache_handler, "mem_handler", NULL);
}

/* Sets the limit (bytes held in all; 0 releases every block and keeps
 * none) and returns the previous one; limit < 0 only returns it. */
static int64_t bnc_outcache_set_limit(int64_t limit)
{
    int64_t old = (int64_t)bnc_outcache.limit;
    if (limit >= 0) {
        bnc_outcache.limit = (size_t)limit;
        bnc_outcache_trim(BNC_OUTCACHE_SLOTS, bnc_outcache.limit);
    }
    return old;
}

/* Sets the smallest output size kept (and allocated through the cache by
 * bnc) and returns the previous one; min < 0 only returns it. */
static int64_t bnc_outcache_set_min(int64_t min)
{
    int64_t old = (int64_t)bnc_outcache.min;
    if (min >= 0)
        bnc_outcache.min = (size_t)min;
    return old;
}

/* Bytes held now. */
static int64_t bnc_outcache_held(void) { return (int64_t)bnc_outcache.held; }

#endif
