/* stream.h - copy bandwidth of the benchmark machine (see stream.c). */
#ifndef BNC_BENCH_STREAM_H
#define BNC_BENCH_STREAM_H
#include <stddef.h>

/* Minimum time in seconds of copying `bytes` bytes with `threads` threads
 * over `repeats` runs (after one warm-up); -1 if memory ran out. The copy
 * bandwidth is 2 * bytes / that time (read + write). */
double bench_copy_seconds(size_t bytes, int threads, int repeats);

#endif
