/* body_end.h - the end of a kernel body: undefines the macros dtypes.h and
 * lanes.h defined for one dtype. */
#undef BNC_VLOAD
#undef BNC_WLOAD
#undef BNC_STEP
#undef BNC_FLUSH1
#undef BNC_FLUSH4
#undef BNC_PFOLD
#undef F
#undef T
#undef P
#undef SFX
#undef LOAD
#undef STORE
#undef STAGED
