/*
 * model_file.c: quantized models as GGUF files (`llmd quantize`).
 *
 * A quantized file is the source GGUF with:
 *   - every linear layer blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,
 *     ffn_up,ffn_down}.weight replaced by a 1-D I8 tensor holding the
 *     layer's q_linear_save blob (format, channel order, scales, packed
 *     weights: see quant/serialize.c);
 *   - the metadata llmd.quant.* saying how it was made: precision,
 *     group_size, outliers, act_clip, weight_clip, gptq, calib_tokens. The
 *     first five define the activation formats; each layer's own format
 *     must agree with them (checked at load);
 *   - the output head, when the model has it quantized (int8 or int4), as an I8
 *     blob named output.weight (also for a tied head: the embeddings stay);
 *   - everything else (tokenizer, norms, embeddings, a 16/32-bit head)
 *     copied byte for byte.
 * The writer aligns tensors to 64 bytes and the blobs put their weights on
 * 64 bytes too, so that loading maps the layers and reads them in place.
 * The channel orders need no tensors of their own: Q/K/V share one (stored
 * in each of their blobs, checked equal at load), gate/up likewise, O has
 * its own, and down's is folded into the rows of gate and up at
 * quantization time (its blob still records the column order). Loading
 * such a file skips calibration and quantization; the result computes
 * bit for bit what quantizing at load computed. The KV cache type stays a
 * run-time choice (--kv).
 */
#include "core/model_internal.h"
#include "util/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_LINEARS 7
static const char *const linear_names[N_LINEARS] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                    "ffn_gate", "ffn_up", "ffn_down"};

static struct llm_linear *block_linear(struct llm_block *b, int j)
{
    struct llm_linear *all[N_LINEARS] = {&b->wq,     &b->wk,   &b->wv,    &b->wo,
                                         &b->w_gate, &b->w_up, &b->w_down};
    return all[j];
}

/* The linear layer a tensor name stands for, or NULL. */
static const struct llm_linear *named_linear(const llm_model *m, struct llm_gguf_string name)
{
    char buf[96], kind[32];
    if (name.len >= sizeof buf) return NULL;
    memcpy(buf, name.ptr, name.len);
    buf[name.len] = 0;
    int layer, used = 0;
    if (sscanf(buf, "blk.%d.%31[a-z_].weight%n", &layer, kind, &used) != 2 ||
        used != (int)name.len || layer < 0 || layer >= m->config.n_layers)
        return NULL;
    for (int j = 0; j < N_LINEARS; j++)
        if (strcmp(kind, linear_names[j]) == 0) return block_linear(&m->blocks[layer], j);
    return NULL;
}

static bool is_quant_key(struct llm_gguf_string key)
{
    static const char prefix[] = LLM_QUANT_KEY_PREFIX;
    return key.len >= sizeof prefix - 1 && memcmp(key.ptr, prefix, sizeof prefix - 1) == 0;
}

static void write_quant_metadata(llm_gguf_writer *w, const llm_model *m)
{
    const struct llm_quant_options *o = &m->options.quant;
    llm_gguf_writer_kv_string(w, LLM_QUANT_KEY_PREFIX "precision",
                              llm_precision_name(m->precision));
    llm_gguf_writer_kv_i32(w, LLM_QUANT_KEY_PREFIX "group_size", o->group_size);
    llm_gguf_writer_kv_i32(w, LLM_QUANT_KEY_PREFIX "outliers", o->n_outlier);
    llm_gguf_writer_kv_f32(w, LLM_QUANT_KEY_PREFIX "act_clip", o->act_clip);
    llm_gguf_writer_kv_f32(w, LLM_QUANT_KEY_PREFIX "weight_clip", o->weight_clip);
    llm_gguf_writer_kv_bool(w, LLM_QUANT_KEY_PREFIX "gptq", o->gptq);
    llm_gguf_writer_kv_u32(w, LLM_QUANT_KEY_PREFIX "calib_tokens", (uint32_t)o->calib_tokens);
}

