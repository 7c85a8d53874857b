/*
 * model.c: loading a LLaMA-architecture model from GGUF.
 *
 * Hyperparameters come from the standard `llama.*` keys; tensors from the
 * names GGUF readers use (token_embd, blk.N.attn_q, ...). The file stays
 * mapped for the model's life: the embeddings are converted a row at a
 * time as tokens are looked up, an f16 head and the layers of a quantized
 * file are read where they lie, so loading a quantized file copies next to
 * nothing. Layers of a 16- or 32-bit file are converted to fp32 at load
 * (the fp32 path computes with them; the quantized paths quantize from
 * them, layer by layer). The head takes the form the options ask for,
 * built a chunk of rows at a time. Q and K rows are kept in GGUF's order, which pairs
 * adjacent channels for RoPE (llama.cpp's converter permutes HF's
 * rotate-half layout into it), so forward.c rotates adjacent pairs.
 */
#include "core/model_internal.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------------- names */

static const char *const precision_names[] = {"fp32", "w8a8", "w4a4-rtn", "atom"};

int llm_precision_parse(const char *name, enum llm_precision *out)
{
    for (int i = 0; i <= LLM_ATOM; i++)
        if (strcmp(name, precision_names[i]) == 0) {
            *out = (enum llm_precision)i;
            return 0;
        }
    return -EINVAL;
}

const char *llm_precision_name(enum llm_precision p)
{
    return (unsigned)p <= LLM_ATOM ? precision_names[p] : "unknown";
}

static const char *const head_names[] = {"f32", "f16", "int8", "int4"};

int llm_head_parse(const char *name, enum llm_head *out)
{
    for (int i = 0; i <= LLM_HEAD_INT4; i++)
        if (strcmp(name, head_names[i]) == 0) {
            *out = (enum llm_head)i;
            return 0;
        }
    return -EINVAL;
}

const char *llm_head_name(enum llm_head head)
{
    return (unsigned)head <= LLM_HEAD_INT4 ? head_names[head] : "unknown";
}

void llm_model_options_default(struct llm_model_options *o)
{
    memset(o, 0, sizeof *o);
    o->precision = LLM_FP32;
    o->kv_type = ATTN_KV_F32;
    o->page_size = 16;
    o->kv_sequences = 8;
    o->sparse_mode = ATTN_QUEST;
    o->dense_layers = 2;
    o->quant.group_size = 128;
    o->quant.n_outlier = -1;
    o->quant.act_clip = 0.9f;
    o->quant.weight_clip = 0.85f;
    o->quant.gptq = true;
    o->quant.calib_file = "models/calibration.txt";
    o->quant.calib_tokens = 16384;
}

/* --------------------------------------------------------------- loading */

