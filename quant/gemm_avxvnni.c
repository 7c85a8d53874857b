/*
 * gemm_avxvnni.c: the AVX-VNNI kernel (vpdpbusd on ymm: Alder Lake and
 * later, Zen 4 and later, Sapphire Rapids); compiled with -mavxvnni, run
 * only where cpuid says so. The body is gemm_ymm.h.
 */
#define YMM_VNNI   1
#define YMM_KERNEL q_gemm_avxvnni
#include "quant/gemm_ymm.h"
