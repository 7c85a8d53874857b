/*
 * forward.c: the batched forward pass.
 *
 * All new tokens of all sequences in a step are flattened into T rows, so
 * every linear layer is one matrix product over the whole batch (OpenBLAS
 * sgemm for fp32, q_gemm_jobs for the quantized paths). Only attention is
 * per sequence: each sequence's queries read its own KV pages.
 *
 * Per layer:  h = rmsnorm(x);  q,k,v = h Wq,Wk,Wv;  rope(q,k);  write k,v
 *             to the cache;  a = attention(q);  x += a Wo;
 *             h = rmsnorm(x);  x += (silu(h Wg) * h Wu) Wd
 * The quantized paths fuse the RMSNorm and SwiGLU into activation
 * quantization (q_act_quantize_rmsnorm_rows / _swiglu_rows), and the
 * residual adds into the products (y += ...).
 *
 * Threads: a step is one util_pool_run. Every thread runs step_thread,
 * which walks the layers phase by phase; each phase splits its work by the
 * thread's index (rows, column blocks, attention units) and ends at a
 * barrier. The products that read one input (Q, K and V; gate and up) are
 * one phase. So a decode step costs about ten barriers a layer and no
 * thread start-up.
 */
#include "core/model_internal.h"
#include "util/util.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct llm_workspace {
    const llm_model *model;
    int max_tokens;
    util_pool *pool;
    float *x;         /* (T, dim) residual stream */
    float *h;         /* (T, dim) normalised input (fp32 path, calibration, head rows) */
    float *q;         /* (T, n_heads * head_dim) */
    float *k, *v;     /* (T, n_kv_heads * head_dim) */
    float *att;       /* (T, n_heads * head_dim) attention output */
    float *gate, *up; /* (T, ffn_dim) */
    float *out;       /* (T, dim) a linear hook's output before the residual add */
    int *pos;         /* (T) position of each row */
    float *rope;      /* (T, head_dim / 2, 2) cos and sin of each row's rotation angles */
    int *logit_rows;  /* (T) rows whose logits are wanted, in output order */
    /* quantized paths: activations of each input width */
    q_act *act_dim, *act_attn_out, *act_ffn;
    q_act *act_head; /* the head's input, when the head is W8A8 */
    llm_calib_fn calib;
    void *calib_ctx;
    double *profile; /* (LLM_PHASE_COUNT) seconds, or NULL */
};

