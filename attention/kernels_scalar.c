/* kernels_scalar.c: the plain reference kernels every SIMD version is tested
 * against, and the choice of kernel set at start-up. Not tuned on purpose. */
#include "attention/attn_internal.h"

#include <math.h>
#include <pthread.h>

/* ------------------------------------------------------------ page kernel */

static void page_scalar(enum attn_kv_type type, const struct attn_block *block, int head_dim,
                        int page_size, const struct attn_rows *rows, const int *visible)
{
    float s[ATTN_MAX_PAGE_SIZE];
    for (int r = 0; r < rows->n; r++) {
        int n = visible[r] < page_size ? visible[r] : page_size;
        if (n <= 0) continue;
        const float *q = rows->q + (size_t)r * head_dim;
        float *acc = rows->acc + (size_t)r * head_dim;
        float page_max = -INFINITY;
        for (int t = 0; t < n; t++) {
            float dot = 0;
            for (int d = 0; d < head_dim; d++)
                dot += q[d] * attn_block_key(block, type, head_dim, page_size, d, t);
            s[t] = dot;
            page_max = fmaxf(page_max, dot);
        }
        float old_max = rows->max[r], new_max = fmaxf(old_max, page_max);
        if (new_max > old_max) {
            float corr = expf(old_max - new_max);
            rows->sum[r] *= corr;
            for (int d = 0; d < head_dim; d++) acc[d] *= corr;
            rows->max[r] = new_max;
        }
        for (int t = 0; t < n; t++) {
            float p = expf(s[t] - new_max);
            rows->sum[r] += p;
            for (int d = 0; d < head_dim; d++)
                acc[d] += p * attn_block_value(block, type, head_dim, t, d);
        }
    }
}

#define PAGE_SCALAR(NAME, TYPE)                                                                    \
    static void NAME(const struct attn_block *block, int head_dim, int page_size,                  \
                     const struct attn_rows *rows, const int *visible)                             \
    {                                                                                              \
        page_scalar(TYPE, block, head_dim, page_size, rows, visible);                              \
    }
PAGE_SCALAR(page_scalar_f32, ATTN_KV_F32)
PAGE_SCALAR(page_scalar_f16, ATTN_KV_F16)
PAGE_SCALAR(page_scalar_int8, ATTN_KV_INT8)
PAGE_SCALAR(page_scalar_int4, ATTN_KV_INT4)

/* ----------------------------------------------------------- Quest bound */

static void bound_scalar(const struct attn_bounds_view *view, int n_pages, int head_dim,
                         const float *q, int n_q, float *out)
{
    for (int i = 0; i < n_pages; i++) {
        const unsigned char *at = view->base + (size_t)view->pages[i] * view->stride;
        const uint16_t *kmax = (const uint16_t *)at;
        const uint16_t *kmin = (const uint16_t *)(at + view->kmin_offset);
        for (int j = 0; j < n_q; j++) {
            float sum = 0;
            for (int d = 0; d < head_dim; d++) {
                float x = q[(size_t)j * head_dim + d];
                sum += fmaxf(x * util_f16_to_f32(kmax[d]), x * util_f16_to_f32(kmin[d]));
            }
            out[(size_t)i * n_q + j] = sum;
        }
    }
}

/* ------------------------------------------------------------- dispatch */

static const struct attn_kernels kernels_scalar = {
    .name = "scalar",
    .page = {page_scalar_f32, page_scalar_f16, page_scalar_int8, page_scalar_int4},
    .bound = bound_scalar,
};

const struct attn_kernels *attn_kernels_scalar(void)
{
    return &kernels_scalar;
}

const struct attn_kernels *attn_kernels_avx2(void)
{
    const struct util_cpu *cpu = util_cpu();
    return cpu->avx2 && cpu->fma && cpu->f16c ? &attn_kernels_avx2_table : NULL;
}

const struct attn_kernels *attn_kernels_avx512(void)
{
    return util_cpu_has_avx512() ? &attn_kernels_avx512_table : NULL;
}

static const struct attn_kernels *best;
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

static void choose_best(void)
{
    best = attn_kernels_avx512();
    if (!best) best = attn_kernels_avx2();
    if (!best) best = &kernels_scalar;
}

const struct attn_kernels *attn_kernels_best(void)
{
    pthread_once(&best_once, choose_best);
    return best;
}
