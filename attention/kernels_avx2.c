/* kernels_avx2.c: the attention kernels for AVX2 + FMA + F16C (8 lanes), the
 * level every machine llmd runs on has. */
#include "attention/attn_internal.h"

#include <immintrin.h>
#include <math.h>

typedef __m256 vec;
#define VEC_LANES 8

static inline vec vec_zero(void)
{
    return _mm256_setzero_ps();
}
static inline vec vec_set1(float x)
{
    return _mm256_set1_ps(x);
}
static inline vec vec_load(const float *p)
{
    return _mm256_loadu_ps(p);
}
static inline void vec_store(float *p, vec v)
{
    _mm256_storeu_ps(p, v);
}
static inline vec vec_add(vec a, vec b)
{
    return _mm256_add_ps(a, b);
}
static inline vec vec_sub(vec a, vec b)
{
    return _mm256_sub_ps(a, b);
}
static inline vec vec_mul(vec a, vec b)
{
    return _mm256_mul_ps(a, b);
}
static inline vec vec_fmadd(vec a, vec b, vec c)
{
    return _mm256_fmadd_ps(a, b, c);
}
static inline __attribute__((unused)) vec vec_abs(vec a)
{
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a);
}

static inline vec vec_max(vec a, vec b)
{
    return _mm256_max_ps(a, b);
}
static inline vec vec_min(vec a, vec b)
{
    return _mm256_min_ps(a, b);
}
static inline float vec_reduce_add(vec a)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* out[j] = sum of the lanes of aj. */
static inline void vec_reduce_add4(vec a0, vec a1, vec a2, vec a3, float *out)
{
    vec h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* All-ones in lanes [0, n). */
static inline vec first_lanes(int n)
{
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
}

static inline float vec_reduce_max_first(vec a, int n)
{
    vec x = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), a, first_lanes(n));
    __m128 y = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    y = _mm_max_ps(y, _mm_movehl_ps(y, y));
    y = _mm_max_ss(y, _mm_movehdup_ps(y));
    return _mm_cvtss_f32(y);
}

/* exp(x) for x <= 0, as in kernels_avx512.c; 2^n goes into the exponent
 * bits, so x is clamped at -88 where n >= -127: the field n + 127 = 0 reads
 * as 0, and results below the normal range flush to 0. */
static inline vec exp_nonpositive(vec x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.0f));
    vec n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vec r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    vec p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline vec vec_exp_first(vec x, int n)
{
    return _mm256_and_ps(first_lanes(n), exp_nonpositive(x));
}

static inline vec vec_load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline vec vec_load_i8(const int8_t *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Half of a 16-element chunk: elements 0..7 are the low nibbles of its 8
 * bytes, 8..15 the high ones. */
static inline vec vec_load_i4(const uint8_t *row, int i0)
{
    __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + i0 / 16 * 8)));
    if (i0 % 16) x = _mm256_srli_epi32(x, 4);
    return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0x0f)));
}

#define SIMD_TABLE attn_kernels_avx2_table
#define SIMD_NAME  "avx2"
#include "attention/kernels_simd.h"