llm_workspace *llm_workspace_create(const llm_model *m, int max_tokens)
{
    const struct llm_config *c = &m->config;
    size_t T = (size_t)(max_tokens > 0 ? max_tokens : 1);
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    llm_workspace *ws = util_xcalloc(1, sizeof *ws);
    ws->model = m;
    ws->max_tokens = (int)T;
    ws->pool =
        util_pool_create(m->options.threads > 0 ? m->options.threads : omp_get_max_threads());
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
    ws->rope = util_aligned_alloc(T * (size_t)c->head_dim * sizeof(float));
    ws->logit_rows = util_xcalloc(T, sizeof(int));
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
    util_pool_free(ws->pool);
    float *bufs[] = {ws->x, ws->h, ws->q, ws->k, ws->v, ws->att, ws->gate, ws->up, ws->out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) util_aligned_free(bufs[i]);
    free(ws->pos);
    util_aligned_free(ws->rope);
    free(ws->logit_rows);
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

const char *llm_phase_name(enum llm_phase phase)
{
    static const char *const names[LLM_PHASE_COUNT] = {"embed",     "norm",     "qkv",    "rope_kv",
                                                       "attention", "attn_out", "ffn_in", "ffn_act",
                                                       "ffn_out",   "head"};
    return (unsigned)phase < LLM_PHASE_COUNT ? names[phase] : "unknown";
}

void llm_workspace_profile(llm_workspace *ws, double *seconds)
{
    ws->profile = seconds;
}

/* ------------------------------------------------------------ primitives */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* cos and sin of the rotation angles of position pos, interleaved. */
static void rope_angles(float *cs, int head_dim, int pos, const float *freq)
{
    for (int i = 0; i < head_dim / 2; i++) {
        float angle = (float)pos * freq[i];
        cs[2 * i] = cosf(angle);
        cs[2 * i + 1] = sinf(angle);
    }
}

/* Rotates adjacent channel pairs (GGUF's order) of n_heads heads of a row,
 * heads `stride` floats apart. */
static void rope_heads(float *row, int n_heads, int stride, int head_dim, const float *cs)
{
    for (int h = 0; h < n_heads; h++) {
        float *p = row + (size_t)h * stride;
        for (int i = 0; i < head_dim / 2; i++) {
            float a = p[2 * i], b = p[2 * i + 1], c = cs[2 * i], s = cs[2 * i + 1];
            p[2 * i] = a * c - b * s;
            p[2 * i + 1] = a * s + b * c;
        }
    }
}

static float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* ------------------------------------------------------------------ step */

/* One forward step, shared by the threads that run it. */
struct step {
    llm_model *model;
    llm_workspace *ws;
    struct llm_batch_item *items;
    int n_items;
    const int *row_start; /* (n_items + 1) first row of each item */
    int T, R;             /* rows; rows that want logits */
    float *logits;
    struct attn_stats *stats;
    /* attention units of the current layer, handed out one by one */
    int *unit_start; /* (n_items + 1) */
    _Atomic int next_unit;
    double phase_start; /* thread 0's clock, when profiling */
};

/* The end of a phase: every thread waits for the others; thread 0 books
 * the time since the last phase's end. */
static void barrier(struct step *s, enum llm_phase phase, int ith)
{
    util_pool_barrier(s->ws->pool);
    if (ith == 0 && s->ws->profile) {
        double now = util_now();
        s->ws->profile[phase] += now - s->phase_start;
        s->phase_start = now;
    }
}

/* A linear layer of the block and where its product goes. */
struct linear_out {
    enum llm_linear_kind kind;
    const struct llm_linear *l;
    float *y;        /* (T, l->n) */
    bool accumulate; /* y += x W^T */
};

/* Products of the outs (which share the input: x in fp32, or act), split
 * over the threads: column blocks of all outs as one range. The linear hook
 * (fp32 only) runs on thread 0 alone: it keeps state. */
static void linears(const struct step *s, int layer, const struct linear_out *outs, int n_outs,
                    const float *x, const q_act *act, int ith, int nth)
{
    const llm_model *m = s->model;
    int T = s->T;
    if (m->precision != LLM_FP32) {
        struct q_gemm_job jobs[3];
        for (int j = 0; j < n_outs; j++)
            jobs[j] =
                (struct q_gemm_job){outs[j].l->q, act, outs[j].y, outs[j].l->n, outs[j].accumulate};
        q_gemm_jobs(jobs, n_outs, T, ith, nth);
        return;
    }
    if (m->linear_hook) {
        if (ith != 0) return;
        for (int j = 0; j < n_outs; j++) {
            const struct linear_out *o = &outs[j];
            float *y = o->accumulate ? s->ws->out : o->y;
            if (!m->linear_hook(m->linear_hook_ctx, layer, o->kind, o->l->w, o->l->n, o->l->k, x, T,
                                y))
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, o->l->n, o->l->k, 1.0f, x,
                            o->l->k, o->l->w, o->l->k, 0.0f, y, o->l->n);
            if (o->accumulate)
                for (size_t i = 0; i < (size_t)T * o->l->n; i++) o->y[i] += y[i];
        }
        return;
    }
    /* OpenBLAS single-threaded on each thread's columns, 16 at a time. */
    int units = 0;
    for (int j = 0; j < n_outs; j++) units += (outs[j].l->n + 15) / 16;
    int u0, u1;
    util_split(units, ith, nth, &u0, &u1);
    for (int j = 0, first = 0; j < n_outs; first += (outs[j].l->n + 15) / 16, j++) {
        const struct llm_linear *l = outs[j].l;
        int b = u0 > first ? u0 : first,
            e = u1 < first + (l->n + 15) / 16 ? u1 : first + (l->n + 15) / 16;
        if (b >= e) continue;
        int c0 = (b - first) * 16, c1 = (e - first) * 16 < l->n ? (e - first) * 16 : l->n;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, c1 - c0, l->k, 1.0f, x, l->k,
                    l->w + (size_t)c0 * l->k, l->k, outs[j].accumulate ? 1.0f : 0.0f,
                    outs[j].y + c0, l->n);
    }
}

