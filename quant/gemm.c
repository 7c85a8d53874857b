/*
 * gemm.c: the quantized product: kernel choice, the split over threads, the
 * scalar reference kernel, and the chunk planner the SIMD kernels share.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Products smaller than this (multiply-adds) stay on the calling thread:
 * waking the team costs more than it saves. */
#define GEMM_PARALLEL_MIN_MACS (1 << 20)
/* Tokens per work item when threads split the tokens. */
#define GEMM_TOKEN_GRAIN 16

/* -------------------------------------------------------------- choosing */

static q_kernel_fn *const kernel_fns[Q_KERNEL_COUNT] = {
    [Q_KERNEL_SCALAR] = q_gemm_scalar,    [Q_KERNEL_AVX2] = q_gemm_avx2,
    [Q_KERNEL_AVX_VNNI] = q_gemm_avxvnni, [Q_KERNEL_AVX512_VNNI] = q_gemm_avx512,
    [Q_KERNEL_AMX] = q_gemm_amx,
};

static const char *const kernel_names[Q_KERNEL_COUNT] = {
    [Q_KERNEL_SCALAR] = "scalar",      [Q_KERNEL_AVX2] = "avx2", [Q_KERNEL_AVX_VNNI] = "avxvnni",
    [Q_KERNEL_AVX512_VNNI] = "avx512", [Q_KERNEL_AMX] = "amx",
};

static const int kernel_panels[Q_KERNEL_COUNT] = {
    [Q_KERNEL_SCALAR] = 1,
    [Q_KERNEL_AVX2] = Q_PANEL_AVX2,
    [Q_KERNEL_AVX_VNNI] = Q_PANEL_AVXVNNI,
    [Q_KERNEL_AVX512_VNNI] = Q_PANEL_AVX512,
    [Q_KERNEL_AMX] = Q_PANEL_AMX,
};

bool q_kernel_available(enum q_kernel kernel)
{
    const struct util_cpu *cpu = util_cpu();
    bool vnni = util_cpu_has_avx512() && cpu->avx512vnni;
    switch (kernel) {
    case Q_KERNEL_SCALAR:
        return true;
    case Q_KERNEL_AVX2:
        return cpu->avx2 && cpu->fma;
    case Q_KERNEL_AVX_VNNI:
        return cpu->avx2 && cpu->fma && cpu->avxvnni;
    case Q_KERNEL_AVX512_VNNI:
        return vnni;
    case Q_KERNEL_AMX:
        return vnni && cpu->amx_usable; /* rescales with AVX-512 */
    default:
        return false;
    }
}

const char *q_kernel_name(enum q_kernel kernel)
{
    return kernel >= 0 && kernel < Q_KERNEL_COUNT ? kernel_names[kernel] : "unknown";
}

static enum q_kernel selected_kernel;
static pthread_once_t select_once = PTHREAD_ONCE_INIT;

static void select_kernel(void)
{
    selected_kernel = Q_KERNEL_SCALAR;
    for (int k = Q_KERNEL_SCALAR; k < Q_KERNEL_COUNT; k++)
        if (q_kernel_available((enum q_kernel)k)) selected_kernel = (enum q_kernel)k;
    const char *want = getenv("LLMD_QKERNEL");
    if (!want || !*want) return;
    for (int k = 0; k < Q_KERNEL_COUNT; k++) {
        if (strcmp(want, kernel_names[k]) != 0) continue;
        if (q_kernel_available((enum q_kernel)k))
            selected_kernel = (enum q_kernel)k;
        else
            LOG_WARN("quant: LLMD_QKERNEL=%s is not available here; using %s", want,
                     kernel_names[selected_kernel]);
        return;
    }
    LOG_WARN("quant: unknown LLMD_QKERNEL=%s; using %s", want, kernel_names[selected_kernel]);
}

enum q_kernel q_kernel_selected(void)
{
    pthread_once(&select_once, select_kernel);
    return selected_kernel;
}

/* ------------------------------------------------------------- products */

static bool same_structure(const struct q_format *a, const struct q_format *b)
{
    if (a->method != b->method || a->n_outlier != b->n_outlier) return false;
    return a->method == Q_W8A8 || a->group_size == b->group_size;
}

static void check_job(enum q_kernel kernel, const struct q_gemm_job *job, int m)
{
    const q_linear *layer = job->layer;
    const q_act *act = job->act;
    UTIL_CHECK(layer && act && job->y && job->ldy >= layer->n);
    UTIL_CHECK(m >= 1 && m <= act->m);
    UTIL_CHECK(q_kernel_available(kernel));
    UTIL_CHECK(act->k == layer->k && same_structure(&act->format, &layer->format));
    UTIL_CHECK(!act->perm_known || act->perm_hash == layer->perm_hash);
}