/* Formats an error message into err and returns code. */
static int fail(char *err, size_t err_len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t err_len, int code, const char *fmt, ...)
{
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int get_u32(const llm_gguf *g, const char *key, int *out, bool required, char *err,
                   size_t err_len)
{
    uint32_t v;
    int rc = llm_gguf_get_u32(g, key, &v);
    if (rc == -ENOENT && !required) return 0;
    if (rc)
        return fail(err, err_len, -EBADMSG, "metadata %s: %s", key,
                    rc == -ENOENT ? "missing" : "not an integer");
    if (v == 0 || v > (1u << 24))
        return fail(err, err_len, -EBADMSG, "metadata %s: %u out of range", key, v);
    *out = (int)v;
    return 0;
}

static int read_config(const llm_gguf *g, struct llm_config *c, char *err, size_t err_len)
{
    struct llm_gguf_string arch;
    if (llm_gguf_get_string(g, "general.architecture", &arch) != 0)
        return fail(err, err_len, -EBADMSG, "metadata general.architecture missing");
    if (arch.len != 5 || memcmp(arch.ptr, "llama", 5) != 0)
        return fail(err, err_len, -EINVAL, "architecture '%.*s' is not llama",
                    (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);

    int rc;
    if ((rc = get_u32(g, "llama.block_count", &c->n_layers, true, err, err_len)) ||
        (rc = get_u32(g, "llama.embedding_length", &c->dim, true, err, err_len)) ||
        (rc = get_u32(g, "llama.feed_forward_length", &c->ffn_dim, true, err, err_len)) ||
        (rc = get_u32(g, "llama.attention.head_count", &c->n_heads, true, err, err_len)))
        return rc;
    c->n_kv_heads = c->n_heads;
    c->ctx_len = 2048;
    if ((rc = get_u32(g, "llama.attention.head_count_kv", &c->n_kv_heads, false, err, err_len)) ||
        (rc = get_u32(g, "llama.context_length", &c->ctx_len, false, err, err_len)))
        return rc;
    c->rope_base = 10000.0f;
    c->rms_eps = 1e-5f;
    float f;
    if (llm_gguf_get_f32(g, "llama.rope.freq_base", &f) == 0) c->rope_base = f;
    if (llm_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f) == 0) c->rms_eps = f;
    if (!(c->rope_base > 1.0f) || !(c->rms_eps > 0.0f && c->rms_eps < 1.0f))
        return fail(err, err_len, -EBADMSG, "rope base %g or rms epsilon %g out of range",
                    c->rope_base, c->rms_eps);
    if (c->dim % c->n_heads || c->n_heads % c->n_kv_heads)
        return fail(err, err_len, -EBADMSG, "width %d, %d heads and %d KV heads do not divide",
                    c->dim, c->n_heads, c->n_kv_heads);
    c->head_dim = c->dim / c->n_heads;
    int rope_dim = c->head_dim;
    if ((rc = get_u32(g, "llama.rope.dimension_count", &rope_dim, false, err, err_len))) return rc;
    if (rope_dim != c->head_dim)
        return fail(err, err_len, -EINVAL, "partial RoPE (%d of %d channels) is not supported",
                    rope_dim, c->head_dim);
    if (c->head_dim % 16)
        return fail(err, err_len, -EINVAL, "head size %d is not a multiple of 16", c->head_dim);
    return 0;
}

/* Loads tensor `name` of shape (rows, cols) into a new fp32 array. rows = 0
 * means a vector of cols elements. */
static int load_tensor(const llm_gguf *g, const char *name, int rows, int cols, float **out,
                       char *err, size_t err_len)
{
    const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, name);
    if (!t) return fail(err, err_len, -EBADMSG, "tensor %s missing", name);
    bool shape_ok = rows == 0 ? (t->n_dims == 1 && t->dims[0] == (uint64_t)cols)
                              : (t->n_dims == 2 && t->dims[0] == (uint64_t)cols &&
                                 t->dims[1] == (uint64_t)rows);
    if (!shape_ok)
        return fail(err, err_len, -EBADMSG, "tensor %s has shape [%llu, %llu], expected [%d, %d]",
                    name, (unsigned long long)t->dims[0],
                    (unsigned long long)(t->n_dims > 1 ? t->dims[1] : 1), cols, rows ? rows : 1);
    float *data = util_aligned_alloc(t->n_elements * sizeof(float));
    int rc = llm_gguf_tensor_to_f32(t, data);
    if (rc) {
        util_aligned_free(data);
        return fail(err, err_len, rc, "tensor %s: unsupported type %d", name, (int)t->type);
    }
    *out = data;
    return 0;
}

static int load_linear(const llm_model *m, const llm_gguf *g, const char *name, int n, int k,
                       struct llm_linear *lin, char *err, size_t err_len)
{
    if (m->prequantized)
        return llm_model_load_quantized_linear(m, g, name, n, k, lin, err, err_len);
    lin->n = n;
    lin->k = k;
    return load_tensor(g, name, n, k, &lin->w, err, err_len);
}

static int load_block(llm_model *m, const llm_gguf *g, int i, struct llm_block *b, char *err,
                      size_t err_len)
{
    const struct llm_config *c = &m->config;
    char name[64];
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", i, suffix), name)
    int rc;
    if ((rc = load_tensor(g, NAME("attn_norm.weight"), 0, c->dim, &b->attn_norm, err, err_len)) ||
        (rc = load_linear(m, g, NAME("attn_q.weight"), q_dim, c->dim, &b->wq, err, err_len)) ||
        (rc = load_linear(m, g, NAME("attn_k.weight"), kv_dim, c->dim, &b->wk, err, err_len)) ||
        (rc = load_linear(m, g, NAME("attn_v.weight"), kv_dim, c->dim, &b->wv, err, err_len)) ||
        (rc = load_linear(m, g, NAME("attn_output.weight"), c->dim, q_dim, &b->wo, err, err_len)) ||
        (rc = load_tensor(g, NAME("ffn_norm.weight"), 0, c->dim, &b->ffn_norm, err, err_len)) ||
        (rc = load_linear(m, g, NAME("ffn_gate.weight"), c->ffn_dim, c->dim, &b->w_gate, err,
                          err_len)) ||
        (rc = load_linear(m, g, NAME("ffn_up.weight"), c->ffn_dim, c->dim, &b->w_up, err,
                          err_len)) ||
        (rc = load_linear(m, g, NAME("ffn_down.weight"), c->dim, c->ffn_dim, &b->w_down, err,
                          err_len)))
        return rc;
#undef NAME
    return m->prequantized ? llm_model_link_quantized_block(m, b, i, err, err_len) : 0;
}