/* Calibration sees each linear group's fp32 input: thread 0, between barriers. */
static void calibrate(struct step *s, int layer, enum llm_calib_point point, const float *x, int k,
                      enum llm_phase phase, int ith)
{
    if (!s->ws->calib) return;
    if (ith == 0) s->ws->calib(layer, point, x, s->T, k, s->ws->calib_ctx);
    barrier(s, phase, ith);
}

/* h = rmsnorm(x), or its quantized form in act_dim, for this thread's rows. */
static void input_norm(const struct step *s, const float *norm_w, const int *perm, int ith, int nth)
{
    const llm_model *m = s->model;
    llm_workspace *ws = s->ws;
    int dim = m->config.dim, t0, t1;
    util_split(s->T, ith, nth, &t0, &t1);
    if (m->precision == LLM_FP32) {
        for (int t = t0; t < t1; t++)
            rmsnorm(ws->h + (size_t)t * dim, ws->x + (size_t)t * dim, norm_w, dim,
                    m->config.rms_eps);
    } else {
        q_act_quantize_rmsnorm_rows(ws->act_dim, ws->x, norm_w, m->config.rms_eps, s->T, t0, t1,
                                    perm);
    }
}

/* The attention parameters of item i. */
static struct attn_params item_params(const struct step *s, int i)
{
    const llm_model *m = s->model;
    struct attn_params p = {
        .n_heads = m->config.n_heads,
        .scale = 1.0f / sqrtf((float)m->config.head_dim),
        .mode = m->options.sparse_mode,
        .dense_layers = m->options.dense_layers,
        .token_budget = s->items[i].quest_budget,
    };
    if (s->items[i].sparse_mode != ATTN_DENSE) p.mode = s->items[i].sparse_mode;
    if (p.token_budget <= 0) p.mode = ATTN_DENSE;
    return p;
}

/* RoPE on this thread's rows of Q; RoPE on K and the writes to the cache
 * as (item, KV head) units, so that one long prompt still uses every
 * thread. Thread 0 also counts the layer's attention units. */
static void rope_and_store(struct step *s, int layer, int ith, int nth)
{
    const llm_model *m = s->model;
    const struct llm_config *c = &m->config;
    llm_workspace *ws = s->ws;
    int hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd, b, e;
    util_split(s->T, ith, nth, &b, &e);
    for (int r = b; r < e; r++)
        rope_heads(ws->q + (size_t)r * q_dim, c->n_heads, hd, hd, ws->rope + (size_t)r * hd);
    util_split(s->n_items * c->n_kv_heads, ith, nth, &b, &e);
    for (int u = b; u < e; u++) {
        int i = u / c->n_kv_heads, h = u % c->n_kv_heads;
        int r0 = s->row_start[i], r1 = s->row_start[i + 1];
        for (int r = r0; r < r1; r++)
            rope_heads(ws->k + (size_t)r * kv_dim + (size_t)h * hd, 1, hd, hd,
                       ws->rope + (size_t)r * hd);
        attn_seq_write_head(s->items[i].kv, layer, h, ws->pos[r0], r1 - r0,
                            ws->k + (size_t)r0 * kv_dim + (size_t)h * hd,
                            ws->v + (size_t)r0 * kv_dim + (size_t)h * hd, kv_dim);
    }
    if (ith == 0) {
        s->unit_start[0] = 0;
        for (int i = 0; i < s->n_items; i++) {
            struct attn_params p = item_params(s, i);
            int r = s->row_start[i];
            s->unit_start[i + 1] =
                s->unit_start[i] + attn_forward_units(s->items[i].kv, layer, ws->pos + r,
                                                      s->items[i].n_tokens, &p, nth);
        }
        atomic_store_explicit(&s->next_unit, 0, memory_order_relaxed);
    }
}

/* Attention units of every item, taken one at a time by whichever thread
 * is free (sequences differ in length). */
static void attend(struct step *s, int layer, int nth)
{
    const struct llm_config *c = &s->model->config;
    llm_workspace *ws = s->ws;
    int q_dim = c->n_heads * c->head_dim, total = s->unit_start[s->n_items], i = 0;
    for (;;) {
        int u = atomic_fetch_add_explicit(&s->next_unit, 1, memory_order_relaxed);
        if (u >= total) break;
        while (s->unit_start[i + 1] <= u) i++;
        while (s->unit_start[i] > u) i--;
        struct attn_params p = item_params(s, i);
        int r = s->row_start[i];
        attn_forward_unit(s->items[i].kv, layer, ws->q + (size_t)r * q_dim, ws->pos + r,
                          s->items[i].n_tokens, &p, nth, u - s->unit_start[i],
                          ws->att + (size_t)r * q_dim, s->stats);
    }
}