int llm_model_save_quantized(const llm_model *m, const char *source_path, const char *path,
                             char *err, size_t err_len)
{
    if (m->precision == LLM_FP32) {
        snprintf(err, err_len, "the model is not quantized (precision fp32): nothing to save");
        return -EINVAL;
    }
    llm_gguf *g;
    int rc = llm_gguf_open(source_path, &g, err, err_len);
    if (rc) return rc;
    llm_gguf_writer *w = llm_gguf_writer_create();
    for (uint64_t i = 0; i < llm_gguf_kv_count(g); i++) {
        struct llm_gguf_string key;
        enum llm_gguf_type type;
        const void *value;
        uint64_t len;
        llm_gguf_kv_raw(g, i, &key, &type, &value, &len);
        /* the writer aligns to 32, the default; our own keys are rewritten */
        bool alignment = key.len == 17 && memcmp(key.ptr, "general.alignment", 17) == 0;
        if (!alignment && !is_quant_key(key))
            llm_gguf_writer_kv_raw(w, key.ptr, key.len, type, value, len);
    }
    write_quant_metadata(w, m);
    uint64_t n_tensors = llm_gguf_tensor_count(g);
    void **blobs = util_xcalloc(n_tensors + 1, sizeof *blobs);
    for (uint64_t i = 0; i < n_tensors; i++) {
        const struct llm_gguf_tensor *t = llm_gguf_tensor_at(g, i);
        const struct llm_linear *l = named_linear(m, t->name);
        bool head = t->name.len == strlen(LLM_QUANT_HEAD_TENSOR) &&
                    memcmp(t->name.ptr, LLM_QUANT_HEAD_TENSOR, t->name.len) == 0;
        if (head && m->output_q) continue; /* replaced by the int8 head below */
        if (!l) {
            llm_gguf_writer_tensor(w, t->name.ptr, t->name.len, t->n_dims, t->dims, t->type,
                                   t->data, t->n_bytes);
            continue;
        }
        uint64_t size = q_linear_save(l->q, NULL, 0);
        blobs[i] = util_xmalloc(size);
        q_linear_save(l->q, blobs[i], size);
        llm_gguf_writer_tensor(w, t->name.ptr, t->name.len, 1, &size, GGML_TYPE_I8, blobs[i], size);
    }
    if (m->output_q) {
        uint64_t size = q_linear_save(m->output_q, NULL, 0);
        blobs[n_tensors] = util_xmalloc(size);
        q_linear_save(m->output_q, blobs[n_tensors], size);
        llm_gguf_writer_tensor(w, LLM_QUANT_HEAD_TENSOR, strlen(LLM_QUANT_HEAD_TENSOR), 1, &size,
                               GGML_TYPE_I8, blobs[n_tensors], size);
    }
    rc = llm_gguf_writer_save(w, path, err, err_len);
    for (uint64_t i = 0; i <= n_tensors; i++) free(blobs[i]);
    free(blobs);
    llm_gguf_writer_free(w);
    llm_gguf_close(g);
    return rc;
}

/* ---------------------------------------------------------------- loading */

static int fail(char *err, size_t err_len, const char *what)
{
    snprintf(err, err_len, "quantized model: %s", what);
    return -EBADMSG;
}

int llm_model_read_quant_metadata(llm_model *m, const llm_gguf *g, char *err, size_t err_len)
{
    struct llm_gguf_string s;
    if (llm_gguf_get_string(g, LLM_QUANT_KEY_PREFIX "precision", &s) == -ENOENT) return 0;
    char name[32] = "";
    if (llm_gguf_get_string(g, LLM_QUANT_KEY_PREFIX "precision", &s) == 0 && s.len < sizeof name)
        memcpy(name, s.ptr, s.len);
    enum llm_precision p;
    if (llm_precision_parse(name, &p) != 0 || p == LLM_FP32)
        return fail(err, err_len, "llmd.quant.precision is not w8a8, w4a4-rtn or atom");
    struct llm_quant_options *o = &m->options.quant;
    int32_t group, outliers;
    bool gptq;
    if (llm_gguf_get_i32(g, LLM_QUANT_KEY_PREFIX "group_size", &group) ||
        llm_gguf_get_i32(g, LLM_QUANT_KEY_PREFIX "outliers", &outliers) ||
        llm_gguf_get_f32(g, LLM_QUANT_KEY_PREFIX "act_clip", &o->act_clip) ||
        llm_gguf_get_f32(g, LLM_QUANT_KEY_PREFIX "weight_clip", &o->weight_clip) ||
        llm_gguf_get_bool(g, LLM_QUANT_KEY_PREFIX "gptq", &gptq))
        return fail(err, err_len, "llmd.quant.* metadata missing or of the wrong type");
    o->group_size = group;
    o->n_outlier = outliers;
    o->gptq = gptq;
    m->precision = m->options.precision = p;
    m->prequantized = true;
    return 0;
}

