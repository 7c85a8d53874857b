/* rng.c: counter-based random streams for the noise of the cells and reads.
 *
 * Sample i of a stream depends only on the stream's key and i, so a
 * product split over threads, tiles or batch sizes draws the same noise.
 * Normals come by Box-Muller from a pair of 32-bit words; samples are laid
 * out in blocks of 32: lanes 0..15 take the cosine branch of pairs
 * 16 * block + lane, lanes 16..31 the sine branch of the same pairs, so the
 * SIMD versions need no shuffles. The scalar reference uses libm; the SIMD
 * versions share one polynomial log/sincos (within 2e-6 of it). */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t pim_key(uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    uint64_t h = splitmix(a);
    h = splitmix(h ^ b);
    h = splitmix(h ^ c);
    return splitmix(h ^ d);
}

void pim_rng_uniform(uint64_t key, uint64_t first, float *out, size_t n)
{
    uint32_t a = (uint32_t)key, b = (uint32_t)(key >> 32);
    for (size_t i = 0; i < n; i++) {
        uint64_t k = first + i;
        out[i] = pim_word_to_unit(pim_mix32(pim_mix32((uint32_t)k ^ a) + b + (uint32_t)(k >> 32)));
    }
}

/* ------------------------------------------------------------------ scalar */

static float normal_sample_scalar(uint64_t key, uint64_t i)
{
    uint64_t block = i >> 5;
    unsigned lane = (unsigned)(i & 31);
    uint32_t w1, w2;
    pim_rng_words(key, (uint32_t)(block * 16 + (lane & 15)), &w1, &w2);
    double r = sqrt(-2.0 * log((double)pim_word_to_unit(w1)));
    double angle = 2.0 * M_PI * (double)pim_word_to_unit(w2);
    return (float)(lane < 16 ? r * cos(angle) : r * sin(angle));
}

void pim_rng_normal_scalar(uint64_t key, uint64_t first, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = normal_sample_scalar(key, first + i);
}

/* -------------------------------------------------------------------- AVX2 */

static inline __m256i mix32_avx2(__m256i x)
{
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7feb352d));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bu));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

static inline __m256 unit_avx2(__m256i w)
{
    __m256i v = _mm256_add_epi32(_mm256_srli_epi32(w, 8), _mm256_set1_epi32(1));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(0x1p-24f));
}

/* log(u) for u in (0, 1] (Cephes logf). */
static inline __m256 log_avx2(__m256 x)
{
    __m256i bits = _mm256_castps_si256(x);
    __m256 e =
        _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
    x = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                            _mm256_set1_epi32(0x3f000000))); /* [0.5, 1) */
    __m256 small = _mm256_cmp_ps(x, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    e = _mm256_sub_ps(e, _mm256_and_ps(small, _mm256_set1_ps(1.0f)));
    x = _mm256_sub_ps(_mm256_add_ps(x, _mm256_and_ps(small, x)), _mm256_set1_ps(1.0f));
    __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(7.0376836292e-2f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.1514610310e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.1676998740e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.2420140846e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.4249322787e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.6668057665e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(2.0000714765e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-2.4999993993e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(3.3333331174e-1f));
    y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
    y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
    y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
    x = _mm256_add_ps(x, y);
    return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), x);
}

