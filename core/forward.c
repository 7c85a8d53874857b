/*
 * forward.c: the batched forward pass.
 *
 * All new tokens of all sequences in a step are flattened into T rows, so
 * every linear layer is one matrix product over the whole batch (OpenBLAS
 * sgemm for fp32, q_gemm for the quantized paths). Only attention is per
 * sequence: each sequence's queries read its own KV pages.
 *
 * Per layer:  h = rmsnorm(x);  q,k,v = h Wq,Wk,Wv;  rope(q,k);  write k,v
 *             to the cache;  a = attention(q);  x += a Wo;
 *             h = rmsnorm(x);  x += (silu(h Wg) * h Wu) Wd
 * The quantized paths fuse the RMSNorm and SwiGLU into activation
 * quantization (q_act_quantize_rmsnorm / _swiglu).
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/model_internal.h"
#include "util/util.h"

struct llm_workspace {
    const llm_model *model;
    int max_tokens;
    float *x;        /* (T, dim) residual stream */
    float *h;        /* (T, dim) normalised input (fp32 path and calibration) */
    float *q;        /* (T, n_heads * head_dim) */
    float *k, *v;    /* (T, n_kv_heads * head_dim) */
    float *att;      /* (T, n_heads * head_dim) attention output */
    float *gate, *up; /* (T, ffn_dim) */
    float *out;      /* (T, dim) output of a projection before the residual add */
    int *pos;        /* (T) position of each row */
    /* quantized paths: activations of each input width */
    q_act *act_dim, *act_attn_out, *act_ffn;
    q_act *act_head; /* the head's input, when the head is W8A8 */
    llm_calib_fn calib;
    void *calib_ctx;
};

llm_workspace *llm_workspace_create(const llm_model *m, int max_tokens)
{
    const struct llm_config *c = &m->config;
    size_t T = (size_t)(max_tokens > 0 ? max_tokens : 1);
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    llm_workspace *ws = util_xcalloc(1, sizeof *ws);
    ws->model = m;
    ws->max_tokens = (int)T;
    ws->x = util_aligned_alloc(T * c->dim * sizeof(float));
    ws->h = util_aligned_alloc(T * c->dim * sizeof(float));
    ws->q = util_aligned_alloc(T * q_dim * sizeof(float));
    ws->k = util_aligned_alloc(T * kv_dim * sizeof(float));
    ws->v = util_aligned_alloc(T * kv_dim * sizeof(float));
    ws->att = util_aligned_alloc(T * q_dim * sizeof(float));
    ws->gate = util_aligned_alloc(T * c->ffn_dim * sizeof(float));
    ws->up = util_aligned_alloc(T * c->ffn_dim * sizeof(float));
    ws->out = util_aligned_alloc(T * c->dim * sizeof(float));
    ws->pos = util_xcalloc(T, sizeof(int));
    if (m->precision != LLM_FP32) {
        struct q_format f_dim = llm_model_qformat(m, c->dim);
        struct q_format f_att = llm_model_qformat(m, (int)q_dim);
        struct q_format f_ffn = llm_model_qformat(m, c->ffn_dim);
        ws->act_dim = q_act_create(&f_dim, c->dim, (int)T);
        ws->act_attn_out = q_act_create(&f_att, (int)q_dim, (int)T);
        ws->act_ffn = q_act_create(&f_ffn, c->ffn_dim, (int)T);
    }
    if (m->output_q) ws->act_head = q_act_create(q_linear_format(m->output_q), c->dim, (int)T);
    return ws;
}

void llm_workspace_free(llm_workspace *ws)
{
    if (!ws) return;
    float *bufs[] = {ws->x, ws->h, ws->q, ws->k, ws->v, ws->att, ws->gate, ws->up, ws->out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) util_aligned_free(bufs[i]);
    free(ws->pos);
    q_act_free(ws->act_dim);
    q_act_free(ws->act_attn_out);
    q_act_free(ws->act_ffn);
    q_act_free(ws->act_head);
    free(ws);
}

