/* kernels.c: the crossbar column sums, a plain scalar reference and AVX2
 * versions (the AVX-512 ones are in kernels_avx512.c). Layouts are in
 * pim_internal.h. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <immintrin.h>

/* ------------------------------------------------------------------ scalar */

void pim_kernel_i8_scalar(const uint8_t *lv, const int8_t *d, int ld, int nt, int nb, int r4,
                          float *p)
{
    for (int t = 0; t < nt; t++)
        for (int b = 0; b < nb; b++)
            for (int c = 0; c < PIM_GROUP; c++) {
                int32_t sum = 0;
                for (int r = 0; r < r4; r++) {
                    size_t cell =
                        ((size_t)b * (r4 / 4) + r / 4) * (PIM_GROUP * 4) + c * 4 + (r & 3);
                    sum += lv[cell] * d[(size_t)t * ld + (size_t)b * r4 + r];
                }
                p[((size_t)t * nb + b) * PIM_GROUP + c] = (float)sum;
            }
}

void pim_kernel_f32_scalar(const float *g, const float *d, int ld, int nt, int nb, int r4,
                           float off, float *p, float *q)
{
    for (int t = 0; t < nt; t++)
        for (int b = 0; b < nb; b++)
            for (int c = 0; c < PIM_GROUP; c++) {
                float sum = 0, var = 0;
                for (int r = 0; r < r4; r++) {
                    float cell = g[((size_t)b * r4 + r) * PIM_GROUP + c];
                    float x = d[(size_t)t * ld + (size_t)b * r4 + r];
                    sum += cell * x;
                    var += (cell + off) * (cell + off) * x * x;
                }
                p[((size_t)t * nb + b) * PIM_GROUP + c] = sum;
                if (q) q[((size_t)t * nb + b) * PIM_GROUP + c] = var;
            }
}

void pim_unpack_scalar(const uint8_t *packed, int pack, size_t n_chunks, uint8_t *out)
{
    int w = 8 / pack;
    uint8_t mask = (uint8_t)((1u << w) - 1);
    for (size_t k = 0; k < n_chunks; k++)
        for (int q = 0; q < pack; q++)
            for (int i = 0; i < PIM_GROUP * 4; i++)
                out[(k * pack + q) * PIM_GROUP * 4 + i] =
                    (uint8_t)(packed[k * PIM_GROUP * 4 + i] >> (q * w)) & mask;
}

/* -------------------------------------------------------------------- AVX2 */

void pim_unpack_avx2(const uint8_t *packed, int pack, size_t n_chunks, uint8_t *out)
{
    int w = 8 / pack;
    const __m256i mask = _mm256_set1_epi8((char)((1u << w) - 1));
    for (size_t k = 0; k < n_chunks; k++)
        for (int h = 0; h < 4; h++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(packed + k * 128 + 32 * h));
            for (int q = 0; q < pack; q++) {
                __m256i l = _mm256_and_si256(_mm256_srli_epi16(v, q * w), mask);
                _mm256_storeu_si256((__m256i *)(out + (k * pack + q) * 128 + 32 * h), l);
            }
        }
}

/* Two vectors at a time share the level loads; 4 ymm of levels per row group.
 * Inlined with d1 constant NULL or not, so the test leaves the loop. */
static inline __attribute__((always_inline)) void
i8_block_avx2(const uint8_t *lv, const int8_t *d0, const int8_t *d1, int r4, float *p0, float *p1)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a0[4], a1[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) a0[k] = a1[k] = _mm256_setzero_si256();
    for (int g = 0; g < r4 / 4; g++) {
        const uint8_t *cells = lv + (size_t)g * PIM_GROUP * 4;
        int32_t w0, w1 = 0;
        __builtin_memcpy(&w0, d0 + 4 * g, 4);
        if (d1) __builtin_memcpy(&w1, d1 + 4 * g, 4);
        __m256i x0 = _mm256_set1_epi32(w0), x1 = _mm256_set1_epi32(w1);
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m256i l = _mm256_loadu_si256((const __m256i *)(cells + 32 * k));
            a0[k] = _mm256_add_epi32(a0[k], _mm256_madd_epi16(_mm256_maddubs_epi16(l, x0), ones));
            if (d1)
                a1[k] =
                    _mm256_add_epi32(a1[k], _mm256_madd_epi16(_mm256_maddubs_epi16(l, x1), ones));
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        _mm256_storeu_ps(p0 + 8 * k, _mm256_cvtepi32_ps(a0[k]));
        if (d1) _mm256_storeu_ps(p1 + 8 * k, _mm256_cvtepi32_ps(a1[k]));
    }
}

