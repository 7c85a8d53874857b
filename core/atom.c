/*
 * atom.c: quantizing a loaded model for the low-precision paths.
 *
 *   w8a8      every linear layer int8 per row, activations int8 per token;
 *   w4a4-rtn  int4 per row / per token, round to nearest: the naive baseline;
 *   atom      Atom's recipe: calibration on the model's calibration text,
 *             outlier channels (largest mean squared activation) moved to the
 *             end and kept int8, int4 groups, clipping, GPTQ.
 *
 * Where the channel permutation goes (Atom folds it where it can):
 *   - Q/K/V and gate/up inputs: into the fused RMSNorm + quantization, which
 *     reads the residual channels in the permuted order (no extra pass);
 *   - down input: into the rows of gate and up, whose outputs then come out
 *     already permuted (free at run time);
 *   - O input: cannot be folded into V's rows without breaking the heads
 *     apart for attention, so the activation quantizer gathers the channels
 *     (one indexed read per element of a (tokens, width) row, ~1% of a
 *     layer's time at our sizes).
 * lm_head, embeddings, norms, RoPE and softmax stay in fp32.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model_internal.h"
#include "util/util.h"

struct q_format llm_model_qformat(const llm_model *m, int k)
{
    const struct llm_quant_options *o = &m->options.quant;
    struct q_format f = {.method = Q_W4A4, .act_clip = 1.0f, .weight_clip = 1.0f};
    switch (m->precision) {
    case LLM_W8A8:
        f.method = Q_W8A8;
        break;
    case LLM_W4A4_RTN: /* per row, in groups of at most Q_GROUP_SIZE_MAX (the kernels' limit) */
        f.group_size = k < Q_GROUP_SIZE_MAX ? k : Q_GROUP_SIZE_MAX;
        break;
    case LLM_ATOM:
    default:
        /* width/32 by default, rounded up to the kernels' multiple of 16 */
        f.n_outlier = o->n_outlier < 0 ? (k / 32 + 15) / 16 * 16 : o->n_outlier;
        if (f.n_outlier >= k) f.n_outlier = 0;
        f.group_size = o->group_size > 0 ? o->group_size : k - f.n_outlier; /* 0: per row */
        if (f.group_size > Q_GROUP_SIZE_MAX && o->group_size <= 0) f.group_size = Q_GROUP_SIZE_MAX;
        f.act_clip = o->act_clip;
        f.weight_clip = o->weight_clip;
        break;
    }
    return f;
}

/* ------------------------------------------------------------ calibration */

struct calibration {
    atom_calib **points; /* (n_layers * 4) */
};

static void calib_collect(int layer, enum llm_calib_point point, const float *x, int m, int k, void *ctx)
{
    (void)k;
    struct calibration *cal = ctx;
    atom_calib_add(cal->points[layer * 4 + point], x, m);
}

/* Runs the fp32 model over the calibration text, collecting every linear
 * group's input statistics. */
