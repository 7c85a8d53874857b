/*
 * gemm_avx2.c: the AVX2 kernel, for CPUs without AVX-512 VNNI or AVX-VNNI
 * (vpmaddubsw; the body is gemm_ymm.h).
 */
#define YMM_VNNI   0
#define YMM_KERNEL q_gemm_avx2
#include "quant/gemm_ymm.h"