void pim_kernel_i8_avx2(const uint8_t *lv, const int8_t *d, int ld, int nt, int nb, int r4,
                        float *p)
{
    for (int b = 0; b < nb; b++) {
        const uint8_t *block = lv + (size_t)b * r4 * PIM_GROUP;
        for (int t = 0; t < nt; t += 2) {
            const int8_t *d0 = d + (size_t)t * ld + (size_t)b * r4;
            const int8_t *d1 = t + 1 < nt ? d0 + ld : NULL;
            float *p0 = p + ((size_t)t * nb + b) * PIM_GROUP;
            if (d1)
                i8_block_avx2(block, d0, d1, r4, p0, p0 + (size_t)nb * PIM_GROUP);
            else
                i8_block_avx2(block, d0, NULL, r4, p0, NULL);
        }
    }
}

/* Half a group (16 columns) for two vectors, with or without variances;
 * inlined with constant NULLs so the tests leave the loop. */
static inline __attribute__((always_inline)) void f32_half_avx2(const float *g, const float *d0,
                                                                const float *d1, int r4, float off,
                                                                float *p0, float *p1, float *q0,
                                                                float *q1)
{
    __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00;
    __m256 v00 = s00, v01 = s00, v10 = s00, v11 = s00;
    const __m256 o = _mm256_set1_ps(off);
    for (int r = 0; r < r4; r++) {
        __m256 g0 = _mm256_loadu_ps(g + (size_t)r * PIM_GROUP);
        __m256 g1 = _mm256_loadu_ps(g + (size_t)r * PIM_GROUP + 8);
        __m256 x0 = _mm256_set1_ps(d0[r]);
        s00 = _mm256_fmadd_ps(g0, x0, s00);
        s01 = _mm256_fmadd_ps(g1, x0, s01);
        __m256 x1 = _mm256_set1_ps(d1 ? d1[r] : 0.0f);
        if (d1) {
            s10 = _mm256_fmadd_ps(g0, x1, s10);
            s11 = _mm256_fmadd_ps(g1, x1, s11);
        }
        if (q0) {
            __m256 h0 = _mm256_add_ps(g0, o), h1 = _mm256_add_ps(g1, o);
            h0 = _mm256_mul_ps(h0, h0);
            h1 = _mm256_mul_ps(h1, h1);
            __m256 y0 = _mm256_mul_ps(x0, x0);
            v00 = _mm256_fmadd_ps(h0, y0, v00);
            v01 = _mm256_fmadd_ps(h1, y0, v01);
            if (d1) {
                __m256 y1 = _mm256_mul_ps(x1, x1);
                v10 = _mm256_fmadd_ps(h0, y1, v10);
                v11 = _mm256_fmadd_ps(h1, y1, v11);
            }
        }
    }
    _mm256_storeu_ps(p0, s00);
    _mm256_storeu_ps(p0 + 8, s01);
    if (d1) {
        _mm256_storeu_ps(p1, s10);
        _mm256_storeu_ps(p1 + 8, s11);
    }
    if (q0) {
        _mm256_storeu_ps(q0, v00);
        _mm256_storeu_ps(q0 + 8, v01);
        if (d1) {
            _mm256_storeu_ps(q1, v10);
            _mm256_storeu_ps(q1 + 8, v11);
        }
    }
}

void pim_kernel_f32_avx2(const float *g, const float *d, int ld, int nt, int nb, int r4, float off,
                         float *p, float *q)
{
    size_t next = (size_t)nb * PIM_GROUP;
    for (int b = 0; b < nb; b++) {
        const float *block = g + (size_t)b * r4 * PIM_GROUP;
        for (int t = 0; t < nt; t += 2) {
            const float *d0 = d + (size_t)t * ld + (size_t)b * r4;
            const float *d1 = t + 1 < nt ? d0 + ld : NULL;
            size_t at = ((size_t)t * nb + b) * PIM_GROUP;
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const float *gh = block + 16 * h;
                float *p0 = p + at + 16 * h, *p1 = p0 + next;
                if (q && d1)
                    f32_half_avx2(gh, d0, d1, r4, off, p0, p1, q + at + 16 * h,
                                  q + at + next + 16 * h);
                else if (q)
                    f32_half_avx2(gh, d0, NULL, r4, off, p0, NULL, q + at + 16 * h, NULL);
                else if (d1)
                    f32_half_avx2(gh, d0, d1, r4, off, p0, p1, NULL, NULL);
                else
                    f32_half_avx2(gh, d0, NULL, r4, off, p0, NULL, NULL, NULL);
            }
        }
    }
}

/* --------------------------------------------------------------- dispatch */

static const struct pim_kernels kernel_table[PIM_ISA_COUNT] = {
    [PIM_ISA_SCALAR] = {pim_kernel_i8_scalar, pim_kernel_f32_scalar, pim_unpack_scalar},
    [PIM_ISA_AVX2] = {pim_kernel_i8_avx2, pim_kernel_f32_avx2, pim_unpack_avx2},
    [PIM_ISA_AVX512] = {pim_kernel_i8_avx512, pim_kernel_f32_avx512, pim_unpack_avx512},
};

const struct pim_kernels *pim_kernels_for(enum pim_isa isa)
{
    UTIL_CHECK(pim_isa_available(isa));
    return &kernel_table[isa];
}