static void attention_block(struct step *s, int layer, int ith, int nth)
{
    const llm_model *m = s->model;
    const struct llm_config *c = &m->config;
    const struct llm_block *b = &m->blocks[layer];
    llm_workspace *ws = s->ws;
    int q_dim = c->n_heads * c->head_dim, t0, t1;

    input_norm(s, b->attn_norm, b->perm_attn_in, ith, nth);
    barrier(s, LLM_PHASE_NORM, ith);
    calibrate(s, layer, LLM_CALIB_QKV, ws->h, c->dim, LLM_PHASE_NORM, ith);
    struct linear_out qkv[3] = {{LLM_LINEAR_Q, &b->wq, ws->q, false},
                                {LLM_LINEAR_K, &b->wk, ws->k, false},
                                {LLM_LINEAR_V, &b->wv, ws->v, false}};
    linears(s, layer, qkv, 3, ws->h, ws->act_dim, ith, nth);
    barrier(s, LLM_PHASE_QKV, ith);
    rope_and_store(s, layer, ith, nth);
    barrier(s, LLM_PHASE_ROPE_KV, ith);
    attend(s, layer, nth);
    barrier(s, LLM_PHASE_ATTENTION, ith);
    calibrate(s, layer, LLM_CALIB_O, ws->att, q_dim, LLM_PHASE_ATTN_OUT, ith);
    if (m->precision != LLM_FP32) {
        util_split(s->T, ith, nth, &t0, &t1);
        q_act_quantize_rows(ws->act_attn_out, ws->att, s->T, t0, t1, b->perm_attn_out);
        barrier(s, LLM_PHASE_ATTN_OUT, ith);
    }
    struct linear_out o = {LLM_LINEAR_O, &b->wo, ws->x, true};
    linears(s, layer, &o, 1, ws->att, ws->act_attn_out, ith, nth);
    barrier(s, LLM_PHASE_ATTN_OUT, ith);
}

static void mlp_block(struct step *s, int layer, int ith, int nth)
{
    const llm_model *m = s->model;
    const struct llm_config *c = &m->config;
    const struct llm_block *b = &m->blocks[layer];
    llm_workspace *ws = s->ws;
    int t0, t1;

    input_norm(s, b->ffn_norm, b->perm_ffn_in, ith, nth);
    barrier(s, LLM_PHASE_NORM, ith);
    calibrate(s, layer, LLM_CALIB_GATE_UP, ws->h, c->dim, LLM_PHASE_NORM, ith);
    struct linear_out gate_up[2] = {{LLM_LINEAR_GATE, &b->w_gate, ws->gate, false},
                                    {LLM_LINEAR_UP, &b->w_up, ws->up, false}};
    linears(s, layer, gate_up, 2, ws->h, ws->act_dim, ith, nth);
    barrier(s, LLM_PHASE_FFN_IN, ith);
    util_split(s->T, ith, nth, &t0, &t1);
    if (m->precision == LLM_FP32) {
        size_t f = (size_t)c->ffn_dim;
        for (size_t j = (size_t)t0 * f; j < (size_t)t1 * f; j++)
            ws->gate[j] = silu(ws->gate[j]) * ws->up[j];
        barrier(s, LLM_PHASE_FFN_ACT, ith);
        calibrate(s, layer, LLM_CALIB_DOWN, ws->gate, c->ffn_dim, LLM_PHASE_FFN_ACT, ith);
    } else {
        q_act_quantize_swiglu_rows(ws->act_ffn, ws->gate, ws->up, s->T, t0, t1);
        barrier(s, LLM_PHASE_FFN_ACT, ith);
    }
    struct linear_out down = {LLM_LINEAR_DOWN, &b->w_down, ws->x, true};
    linears(s, layer, &down, 1, ws->gate, ws->act_ffn, ith, nth);
    barrier(s, LLM_PHASE_FFN_OUT, ith);
}