static int calibrate(llm_model *m, struct calibration *cal, char *err, size_t err_len)
{
    const struct llm_config *c = &m->config;
    const struct llm_quant_options *o = &m->options.quant;
    size_t len;
    char *text = util_read_file(o->calib_file, &len);
    if (!text) {
        snprintf(err, err_len, "calibration text %s: %s", o->calib_file, strerror(errno));
        return -errno;
    }
    int cap = (int)len + 2;
    int32_t *ids = util_xmalloc(sizeof(int32_t) * (size_t)cap);
    int n = llm_tokenize(m->tokenizer, text, len, false, ids, cap);
    free(text);
    if (n < 64) {
        free(ids);
        snprintf(err, err_len, "calibration text %s is too short (%d tokens)", o->calib_file, n);
        return -EINVAL;
    }
    if (n > o->calib_tokens) n = o->calib_tokens;

    int q_dim = c->n_heads * c->head_dim;
    int widths[4] = {c->dim, q_dim, c->dim, c->ffn_dim};
    cal->points = util_xcalloc((size_t)c->n_layers * 4, sizeof *cal->points);
    for (int i = 0; i < c->n_layers * 4; i++) cal->points[i] = atom_calib_create(widths[i % 4], o->gptq);

    /* The fp32 model with an f32 KV cache of its own: the statistics do not
     * depend on --kv or on the size of the serving pool. */
    enum llm_precision saved = m->precision;
    m->precision = LLM_FP32;
    int window = c->ctx_len < 512 ? c->ctx_len : 512;
    struct attn_cache_config kc = *attn_cache_config(m->kv);
    kc.kv_type = ATTN_KV_F32;
    kc.n_pages = (window + kc.page_size - 1) / kc.page_size;
    attn_cache *serving_kv = m->kv;
    int rc = attn_cache_create(&kc, &m->kv);
    if (rc) {
        m->kv = serving_kv;
        free(ids);
        snprintf(err, err_len, "calibration KV cache: %s", util_strerror(rc));
        return rc;
    }
    llm_workspace *ws = llm_workspace_create(m, window);
    llm_workspace_set_calib(ws, calib_collect, cal);
    float *logits = util_aligned_alloc(sizeof(float) * (size_t)c->vocab_size);
    int32_t *chunk = util_xmalloc(sizeof(int32_t) * (size_t)window);
    for (int at = 0; at + 1 < n && rc == 0; at += window - 1) {
        int take = n - at < window - 1 ? n - at : window - 1;
        chunk[0] = llm_tokenizer_bos(m->tokenizer);
        memcpy(chunk + 1, ids + at, sizeof(int32_t) * (size_t)take);
        attn_seq *seq = attn_seq_create(m->kv);
        struct llm_batch_item item = {.kv = seq, .tokens = chunk, .n_tokens = take + 1};
        rc = llm_forward(m, ws, &item, 1, logits, NULL);
        attn_seq_free(seq);
        if (m->options.progress && at + take < n)
            m->options.progress("calibrating", (double)(at + take) / n, m->options.progress_ctx);
    }
    m->precision = saved;
    attn_cache_free(m->kv);
    m->kv = serving_kv;
    if (rc == 0 && m->options.progress) m->options.progress("calibrating", 1.0, m->options.progress_ctx);
    free(chunk);
    util_aligned_free(logits);
    llm_workspace_free(ws);
    free(ids);
    if (rc) snprintf(err, err_len, "calibration forward pass: %s", util_strerror(rc));
    return rc;
}

static void calibration_free(struct calibration *cal, int n_layers)
{
    if (!cal->points) return;
    for (int i = 0; i < n_layers * 4; i++) atom_calib_free(cal->points[i]);
    free(cal->points);
}

/* ----------------------------------------------------------- quantization */

static int *outlier_perm(const atom_calib *calib, int k, int n_outlier)
{
    if (!calib || n_outlier == 0) return NULL;
    int *perm = util_xmalloc(sizeof(int) * (size_t)k);
    atom_outlier_permutation(atom_calib_mean_square(calib), k, n_outlier, perm);
    return perm;
}

/* Reorders the rows of W (n, k) so that new row j is old row perm[j]. */
static void permute_rows(float *w, int n, int k, const int *perm)
{
    float *copy = util_xmalloc(sizeof(float) * (size_t)n * (size_t)k);
    memcpy(copy, w, sizeof(float) * (size_t)n * (size_t)k);
    for (int j = 0; j < n; j++) memcpy(w + (size_t)j * k, copy + (size_t)perm[j] * k, sizeof(float) * (size_t)k);
    free(copy);
}

/* Replaces a linear layer's fp32 weights with their quantized form. */
static int quantize_linear(llm_model *m, struct llm_linear *l, const int *perm, const atom_calib *calib)
{
    struct q_format f = llm_model_qformat(m, l->k);
    const float *hessian = calib && m->options.quant.gptq ? atom_calib_hessian(calib) : NULL;
    l->q = hessian ? q_linear_quantize_gptq(l->w, l->n, l->k, &f, perm, hessian, 0.01f)
                   : q_linear_quantize(l->w, l->n, l->k, &f, perm);
    if (!l->q) return -EINVAL;
    util_aligned_free(l->w);
    l->w = NULL;
    return 0;
}