/* sin and cos of 2 pi u for u in (0, 1]. */
static inline void sincos2pi_avx2(__m256 u, __m256 *s, __m256 *c)
{
    __m256 q = _mm256_round_ps(_mm256_mul_ps(u, _mm256_set1_ps(4.0f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_fnmadd_ps(q, _mm256_set1_ps(0.25f), u);
    __m256 t = _mm256_mul_ps(f, _mm256_set1_ps((float)(2.0 * M_PI)));
    __m256 t2 = _mm256_mul_ps(t, t);
    __m256 sp = _mm256_set1_ps(-1.9515295891e-4f);
    sp = _mm256_fmadd_ps(sp, t2, _mm256_set1_ps(8.3321608736e-3f));
    sp = _mm256_fmadd_ps(sp, t2, _mm256_set1_ps(-1.6666654611e-1f));
    __m256 sn = _mm256_fmadd_ps(_mm256_mul_ps(sp, t2), t, t);
    __m256 cp = _mm256_set1_ps(2.443315711809948e-5f);
    cp = _mm256_fmadd_ps(cp, t2, _mm256_set1_ps(-1.388731625493765e-3f));
    cp = _mm256_fmadd_ps(cp, t2, _mm256_set1_ps(4.166664568298827e-2f));
    __m256 cs = _mm256_fmadd_ps(_mm256_mul_ps(cp, t2), t2,
                                _mm256_fnmadd_ps(t2, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
    __m256i qi = _mm256_and_si256(_mm256_cvtps_epi32(q), _mm256_set1_epi32(3));
    /* quadrant 1 or 3: swap; 2 or 3: negate sin; 1 or 2: negate cos */
    __m256 swap = _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(_mm256_and_si256(qi, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
    __m256 s0 = _mm256_blendv_ps(sn, cs, swap), c0 = _mm256_blendv_ps(cs, sn, swap);
    __m256i neg_s = _mm256_or_si256(_mm256_cmpeq_epi32(qi, _mm256_set1_epi32(2)),
                                    _mm256_cmpeq_epi32(qi, _mm256_set1_epi32(3)));
    __m256i neg_c = _mm256_or_si256(_mm256_cmpeq_epi32(qi, _mm256_set1_epi32(1)),
                                    _mm256_cmpeq_epi32(qi, _mm256_set1_epi32(2)));
    __m256 sign = _mm256_set1_ps(-0.0f);
    *s = _mm256_xor_ps(s0, _mm256_and_ps(_mm256_castsi256_ps(neg_s), sign));
    *c = _mm256_xor_ps(c0, _mm256_and_ps(_mm256_castsi256_ps(neg_c), sign));
}

/* One block of 32 samples. */
static void normal_block_avx2(uint64_t key, uint64_t block, float *out)
{
    uint32_t a = (uint32_t)key, b = (uint32_t)(key >> 32);
    for (int h = 0; h < 2; h++) {
        __m256i k = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)(block * 16 + 8 * h)),
                                     _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i va = _mm256_set1_epi32((int)a), vb = _mm256_set1_epi32((int)b);
        __m256i w1 = mix32_avx2(_mm256_add_epi32(mix32_avx2(_mm256_xor_si256(k, va)), vb));
        __m256i w2 =
            mix32_avx2(_mm256_xor_si256(_mm256_xor_si256(mix32_avx2(_mm256_add_epi32(k, vb)), va),
                                        _mm256_set1_epi32((int)0x9e3779b9u)));
        __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log_avx2(unit_avx2(w1))));
        __m256 s, c;
        sincos2pi_avx2(unit_avx2(w2), &s, &c);
        _mm256_storeu_ps(out + 8 * h, _mm256_mul_ps(r, c));
        _mm256_storeu_ps(out + 16 + 8 * h, _mm256_mul_ps(r, s));
    }
}

void pim_rng_normal_avx2(uint64_t key, uint64_t first, float *out, size_t n)
{
    float tmp[32];
    size_t i = 0;
    while (i < n) {
        uint64_t pos = first + i, block = pos >> 5;
        size_t lane = (size_t)(pos & 31), take = 32 - lane;
        if (take > n - i) take = n - i;
        if (lane == 0 && take == 32) {
            normal_block_avx2(key, block, out + i);
        } else {
            normal_block_avx2(key, block, tmp);
            memcpy(out + i, tmp + lane, take * sizeof(float));
        }
        i += take;
    }
}

/* --------------------------------------------------------------- dispatch */

bool pim_isa_available(enum pim_isa isa)
{
    switch (isa) {
    case PIM_ISA_SCALAR:
        return true;
    case PIM_ISA_AVX2:
        return util_cpu()->avx2 && util_cpu()->fma;
    case PIM_ISA_AVX512:
        return util_cpu_has_avx512() && util_cpu()->avx512vnni;
    default:
        return false;
    }
}

const char *pim_isa_name(enum pim_isa isa)
{
    static const char *const names[PIM_ISA_COUNT] = {"scalar", "avx2", "avx512"};
    return (unsigned)isa < PIM_ISA_COUNT ? names[isa] : "?";
}

enum pim_isa pim_isa_selected(void)
{
    return pim_isa_available(PIM_ISA_AVX512) ? PIM_ISA_AVX512 : PIM_ISA_AVX2;
}

void pim_rng_normal_with(enum pim_isa isa, uint64_t key, uint64_t first, float *out, size_t n)
{
    UTIL_CHECK(pim_isa_available(isa));
    switch (isa) {
    case PIM_ISA_SCALAR:
        pim_rng_normal_scalar(key, first, out, n);
        break;
    case PIM_ISA_AVX2:
        pim_rng_normal_avx2(key, first, out, n);
        break;
    default:
        pim_rng_normal_avx512(key, first, out, n);
        break;
    }
}

void pim_rng_normal(uint64_t key, uint64_t first, float *out, size_t n)
{
    pim_rng_normal_with(pim_isa_selected(), key, first, out, n);
}