/* The final norm of the rows that want logits, packed into h, then the head. */
static void head(struct step *s, int ith, int nth)
{
    llm_model *m = s->model;
    const struct llm_config *c = &m->config;
    llm_workspace *ws = s->ws;
    int r0, r1;
    util_split(s->R, ith, nth, &r0, &r1);
    for (int r = r0; r < r1; r++)
        rmsnorm(ws->h + (size_t)r * c->dim, ws->x + (size_t)ws->logit_rows[r] * c->dim,
                m->output_norm, c->dim, c->rms_eps);
    if (m->output_q) q_act_quantize_rows(ws->act_head, ws->h, s->R, r0, r1, NULL);
    barrier(s, LLM_PHASE_HEAD, ith);
    if (m->output_q) {
        struct q_gemm_job job = {m->output_q, ws->act_head, s->logits, c->vocab_size, false};
        q_gemm_jobs(&job, 1, s->R, ith, nth);
        return;
    }
    /* Whole 16-column panels, as the products split theirs. */
    int v0, v1;
    util_split((c->vocab_size + 15) / 16, ith, nth, &v0, &v1);
    v0 *= 16;
    v1 = v1 * 16 < c->vocab_size ? v1 * 16 : c->vocab_size;
    if (m->output_f16) {
        llm_head_f16_part(ws->h, m->output_f16, s->logits, s->R, c->vocab_size, c->dim, v0, v1);
    } else if (v0 < v1) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->R, v1 - v0, c->dim, 1.0f, ws->h,
                    c->dim, m->output + (size_t)v0 * c->dim, c->dim, 0.0f, s->logits + v0,
                    c->vocab_size);
    }
}

static void step_thread(void *ctx, int ith, int nth)
{
    struct step *s = ctx;
    const struct llm_config *c = &s->model->config;
    llm_workspace *ws = s->ws;
    for (int i = 0; i < s->n_items; i++) {
        int len = attn_seq_len(s->items[i].kv), r0, r1;
        util_split(s->items[i].n_tokens, ith, nth, &r0, &r1);
        for (int j = r0; j < r1; j++) {
            int r = s->row_start[i] + j;
            llm_model_embed(s->model, s->items[i].tokens[j], ws->x + (size_t)r * c->dim);
            ws->pos[r] = len + j;
            rope_angles(ws->rope + (size_t)r * c->head_dim, c->head_dim, len + j,
                        s->model->rope_freq);
        }
    }
    barrier(s, LLM_PHASE_EMBED, ith);
    for (int l = 0; l < c->n_layers; l++) {
        attention_block(s, l, ith, nth);
        mlp_block(s, l, ith, nth);
    }
    head(s, ith, nth);
    /* the head's own end: the run's return is its barrier */
    if (ith == 0 && ws->profile) ws->profile[LLM_PHASE_HEAD] -= s->phase_start;
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
    UTIL_CHECK(ws->model == model && n_items >= 1);
    int small[2 * 65];
    int *row_start = n_items < 65 ? small : util_xmalloc(sizeof(int) * 2 * (size_t)(n_items + 1));
    struct step s = {.model = model,
                     .ws = ws,
                     .items = items,
                     .n_items = n_items,
                     .row_start = row_start,
                     .logits = logits,
                     .stats = stats,
                     .unit_start = row_start + n_items + 1};
    row_start[0] = 0;
    for (int i = 0; i < n_items; i++) {
        UTIL_CHECK(items[i].n_tokens > 0);
        row_start[i + 1] = row_start[i] + items[i].n_tokens;
        for (int j = 0; j < items[i].n_tokens; j++)
            UTIL_CHECK(items[i].tokens[j] >= 0 && items[i].tokens[j] < c->vocab_size);
        int first = items[i].all_logits ? row_start[i] : row_start[i + 1] - 1;
        for (int r = first; r < row_start[i + 1]; r++) ws->logit_rows[s.R++] = r;
    }
    s.T = row_start[n_items];
    UTIL_CHECK(s.T <= ws->max_tokens);

    int rc = reserve_all(items, n_items);
    if (!rc) {
        s.phase_start = util_now();
        util_pool_run(ws->pool, step_thread, &s);
        if (ws->profile) ws->profile[LLM_PHASE_HEAD] += util_now();
        for (int i = 0; i < n_items; i++)
            attn_seq_commit(items[i].kv, attn_seq_len(items[i].kv) + items[i].n_tokens);
    }
    if (row_start != small) free(row_start);
    return rc;
}