/* The options give a legal format for each of the model's input widths. */
static int check_formats(const llm_model *m, char *err, size_t err_len)
{
    const struct llm_config *c = &m->config;
    int widths[3] = {c->dim, c->n_heads * c->head_dim, c->ffn_dim};
    for (int i = 0; i < 3; i++) {
        struct q_format f = llm_model_qformat(m, widths[i]);
        if (q_format_check(&f, widths[i]) == 0) continue;
        snprintf(err, err_len,
                 "%s cannot quantize width %d with groups of %d and %d outliers (both multiples of "
                 "16, groups 16..%d, outliers below the width)",
                 llm_precision_name(m->precision), widths[i], f.group_size, f.n_outlier,
                 Q_GROUP_SIZE_MAX);
        return -EINVAL;
    }
    return 0;
}

int llm_model_quantize(llm_model *m, char *err, size_t err_len)
{
    const struct llm_config *c = &m->config;
    bool atom = m->precision == LLM_ATOM;
    m->qformat = llm_model_qformat(m, c->dim);
    int check = check_formats(m, err, err_len);
    if (check) return check;
    struct calibration cal = {0};
    int rc = 0;
    if (atom && (rc = calibrate(m, &cal, err, err_len))) {
        calibration_free(&cal, c->n_layers);
        return rc;
    }
    for (int i = 0; i < c->n_layers && rc == 0; i++) {
        struct llm_block *b = &m->blocks[i];
        atom_calib *const *p = atom ? cal.points + i * 4 : NULL;
        int *perm_down = NULL;
        if (atom) {
            int q_dim = c->n_heads * c->head_dim;
            b->perm_attn_in = outlier_perm(p[LLM_CALIB_QKV], c->dim, llm_model_qformat(m, c->dim).n_outlier);
            b->perm_attn_out = outlier_perm(p[LLM_CALIB_O], q_dim, llm_model_qformat(m, q_dim).n_outlier);
            b->perm_ffn_in = outlier_perm(p[LLM_CALIB_GATE_UP], c->dim, llm_model_qformat(m, c->dim).n_outlier);
            perm_down = outlier_perm(p[LLM_CALIB_DOWN], c->ffn_dim, llm_model_qformat(m, c->ffn_dim).n_outlier);
            if (perm_down) { /* fold into gate/up rows: their outputs come out permuted */
                permute_rows(b->w_gate.w, c->ffn_dim, c->dim, perm_down);
                permute_rows(b->w_up.w, c->ffn_dim, c->dim, perm_down);
            }
        }
        const atom_calib *cq = p ? p[LLM_CALIB_QKV] : NULL, *co = p ? p[LLM_CALIB_O] : NULL;
        const atom_calib *cg = p ? p[LLM_CALIB_GATE_UP] : NULL, *cd = p ? p[LLM_CALIB_DOWN] : NULL;
        if ((rc = quantize_linear(m, &b->wq, b->perm_attn_in, cq)) ||
            (rc = quantize_linear(m, &b->wk, b->perm_attn_in, cq)) ||
            (rc = quantize_linear(m, &b->wv, b->perm_attn_in, cq)) ||
            (rc = quantize_linear(m, &b->wo, b->perm_attn_out, co)) ||
            (rc = quantize_linear(m, &b->w_gate, b->perm_ffn_in, cg)) ||
            (rc = quantize_linear(m, &b->w_up, b->perm_ffn_in, cg)) ||
            (rc = quantize_linear(m, &b->w_down, perm_down, cd)))
            snprintf(err, err_len, "quantizing layer %d failed (%s)", i, llm_precision_name(m->precision));
        free(perm_down);
        if (m->options.progress) m->options.progress("quantizing", (double)(i + 1) / c->n_layers, m->options.progress_ctx);
    }
    calibration_free(&cal, c->n_layers);
    return rc;
}
