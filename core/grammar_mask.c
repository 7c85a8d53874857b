/*
 * grammar_mask.c: applying a token mask (a bitset over the vocabulary) to logits,
 * the one part of a warm step that touches every logit. A scalar
 * reference and an AVX2 version with the same result (tests compare them);
 * llm_grammar_apply_mask picks by the CPU.
 */
#include "core/grammar_internal.h"
#include "util/util.h"

#include <immintrin.h>
#include <math.h>

void llm_grammar_apply_mask_scalar(const uint64_t *bits, int32_t n, float *logits)
{
    for (int32_t i = 0; i < n; i++)
        if (!(bits[i >> 6] >> (i & 63) & 1)) logits[i] = -INFINITY;
}

/* Whole 64-bit words first: all set (inside a string) costs nothing, all
 * clear (around structure) is eight stores; a mixed byte of the mask is
 * spread over eight lanes (lane k keeps its logit when bit k is set). */
void llm_grammar_apply_mask_avx2(const uint64_t *bits, int32_t n, float *logits)
{
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
    int32_t i = 0;
    for (; i + 64 <= n; i += 64) {
        uint64_t w = bits[i >> 6];
        if (w == ~0ull) continue;
        float *l = logits + i;
        if (w == 0) {
            for (int k = 0; k < 8; k++) _mm256_storeu_ps(l + 8 * k, neg_inf);
            continue;
        }
        for (int k = 0; k < 8; k++) {
            int byte = (int)(w >> (8 * k) & 0xff);
            if (byte == 0xff) continue;
            __m256i set = _mm256_and_si256(_mm256_set1_epi32(byte), lane_bit);
            __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bit));
            _mm256_storeu_ps(l + 8 * k, _mm256_blendv_ps(neg_inf, _mm256_loadu_ps(l + 8 * k), keep));
        }
    }
    for (; i < n; i++)
        if (!(bits[i >> 6] >> (i & 63) & 1)) logits[i] = -INFINITY;
}

void llm_grammar_apply_mask(const uint64_t *bits, int32_t n, float *logits)
{
    if (util_cpu()->avx2)
        llm_grammar_apply_mask_avx2(bits, n, logits);
    else
        llm_grammar_apply_mask_scalar(bits, n, logits);
}
