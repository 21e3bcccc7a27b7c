/*
 * lanes.h - the vector lanes of the reductions, for one dtype.
 *
 * Included by each kernel body (batchnorm_body.h; layernorm_body.h and
 * groupnorm_body.h through rowsums.h) after it
 * defines F() and P;
 * the body undefines BNC_VLOAD, BNC_WLOAD, BNC_FLUSH1, BNC_FLUSH4 and
 * BNC_PFOLD at its end.
 *
 * A run is summed in NL lanes: element i goes to lane i % NL. The lanes are
 * four accumulators f0..f3, GNU C vectors of BNC_VEC_BYTES (named variables,
 * so that they stay in registers), each lane adding at most BNC_SUB / NL terms
 * in working precision P before BNC_FLUSH4 adds them to double lanes. The lanes
 * fix the summation order whatever the vector ISA.
 */
typedef P F(vec_t) __attribute__((vector_size(BNC_VEC_BYTES)));
typedef P F(uvec_t) __attribute__((vector_size(BNC_VEC_BYTES), aligned(sizeof(P)), may_alias));
typedef double F(dvec_t) __attribute__((vector_size(BNC_VEC_BYTES * 8 / sizeof(P))));
enum { F(VL) = BNC_VEC_BYTES / (int)sizeof(P), F(NL) = 4 * F(VL) };

/* The vector at p (any alignment). */
#define BNC_VLOAD(p) (*(const F(uvec_t) *)(p))

/* Column sums (one channel per element, rows added in row order) give the
 * same result at any vector width: they use wide vectors, so that a row of
 * up to 4 * BNC_WIDE_BYTES bytes is summed in one strip of four registers
 * (strips over a narrower part of each row read memory at about half the
 * speed of a linear read). */
typedef P F(wvec_t) __attribute__((vector_size(BNC_WIDE_BYTES)));
typedef P F(uwvec_t) __attribute__((vector_size(BNC_WIDE_BYTES), aligned(sizeof(P)), may_alias));
enum { F(WL) = BNC_WIDE_BYTES / (int)sizeof(P) };
#define BNC_WLOAD(p) (*(const F(uwvec_t) *)(p))

/* a[lanes] += f (a: VL double lanes). */
#define BNC_FLUSH1(a, f)                                                      \
    do {                                                                      \
        F(dvec_t) d_;                                                         \
        memcpy(&d_, (a), sizeof d_);                                          \
        d_ += __builtin_convertvector((f), F(dvec_t));                        \
        memcpy((a), &d_, sizeof d_);                                          \
    } while (0)

/* a[0..NL) += f0..f3, then f0..f3 = 0. */
#define BNC_FLUSH4(a, f0, f1, f2, f3)                                         \
    do {                                                                      \
        BNC_FLUSH1((a), f0);                                                  \
        BNC_FLUSH1((a) + F(VL), f1);                                          \
        BNC_FLUSH1((a) + 2 * F(VL), f2);                                      \
        BNC_FLUSH1((a) + 3 * F(VL), f3);                                      \
        f0 = f1 = f2 = f3 = (F(vec_t)){0};                                    \
    } while (0)

/* a += (f0 + f2) + (f1 + f3), added in P and converted to VL double lanes
 * held in a register (a, f: the names' stems), then f0..f3 = 0. */
#define BNC_PFOLD(a, f)                                                       \
    do {                                                                      \
        a += __builtin_convertvector((f##0 + f##2) + (f##1 + f##3), F(dvec_t)); \
        f##0 = f##1 = f##2 = f##3 = (F(vec_t)){0};                            \
    } while (0)
