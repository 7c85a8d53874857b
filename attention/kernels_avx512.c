/* kernels_avx512.c: the attention kernels for AVX-512 (16 lanes). Built with
 * AVX-512 flags; only reached through attn_kernels_avx512(), which checks
 * the CPU first. */
#include "attention/attn_internal.h"

#include <immintrin.h>
#include <math.h>

typedef __m512 vec;
#define VEC_LANES 16

static inline vec vec_zero(void)
{
    return _mm512_setzero_ps();
}
static inline vec vec_set1(float x)
{
    return _mm512_set1_ps(x);
}
static inline vec vec_load(const float *p)
{
    return _mm512_loadu_ps(p);
}
static inline void vec_store(float *p, vec v)
{
    _mm512_storeu_ps(p, v);
}
static inline vec vec_add(vec a, vec b)
{
    return _mm512_add_ps(a, b);
}
static inline vec vec_sub(vec a, vec b)
{
    return _mm512_sub_ps(a, b);
}
static inline vec vec_mul(vec a, vec b)
{
    return _mm512_mul_ps(a, b);
}
static inline vec vec_fmadd(vec a, vec b, vec c)
{
    return _mm512_fmadd_ps(a, b, c);
}
static inline __attribute__((unused)) vec vec_abs(vec a)
{
    return _mm512_abs_ps(a);
}
static inline vec vec_max(vec a, vec b)
{
    return _mm512_max_ps(a, b);
}
static inline vec vec_min(vec a, vec b)
{
    return _mm512_min_ps(a, b);
}
static inline float vec_reduce_add(vec a)
{
    return _mm512_reduce_add_ps(a);
}

/* out[j] = sum of the lanes of aj: pairs interleave, then 128-bit lanes add. */
static inline void vec_reduce_add4(vec a0, vec a1, vec a2, vec a3, float *out)
{
    vec x01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    vec x23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(x01), _mm512_castps_pd(x23));
    __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(x01), _mm512_castps_pd(x23));
    vec y = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    __m256 z = _mm256_add_ps(_mm512_castps512_ps256(y),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(y), 1)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1)));
}

/* Lanes [0, n). */
static inline __mmask16 first_lanes(int n)
{
    return n <= 0 ? 0 : n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
}

static inline float vec_reduce_max_first(vec a, int n)
{
    return _mm512_mask_reduce_max_ps(first_lanes(n), a);
}

/* exp(x) for x <= 0 (Cephes expf's reduction and polynomial, about 1 ulp);
 * scalef rebuilds 2^n, underflowing to 0 like expf does. */
static inline vec exp_nonpositive(vec x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    vec n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vec r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    vec p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline vec vec_exp_first(vec x, int n)
{
    return _mm512_maskz_mov_ps(first_lanes(n), exp_nonpositive(x));
}

static inline vec vec_load_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline vec vec_load_i8(const int8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* One whole 16-element chunk: 8 bytes, low nibbles then high nibbles. */
static inline vec vec_load_i4(const uint8_t *row, int i0)
{
    __m128i x = _mm_loadl_epi64((const __m128i *)(row + i0 / 2));
    __m128i nibble = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(x, nibble), hi = _mm_and_si128(_mm_srli_epi16(x, 4), nibble);
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(lo, hi)));
}

#define SIMD_TABLE attn_kernels_avx512_table
#define SIMD_NAME  "avx512"
#include "attention/kernels_simd.h"