static bool same_format(const struct q_format *a, const struct q_format *b)
{
    return a->method == b->method && a->group_size == b->group_size &&
           a->n_outlier == b->n_outlier && a->act_clip == b->act_clip &&
           a->weight_clip == b->weight_clip;
}

int llm_model_load_quantized_linear(const llm_model *m, const llm_gguf *g, const char *name, int n,
                                    int k, struct llm_linear *lin, char *err, size_t err_len)
{
    const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, name);
    if (!t) return snprintf(err, err_len, "tensor %s missing", name), -EBADMSG;
    if (t->type != GGML_TYPE_I8 || t->n_dims != 1)
        return snprintf(err, err_len,
                        "quantized model: tensor %s is not a quantized layer (I8 blob)", name),
               -EBADMSG;
    lin->n = n;
    lin->k = k;
    lin->q = q_linear_view(t->data, t->n_bytes); /* in the mapped file: no copy */
    if (!lin->q)
        return snprintf(err, err_len, "quantized model: tensor %s is a malformed quantized layer",
                        name),
               -EBADMSG;
    struct q_format want = llm_model_qformat(m, k);
    if (q_linear_rows(lin->q) != n || q_linear_cols(lin->q) != k ||
        !same_format(q_linear_format(lin->q), &want))
        return snprintf(err, err_len,
                        "quantized model: tensor %s has shape (%d, %d) or a format unlike the "
                        "llmd.quant.* metadata (expected (%d, %d))",
                        name, q_linear_rows(lin->q), q_linear_cols(lin->q), n, k),
               -EBADMSG;
    return 0;
}

int llm_model_load_quantized_head(const llm_model *m, const llm_gguf *g, q_linear **out, char *err,
                                  size_t err_len)
{
    *out = NULL;
    const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, LLM_QUANT_HEAD_TENSOR);
    if (!t || t->type != GGML_TYPE_I8 || t->n_dims != 1) return 0; /* a 16/32-bit head */
    q_linear *head = q_linear_view(t->data, t->n_bytes);
    struct q_format w8 = q_format_default(Q_W8A8), w4 = q_format_default(Q_W4A8);
    if (!head || q_linear_rows(head) != m->config.vocab_size ||
        q_linear_cols(head) != m->config.dim ||
        !(same_format(q_linear_format(head), &w8) || same_format(q_linear_format(head), &w4)) ||
        q_linear_perm(head)) {
        q_linear_free(head);
        return snprintf(err, err_len,
                        "quantized model: tensor %s is not a W8A8 or W4A8 head of (%d, %d)",
                        LLM_QUANT_HEAD_TENSOR, m->config.vocab_size, m->config.dim),
               -EBADMSG;
    }
    *out = head;
    return 0;
}

static bool same_perm(const q_linear *a, const q_linear *b, int k)
{
    const int *pa = q_linear_perm(a), *pb = q_linear_perm(b);
    if (!pa || !pb) return pa == pb;
    return memcmp(pa, pb, sizeof(int) * (size_t)k) == 0;
}

static int *perm_copy(const q_linear *l, int k)
{
    const int *p = q_linear_perm(l);
    if (!p) return NULL;
    int *copy = util_xmalloc(sizeof(int) * (size_t)k);
    memcpy(copy, p, sizeof(int) * (size_t)k);
    return copy;
}

int llm_model_link_quantized_block(llm_model *m, struct llm_block *b, int layer, char *err,
                                   size_t err_len)
{
    const struct llm_config *c = &m->config;
    int q_dim = c->n_heads * c->head_dim;
    if (!same_perm(b->wq.q, b->wk.q, c->dim) || !same_perm(b->wq.q, b->wv.q, c->dim) ||
        !same_perm(b->w_gate.q, b->w_up.q, c->dim)) {
        snprintf(err, err_len,
                 "quantized model: layer %d: Q/K/V or gate/up disagree on their channel order",
                 layer);
        return -EBADMSG;
    }
    b->perm_attn_in = perm_copy(b->wq.q, c->dim);
    b->perm_ffn_in = perm_copy(b->w_gate.q, c->dim);
    b->perm_attn_out = perm_copy(b->wo.q, q_dim);
    return 0;
}