static char *base_name_without_ext(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *name = util_xstrdup(slash ? slash + 1 : path);
    size_t n = strlen(name);
    if (n > 5 && strcmp(name + n - 5, ".gguf") == 0) name[n - 5] = 0;
    return name;
}

static char *metadata_string(const llm_gguf *g, const char *key)
{
    struct llm_gguf_string s;
    if (llm_gguf_get_string(g, key, &s) != 0 || s.len == 0 || s.len > (1u << 20)) return NULL;
    char *out = util_xmalloc(s.len + 1);
    memcpy(out, s.ptr, s.len);
    out[s.len] = 0;
    return out;
}

static void progress(const llm_model *m, const char *what, double fraction)
{
    if (m->options.progress) m->options.progress(what, fraction, m->options.progress_ctx);
}

/* Rows of the head's tensor (output.weight, or the embeddings when tied)
 * converted at a time while another form of it is built: no fp32 copy of
 * the whole. */
#define HEAD_CHUNK_ROWS 256

/* Types the row conversions read (llm_gguf_tensor_rows_to_f32). */
static bool convertible(const struct llm_gguf_tensor *t)
{
    return t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16 ||
           t->type == GGML_TYPE_Q8_0;
}

/* The head in half precision: the file's bytes when it stores f16. */
static void make_head_f16(llm_model *m, const struct llm_gguf_tensor *t)
{
    const struct llm_config *c = &m->config;
    if (t->type == GGML_TYPE_F16) {
        m->output_f16 = t->data;
        return;
    }
    m->output_f16_owned = util_aligned_alloc((size_t)c->vocab_size * c->dim * sizeof(uint16_t));
    float *rows = util_xmalloc(sizeof(float) * HEAD_CHUNK_ROWS * (size_t)c->dim);
    for (int r0 = 0; r0 < c->vocab_size; r0 += HEAD_CHUNK_ROWS) {
        int n = c->vocab_size - r0 < HEAD_CHUNK_ROWS ? c->vocab_size - r0 : HEAD_CHUNK_ROWS;
        UTIL_CHECK(llm_gguf_tensor_rows_to_f32(t, (uint64_t)r0, (uint64_t)n, rows) == 0);
        for (size_t i = 0; i < (size_t)n * c->dim; i++)
            m->output_f16_owned[(size_t)r0 * c->dim + i] = util_f32_to_f16(rows[i]);
    }
    free(rows);
    m->output_f16 = m->output_f16_owned;
}

/* The head quantized: W8A8 (int8 per vocabulary row) or W4A8 (int4 groups
 * per row), activations int8 per token either way. */
static void make_head_quantized(llm_model *m, const struct llm_gguf_tensor *t, enum q_method method)
{
    const struct llm_config *c = &m->config;
    struct q_format f = q_format_default(method);
    m->output_q = q_linear_create(c->vocab_size, c->dim, &f, NULL);
    float *rows = util_xmalloc(sizeof(float) * HEAD_CHUNK_ROWS * (size_t)c->dim);
    for (int r0 = 0; r0 < c->vocab_size; r0 += HEAD_CHUNK_ROWS) {
        int n = c->vocab_size - r0 < HEAD_CHUNK_ROWS ? c->vocab_size - r0 : HEAD_CHUNK_ROWS;
        UTIL_CHECK(llm_gguf_tensor_rows_to_f32(t, (uint64_t)r0, (uint64_t)n, rows) == 0);
        q_linear_quantize_rows(m->output_q, rows, r0, n);
    }
    free(rows);
}

/* The output head in the form the options ask for: a quantized file's
 * quantized head as it is; else int8, int4, f16 or fp32 from the file's
 * head tensor. */