/* Thread ith's share of the jobs with one kernel. The panels of all jobs
 * are one range cut into nth contiguous parts (each thread streams its own
 * stretch of weights); with fewer panels than threads, the tokens are cut
 * too. */
static void jobs_part(enum q_kernel kernel, const struct q_gemm_job *jobs, int n_jobs, int m,
                      int ith, int nth)
{
    q_kernel_fn *fn = kernel_fns[kernel];
    const int panel = kernel_panels[kernel];
    int panels = 0;
    for (int j = 0; j < n_jobs; j++) panels += (jobs[j].layer->n_blocks + panel - 1) / panel;
    int token_parts = 1;
    if (panels < nth) {
        token_parts = (nth + panels - 1) / panels;
        int most = (m + GEMM_TOKEN_GRAIN - 1) / GEMM_TOKEN_GRAIN;
        token_parts = token_parts < most ? token_parts : most;
    }
    int first, last;
    util_split(panels * token_parts, ith, nth, &first, &last);
    /* Items are (panel, token part), panel-major; consecutive items of one job
     * and one token part make one kernel call. */
    int job = 0, job_first_panel = 0;
    for (int item = first; item < last;) {
        int p = item / token_parts, part = item % token_parts;
        while (p >= job_first_panel + (jobs[job].layer->n_blocks + panel - 1) / panel) {
            job_first_panel += (jobs[job].layer->n_blocks + panel - 1) / panel;
            job++;
        }
        const struct q_gemm_job *jb = &jobs[job];
        int job_panels = (jb->layer->n_blocks + panel - 1) / panel;
        int p_end = p + 1;
        if (token_parts == 1) {
            p_end = job_first_panel + job_panels < last ? job_first_panel + job_panels : last;
        }
        int t0 = (int)((long long)m * part / token_parts);
        int t1 = (int)((long long)m * (part + 1) / token_parts);
        int b0 = (p - job_first_panel) * panel;
        int b1 = (p_end - job_first_panel) * panel;
        if (b1 > jb->layer->n_blocks) b1 = jb->layer->n_blocks;
        if (t0 < t1) fn(jb->layer, jb->act, t0, t1, b0, b1, jb->y, jb->ldy, jb->accumulate);
        item = token_parts == 1 ? p_end : item + 1;
    }
}

/* Below a tile's 16 rows AMX computes mostly padding: on an AMX Xeon the
 * VNNI kernel was 1.9-2.7x faster at M = 1 and AMX 1.1-1.3x faster at M = 32
 * (BENCHMARKS.md, Quantized GEMM). */
#define AMX_MIN_ROWS 16

static enum q_kernel kernel_for(int m)
{
    enum q_kernel kernel = q_kernel_selected();
    return kernel == Q_KERNEL_AMX && m < AMX_MIN_ROWS ? Q_KERNEL_AVX512_VNNI : kernel;
}

void q_gemm_jobs_with(enum q_kernel kernel, const struct q_gemm_job *jobs, int n_jobs, int m,
                      int ith, int nth)
{
    UTIL_CHECK(n_jobs >= 1 && ith >= 0 && ith < nth);
    for (int j = 0; j < n_jobs; j++) check_job(kernel, &jobs[j], m);
    jobs_part(kernel, jobs, n_jobs, m, ith, nth);
}

void q_gemm_jobs(const struct q_gemm_job *jobs, int n_jobs, int m, int ith, int nth)
{
    q_gemm_jobs_with(kernel_for(m), jobs, n_jobs, m, ith, nth);
}

void q_gemm_with(enum q_kernel kernel, const q_linear *layer, const q_act *act, int m, float *y)
{
    struct q_gemm_job job = {layer, act, y, layer ? layer->n : 0, false};
    check_job(kernel, &job, m);
    double macs = (double)m * layer->n * layer->k;
    int threads = omp_in_parallel() || macs < GEMM_PARALLEL_MIN_MACS ? 1 : omp_get_max_threads();
    if (threads == 1) {
        jobs_part(kernel, &job, 1, m, 0, 1);
        return;
    }
#pragma omp parallel num_threads(threads)
    jobs_part(kernel, &job, 1, m, omp_get_thread_num(), omp_get_num_threads());
}

void q_gemm(const q_linear *layer, const q_act *act, int m, float *y)
{
    q_gemm_with(kernel_for(m), layer, act, m, y);
}

/* ------------------------------------------------------- scalar reference */

