/*
 * head.c: the output head (lm_head) with f16 weights: logits y (R, V) =
 * x (R, D) W^T for W (V, D) stored as IEEE half.
 *
 * Decode reads the whole head for a handful of rows: it is bandwidth bound,
 * and at our sizes it is the largest matrix of the model (llmd-20m: 8000 x
 * 512, 16 MB in f32, twice its quantized layers together). Half the bytes,
 * converted in registers (F16C) and multiplied in fp32. Few rows: a dot
 * product kernel, HEAD_MR rows at a time against each weight row. Many rows
 * (prefill with every logit): panels of weight rows are widened to f32 and
 * handed to OpenBLAS. Threads split the vocabulary.
 */
#include "core/model_internal.h"
#include "util/util.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>

#define HEAD_MR       4   /* rows of x per pass of the dot kernel */
#define HEAD_DOT_ROWS 16  /* up to this many rows of x: the dot kernel */
#define HEAD_PANEL    128 /* weight rows widened at once for sgemm */

void llm_head_f16_scalar(const float *x, const uint16_t *w, float *y, int R, int V, int D)
{
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) {
            float acc = 0.0f;
            for (int d = 0; d < D; d++)
                acc += x[(size_t)r * D + d] * util_f16_to_f32(w[(size_t)v * D + d]);
            y[(size_t)r * V + v] = acc;
        }
}

static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Rows [r0, r0 + mr) of x against weight row v; D a multiple of 8. */
static inline void dot_rows(const float *x, const uint16_t *wv, float *y, int r0, int mr, int v,
                            int V, int D)
{
    __m256 acc[HEAD_MR];
    for (int i = 0; i < HEAD_MR; i++) acc[i] = _mm256_setzero_ps();
    for (int d = 0; d < D; d += 8) {
        __m256 w8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wv + d)));
        for (int i = 0; i < mr; i++)
            acc[i] = _mm256_fmadd_ps(w8, _mm256_loadu_ps(x + (size_t)(r0 + i) * D + d), acc[i]);
    }
    for (int i = 0; i < mr; i++) y[(size_t)(r0 + i) * V + v] = hsum(acc[i]);
}

void llm_head_f16_part(const float *x, const uint16_t *w, float *y, int R, int V, int D, int v0,
                       int v1)
{
    UTIL_CHECK(D % 8 == 0 && R >= 0 && v0 >= 0 && v0 <= v1 && v1 <= V);
    if (R <= HEAD_DOT_ROWS) {
        for (int v = v0; v < v1; v++)
            for (int r = 0; r < R; r += HEAD_MR)
                dot_rows(x, w + (size_t)v * D, y, r, R - r < HEAD_MR ? R - r : HEAD_MR, v, V, D);
        return;
    }
    float *wide = util_aligned_alloc(sizeof(float) * HEAD_PANEL * (size_t)D);
    for (int p0 = v0; p0 < v1; p0 += HEAD_PANEL) {
        int n = v1 - p0 < HEAD_PANEL ? v1 - p0 : HEAD_PANEL;
        const uint16_t *src = w + (size_t)p0 * D;
        for (size_t i = 0; i < (size_t)n * D; i += 8)
            _mm256_store_ps(wide + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, n, D, 1.0f, x, D, wide, D, 0.0f,
                    y + p0, V);
    }
    util_aligned_free(wide);
}

void llm_head_f16(const float *x, const uint16_t *w, float *y, int R, int V, int D)
{
    UTIL_CHECK(D % 8 == 0 && R >= 0 && V >= 1);
#pragma omp parallel if (!omp_in_parallel())
    {
        int v0, v1;
        util_split(V, omp_get_thread_num(), omp_get_num_threads(), &v0, &v1);
        llm_head_f16_part(x, w, y, R, V, D, v0, v1);
    }
}