void llm_workspace_set_calib(llm_workspace *ws, llm_calib_fn fn, void *ctx)
{
    UTIL_CHECK(ws->model->precision == LLM_FP32); /* calibration reads fp32 activations */
    ws->calib = fn;
    ws->calib_ctx = ctx;
}

/* ------------------------------------------------------------ primitives */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

static void rmsnorm_rows(float *out, const float *x, const float *w, int T, int n, float eps)
{
#pragma omp parallel for if (T > 4)
    for (int t = 0; t < T; t++) rmsnorm(out + (size_t)t * n, x + (size_t)t * n, w, n, eps);
}

/* Rotates adjacent channel pairs (GGUF's order) of every head of a row. */
static void rope_row(float *row, int n_heads, int head_dim, int pos, const float *freq)
{
    for (int i = 0; i < head_dim / 2; i++) {
        float angle = (float)pos * freq[i];
        float c = cosf(angle), s = sinf(angle);
        for (int h = 0; h < n_heads; h++) {
            float *p = row + h * head_dim + 2 * i;
            float a = p[0], b = p[1];
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
    }
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* y (T, n) = x (T, k) W^T, fp32. OpenBLAS runs single-threaded inside
 * llmd (util/blas.c): the output columns are split over OpenMP's threads
 * instead, so that one thread pool serves every kernel and two pools never
 * spin against each other on the same cores. */
static void sgemm_xwt(const float *x, const float *w, float *y, int T, int n, int k)
{
    if (omp_in_parallel() || omp_get_max_threads() == 1 || (double)T * n * k < 65536.0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
        return;
    }
#pragma omp parallel
    {
        int nth = omp_get_num_threads(), t = omp_get_thread_num();
        int chunk = ((n + nth - 1) / nth + 15) & ~15;
        int j0 = t * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
        if (j0 < j1)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, j1 - j0, k, 1.0f, x, k, w + (size_t)j0 * k, k,
                        0.0f, y + j0, n);
    }
}

/* -------------------------------------------------- precision-path seams */
/* Each linear group reads one input: the fp32 path keeps it as a float
 * matrix (ws->h or the given buffer); the quantized paths quantize it once
 * into a q_act shared by the group's layers. */

static void input_rmsnorm(llm_workspace *ws, int layer, enum llm_calib_point point, const float *norm_w,
                          const int *perm, int T)
{
    const llm_model *m = ws->model;
    int dim = m->config.dim;
    if (m->precision == LLM_FP32) {
        rmsnorm_rows(ws->h, ws->x, norm_w, T, dim, m->config.rms_eps);
        if (ws->calib) ws->calib(layer, point, ws->h, T, dim, ws->calib_ctx);
    } else {
        q_act_quantize_rmsnorm(ws->act_dim, ws->x, norm_w, m->config.rms_eps, T, perm);
    }
}

static void linear(const llm_workspace *ws, int layer, enum llm_linear_kind kind, const struct llm_linear *l,
                   const float *x, const q_act *act, int T, float *y)
{
    const llm_model *m = ws->model;
    if (m->linear_hook && m->precision == LLM_FP32 &&
        m->linear_hook(m->linear_hook_ctx, layer, kind, l->w, l->n, l->k, x, T, y))
        return;
    if (m->precision == LLM_FP32) sgemm_xwt(x, l->w, y, T, l->n, l->k);
    else q_gemm(l->q, act, T, y);
}

/* ----------------------------------------------------------------- layer */

static void attention_layer(llm_workspace *ws, int layer, struct llm_batch_item *items, int n_items,
                            const int *row_start, struct attn_stats *stats)
{
    const llm_model *m = ws->model;
    const struct llm_config *c = &m->config;
    const struct llm_block *b = &m->blocks[layer];
    int T = row_start[n_items];
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;

    input_rmsnorm(ws, layer, LLM_CALIB_QKV, b->attn_norm, b->perm_attn_in, T);
    linear(ws, layer, LLM_LINEAR_Q, &b->wq, ws->h, ws->act_dim, T, ws->q);
    linear(ws, layer, LLM_LINEAR_K, &b->wk, ws->h, ws->act_dim, T, ws->k);
    linear(ws, layer, LLM_LINEAR_V, &b->wv, ws->h, ws->act_dim, T, ws->v);

#pragma omp parallel for if (T > 4)
    for (int t = 0; t < T; t++) {
        rope_row(ws->q + (size_t)t * q_dim, c->n_heads, c->head_dim, ws->pos[t], m->rope_freq);
        rope_row(ws->k + (size_t)t * kv_dim, c->n_kv_heads, c->head_dim, ws->pos[t], m->rope_freq);
    }

    for (int i = 0; i < n_items; i++) {
        int r = row_start[i];
        attn_seq_write(items[i].kv, layer, ws->pos[r], items[i].n_tokens, ws->k + (size_t)r * kv_dim,
                       ws->v + (size_t)r * kv_dim);
    }

    struct attn_params params = {
        .n_heads = c->n_heads,
        .scale = 1.0f / sqrtf((float)c->head_dim),
        .mode = m->options.sparse_mode,
        .dense_layers = m->options.dense_layers,
    };
    int64_t pages_read = 0, pages_total = 0, sparse_read = 0, sparse_total = 0;
#pragma omp parallel for schedule(dynamic) if (n_items > 1) \
    reduction(+ : pages_read, pages_total, sparse_read, sparse_total)
    for (int i = 0; i < n_items; i++) {
        int r = row_start[i];
        struct attn_params p = params;
        p.token_budget = items[i].quest_budget;
        if (items[i].sparse_mode != ATTN_DENSE) p.mode = items[i].sparse_mode;
        if (p.token_budget <= 0) p.mode = ATTN_DENSE;
        struct attn_stats s = {0};
        attn_forward(items[i].kv, layer, ws->q + (size_t)r * q_dim, ws->pos + r, items[i].n_tokens, &p,
                     ws->att + (size_t)r * q_dim, &s);
        pages_read += s.pages_read;
        pages_total += s.pages_total;
        sparse_read += s.sparse_pages_read;
        sparse_total += s.sparse_pages_total;
    }
    if (stats) {
        stats->pages_read += pages_read;
        stats->pages_total += pages_total;
        stats->sparse_pages_read += sparse_read;
        stats->sparse_pages_total += sparse_total;
    }

    if (ws->calib) ws->calib(layer, LLM_CALIB_O, ws->att, T, q_dim, ws->calib_ctx);
    else if (m->precision != LLM_FP32) q_act_quantize(ws->act_attn_out, ws->att, T, b->perm_attn_out);
    linear(ws, layer, LLM_LINEAR_O, &b->wo, ws->att, ws->act_attn_out, T, ws->out);
    size_t n = (size_t)T * c->dim;
    for (size_t j = 0; j < n; j++) ws->x[j] += ws->out[j];
}

static void mlp_layer(llm_workspace *ws, int layer, int T)
{
    const llm_model *m = ws->model;
    const struct llm_config *c = &m->config;
    const struct llm_block *b = &m->blocks[layer];

    input_rmsnorm(ws, layer, LLM_CALIB_GATE_UP, b->ffn_norm, b->perm_ffn_in, T);
    linear(ws, layer, LLM_LINEAR_GATE, &b->w_gate, ws->h, ws->act_dim, T, ws->gate);
    linear(ws, layer, LLM_LINEAR_UP, &b->w_up, ws->h, ws->act_dim, T, ws->up);

    size_t n = (size_t)T * c->ffn_dim;
    if (m->precision == LLM_FP32) {
        for (size_t j = 0; j < n; j++) ws->gate[j] = silu(ws->gate[j]) * ws->up[j];
        if (ws->calib) ws->calib(layer, LLM_CALIB_DOWN, ws->gate, T, c->ffn_dim, ws->calib_ctx);
    } else {
        q_act_quantize_swiglu(ws->act_ffn, ws->gate, ws->up, T);
    }
    linear(ws, layer, LLM_LINEAR_DOWN, &b->w_down, ws->gate, ws->act_ffn, T, ws->out);
    size_t nd = (size_t)T * c->dim;
    for (size_t j = 0; j < nd; j++) ws->x[j] += ws->out[j];
}

/* --------------------------------------------------------------- forward */

/* Reserves KV pages for every item; on failure gives back what it took. */
static int reserve_all(struct llm_batch_item *items, int n_items)
{
    for (int i = 0; i < n_items; i++) {
        int len = attn_seq_len(items[i].kv);
        int rc = attn_seq_reserve(items[i].kv, items[i].n_tokens);
        if (rc) {
            attn_seq_truncate(items[i].kv, len);
            for (int j = 0; j < i; j++) attn_seq_truncate(items[j].kv, attn_seq_len(items[j].kv));
            return rc;
        }
    }
    return 0;
}

int llm_forward(llm_model *model, llm_workspace *ws, struct llm_batch_item *items, int n_items,
                float *logits, struct attn_stats *stats)
{
    const struct llm_config *c = &model->config;
    UTIL_CHECK(ws->model == model);
    /* OpenMP's thread count is per calling thread: set it on whichever
     * thread runs the model (the engine's, a command's). */
    if (model->options.threads > 0) omp_set_num_threads(model->options.threads);
    int row_start_small[65];
    int *row_start = n_items < 65 ? row_start_small : util_xmalloc(sizeof(int) * (size_t)(n_items + 1));
    row_start[0] = 0;
    for (int i = 0; i < n_items; i++) {
        UTIL_CHECK(items[i].n_tokens > 0);
        row_start[i + 1] = row_start[i] + items[i].n_tokens;
    }
    int T = row_start[n_items];
    UTIL_CHECK(T <= ws->max_tokens);

    int rc = reserve_all(items, n_items);
    if (rc) {
        if (row_start != row_start_small) free(row_start);
        return rc;
    }

    for (int i = 0; i < n_items; i++) {
        int len = attn_seq_len(items[i].kv);
        for (int j = 0; j < items[i].n_tokens; j++) {
            int32_t tok = items[i].tokens[j];
            UTIL_CHECK(tok >= 0 && tok < c->vocab_size);
            int r = row_start[i] + j;
            ws->pos[r] = len + j;
            memcpy(ws->x + (size_t)r * c->dim, model->token_embd + (size_t)tok * c->dim, sizeof(float) * (size_t)c->dim);
        }
    }

    for (int l = 0; l < c->n_layers; l++) {
        attention_layer(ws, l, items, n_items, row_start, stats);
        mlp_layer(ws, l, T);
    }

    /* Final norm of the rows that need logits, packed, then the head. */
    int R = 0;
    for (int i = 0; i < n_items; i++) {
        int first = items[i].all_logits ? row_start[i] : row_start[i + 1] - 1;
        for (int r = first; r < row_start[i + 1]; r++, R++)
            rmsnorm(ws->h + (size_t)R * c->dim, ws->x + (size_t)r * c->dim, model->output_norm, c->dim, c->rms_eps);
        attn_seq_commit(items[i].kv, attn_seq_len(items[i].kv) + items[i].n_tokens);
    }
    if (model->output_q) {
        q_act_quantize(ws->act_head, ws->h, R, NULL);
        q_gemm(model->output_q, ws->act_head, R, logits);
    } else if (model->output_f16) llm_head_f16(ws->h, model->output_f16, logits, R, c->vocab_size, c->dim);
    else sgemm_xwt(ws->h, model->output, logits, R, c->vocab_size, c->dim);
    if (row_start != row_start_small) free(row_start);
    return 0;
}