static int load_head(llm_model *m, const llm_gguf *g, char *err, size_t err_len)
{
    const struct llm_config *c = &m->config;
    int rc = 0;
    if (m->prequantized && (rc = llm_model_load_quantized_head(m, g, &m->output_q, err, err_len)))
        return rc;
    if (m->output_q) return 0;
    const struct llm_gguf_tensor *t =
        c->tied_output ? m->token_embd : llm_gguf_find_tensor(g, "output.weight");
    if (!t) return fail(err, err_len, -EBADMSG, "tensor output.weight missing");
    if (t->n_dims != 2 || t->dims[0] != (uint64_t)c->dim || t->dims[1] != (uint64_t)c->vocab_size)
        return fail(err, err_len, -EBADMSG, "tensor output.weight is not (%d, %d)", c->vocab_size,
                    c->dim);
    if (!convertible(t))
        return fail(err, err_len, -EINVAL, "tensor output.weight: unsupported type %d",
                    (int)t->type);
    if (m->options.head == LLM_HEAD_INT8)
        make_head_quantized(m, t, Q_W8A8);
    else if (m->options.head == LLM_HEAD_INT4)
        make_head_quantized(m, t, Q_W4A8);
    else if (m->options.head == LLM_HEAD_F16)
        make_head_f16(m, t);
    else {
        m->output = util_aligned_alloc((size_t)c->vocab_size * c->dim * sizeof(float));
        if ((rc = llm_gguf_tensor_to_f32(t, m->output)))
            return fail(err, err_len, rc, "tensor output.weight: unsupported type %d",
                        (int)t->type);
    }
    return 0;
}

/* The embeddings stay in the file; each lookup converts one row. */
static int find_embeddings(llm_model *m, const llm_gguf *g, char *err, size_t err_len)
{
    const struct llm_config *c = &m->config;
    const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, "token_embd.weight");
    if (!t) return fail(err, err_len, -EBADMSG, "tensor token_embd.weight missing");
    if (t->n_dims != 2 || t->dims[0] != (uint64_t)c->dim || t->dims[1] != (uint64_t)c->vocab_size)
        return fail(err, err_len, -EBADMSG,
                    "tensor token_embd.weight has shape [%llu, %llu], expected [%d, %d]",
                    (unsigned long long)t->dims[0],
                    (unsigned long long)(t->n_dims > 1 ? t->dims[1] : 1), c->dim, c->vocab_size);
    if (!convertible(t))
        return fail(err, err_len, -EINVAL, "tensor token_embd.weight: unsupported type %d",
                    (int)t->type);
    m->token_embd = t;
    return 0;
}

void llm_model_embed(const llm_model *m, int32_t token, float *out)
{
    UTIL_CHECK(token >= 0 && token < m->config.vocab_size);
    UTIL_CHECK(llm_gguf_tensor_rows_to_f32(m->token_embd, (uint64_t)token, 1, out) == 0);
}

static int load_from_gguf(llm_model *m, const llm_gguf *g, const char *path, char *err,
                          size_t err_len)
{
    struct llm_config *c = &m->config;
    int rc = read_config(g, c, err, err_len);
    if (rc) return rc;
    if ((rc = llm_tokenizer_load(g, &m->tokenizer, err, err_len))) return rc;
    c->vocab_size = llm_tokenizer_vocab_size(m->tokenizer);
    if ((rc = llm_model_read_quant_metadata(m, g, err, err_len))) return rc;
    if (m->prequantized) m->qformat = llm_model_qformat(m, c->dim);

    if ((rc = find_embeddings(m, g, err, err_len)) ||
        (rc = load_tensor(g, "output_norm.weight", 0, c->dim, &m->output_norm, err, err_len)))
        return rc;
    c->tied_output = llm_gguf_find_tensor(g, "output.weight") == NULL;
    if ((rc = load_head(m, g, err, err_len))) return rc;

    m->blocks = util_xcalloc((size_t)c->n_layers, sizeof *m->blocks);
    for (int i = 0; i < c->n_layers; i++) {
        if ((rc = load_block(m, g, i, &m->blocks[i], err, err_len))) return rc;
        progress(m, "loading weights", (double)(i + 1) / c->n_layers);
    }

    m->name = metadata_string(g, "general.name");
    if (!m->name) m->name = base_name_without_ext(path);
    m->chat_template = metadata_string(g, "tokenizer.chat_template");

    m->rope_freq = util_xmalloc(sizeof(float) * (size_t)(c->head_dim / 2));
    for (int i = 0; i < c->head_dim / 2; i++)
        m->rope_freq[i] = powf(c->rope_base, -2.0f * (float)i / (float)c->head_dim);
    return 0;
}