/* The definition, plainly: int32 dot products per group, rescaled in fp32. */
void q_gemm_scalar(const struct q_linear *layer, const struct q_act *act, int t_begin, int t_end,
                   int block_begin, int block_end, float *y, int ldy, bool accumulate)
{
    const struct q_layout *lay = &layer->layout;
    int row_end = block_end * Q_BLOCK_ROWS < layer->n ? block_end * Q_BLOCK_ROWS : layer->n;
    for (int t = t_begin; t < t_end; t++) {
        const int8_t *a = q_act_row(act, t);
        for (int row = block_begin * Q_BLOCK_ROWS; row < row_end; row++) {
            float sum = 0.0f;
            for (int g = 0; g < lay->n_groups; g++) {
                const struct q_group *grp = &lay->groups[g];
                int32_t dot = 0;
                for (int c = 0; c < grp->len; c++)
                    dot += a[grp->act_offset + c] * q_linear_value(layer, row, g, c);
                float w_scale = q_linear_scales(layer, row / Q_BLOCK_ROWS, g)[row % Q_BLOCK_ROWS];
                /* rounded as the SIMD kernels round it (one multiply, one
                 * fused multiply-add), so that their results are the same
                 * bits: a W4A4 model turns a last-bit difference into a
                 * different int4 activation a few layers on */
                sum = fmaf((float)dot * w_scale, q_act_scale(act, t, g), sum);
            }
            float *out = y + (size_t)t * ldy + row;
            *out = accumulate ? *out + sum : sum;
        }
    }
}

/* ---------------------------------------------------------------- chunks */

/* Asks for the packed bytes of the chunk after *cur in each block: a
 * chunk's bytes sit in pages of their own block, read one chunk at a time,
 * which the hardware prefetchers do not run ahead of. */
static void prefetch_next_chunk(const struct q_linear *layer, int block, int nv,
                                const struct q_cursor *cur)
{
    const struct q_layout *lay = &layer->layout;
    if (cur->g >= lay->n_groups) return;
    const struct q_group *grp = &lay->groups[cur->g];
    size_t start = grp->w_offset + (size_t)cur->c * Q_BLOCK_ROWS * (size_t)grp->bits / 8;
    size_t bytes = (size_t)Q_CHUNK_CHANNELS * Q_BLOCK_ROWS * (size_t)grp->bits / 8;
    if (bytes > lay->block_bytes - start) bytes = lay->block_bytes - start;
    for (int j = 0; j < nv; j++) {
        const char *p =
            (const char *)layer->packed + (size_t)(block + j) * lay->block_bytes + start;
        for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T1);
    }
}

int q_chunk_plan(const struct q_linear *layer, int block, int nv, struct q_cursor *cur,
                 struct q_seg *segs)
{
    const struct q_layout *lay = &layer->layout;
    int n_segs = 0, channels = 0;
    while (cur->g < lay->n_groups && channels < Q_CHUNK_CHANNELS) {
        const struct q_group *grp = &lay->groups[cur->g];
        int len = grp->len - cur->c;
        if (len > Q_CHUNK_CHANNELS - channels) {
            if (grp->bits == 4) break; /* int4 groups are never split */
            len = Q_CHUNK_CHANNELS - channels;
        }
        struct q_seg *seg = &segs[n_segs++];
        seg->g = cur->g;
        seg->bits = grp->bits;
        seg->first = cur->c == 0;
        seg->a_offset = grp->act_offset + cur->c;
        seg->quads = len / 4;
        seg->packed = grp->bits == 4;
        for (int j = 0; j < nv; j++) {
            const uint8_t *blk =
                layer->packed + (size_t)(block + j) * lay->block_bytes + grp->w_offset;
            seg->w[j] = grp->bits == 8 ? blk + (size_t)(cur->c / 4) * Q_QUAD_BYTES : blk;
            seg->w_scale[j] = q_linear_scales(layer, block + j, cur->g);
        }
        channels += len;
        cur->c += len;
        if (cur->c == grp->len) {
            cur->g++;
            cur->c = 0;
        }
    }
    prefetch_next_chunk(layer, block, nv, cur);
    return n_segs;
}

void q_chunk_unpack(struct q_seg *segs, int n_segs, int nv, uint8_t *buf, q_unpack_fn *unpack)
{
    size_t offset = 0;
    for (int s = 0; s < n_segs; s++) {
        struct q_seg *seg = &segs[s];
        if (!seg->packed) continue;
        for (int j = 0; j < nv; j++) {
            uint8_t *dst = buf + (size_t)j * Q_CHUNK_BLOCK_BYTES + offset;
            unpack(seg->w[j], seg->quads, dst);
            seg->w[j] = dst;
        }
        seg->packed = false;
        offset += (size_t)seg->quads * Q_QUAD_BYTES;
    }
}