static int create_kv_cache(llm_model *m, char *err, size_t err_len)
{
    const struct llm_config *c = &m->config;
    struct attn_cache_config kc = {
        .n_layers = c->n_layers,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .page_size = m->options.page_size > 0 ? m->options.page_size : 16,
        .kv_type = m->options.kv_type,
    };
    int sequences = m->options.kv_sequences > 0 ? m->options.kv_sequences : 8;
    kc.n_pages = m->options.kv_pages > 0
                     ? m->options.kv_pages
                     : sequences * ((c->ctx_len + kc.page_size - 1) / kc.page_size);
    int rc = attn_cache_create(&kc, &m->kv);
    if (rc)
        return fail(err, err_len, rc, "KV cache of %d pages: %s", kc.n_pages, util_strerror(rc));
    return 0;
}

int llm_model_load(const char *path, const struct llm_model_options *options, llm_model **out,
                   char *err, size_t err_len)
{
    *out = NULL;
    llm_model *m = util_xcalloc(1, sizeof *m);
    if (options)
        m->options = *options;
    else
        llm_model_options_default(&m->options);
    m->precision = m->options.precision;
    if (m->options.threads > 0) omp_set_num_threads(m->options.threads);

    char gerr[256] = "";
    int rc = llm_gguf_open(path, &m->file, gerr, sizeof gerr);
    if (rc) {
        fail(err, err_len, rc, "%s", gerr[0] ? gerr : util_strerror(rc)); /* names the path */
    } else {
        char lerr[256] = "";
        rc = load_from_gguf(m, m->file, path, lerr, sizeof lerr);
        if (rc) fail(err, err_len, rc, "%s: %s", path, lerr);
    }
    if (!rc) rc = create_kv_cache(m, err, err_len);
    if (!rc && m->precision != LLM_FP32 && !m->prequantized)
        rc = llm_model_quantize(m, err, err_len);
    if (rc) {
        llm_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

static void free_linear(struct llm_linear *l)
{
    util_aligned_free(l->w);
    q_linear_free(l->q);
}

void llm_model_free(llm_model *m)
{
    if (!m) return;
    if (m->blocks) {
        for (int i = 0; i < m->config.n_layers; i++) {
            struct llm_block *b = &m->blocks[i];
            util_aligned_free(b->attn_norm);
            util_aligned_free(b->ffn_norm);
            struct llm_linear *lins[] = {&b->wq,     &b->wk,   &b->wv,    &b->wo,
                                         &b->w_gate, &b->w_up, &b->w_down};
            for (size_t j = 0; j < sizeof lins / sizeof lins[0]; j++) free_linear(lins[j]);
            free(b->perm_attn_in);
            free(b->perm_ffn_in);
            free(b->perm_attn_out);
        }
        free(m->blocks);
    }
    util_aligned_free(m->output);
    util_aligned_free(m->output_f16_owned);
    q_linear_free(m->output_q);
    util_aligned_free(m->output_norm);
    attn_cache_free(m->kv);
    llm_tokenizer_free(m->tokenizer);
    free(m->rope_freq);
    free(m->name);
    free(m->chat_template);
    llm_gguf_close(m->file); /* after everything that reads it in place */
    free(m);
}

const struct llm_config *llm_model_config(const llm_model *m)
{
    return &m->config;
}
const llm_tokenizer *llm_model_tokenizer(const llm_model *m)
{
    return m->tokenizer;
}
attn_cache *llm_model_kv_cache(llm_model *m)
{
    return m->kv;
}
const char *llm_model_name(const llm_model *m)
{
    return m->name;
}
const char *llm_model_chat_template(const llm_model *m)
{
    return m->chat_template;
}
enum llm_precision llm_model_precision(const llm_model *m)
{
    return m->precision;
}
bool llm_model_prequantized(const llm_model *m)
{
    return m->prequantized;
}

const char *llm_linear_kind_name(enum llm_linear_kind kind)
{
    static const char *const names[LLM_LINEAR_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
    return (int)kind >= 0 && kind < LLM_LINEAR_COUNT ? names[kind] : NULL;
}

int llm_model_set_linear_hook(llm_model *m, llm_linear_hook_fn fn, void *ctx)
{
    if (fn && m->precision != LLM_FP32) return -ENOTSUP;
    m->linear_hook = fn;
    m->linear_hook_ctx = ctx;
    return 0;
}
