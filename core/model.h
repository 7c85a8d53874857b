/*
 * model: a LLaMA-architecture model loaded from GGUF, and its batched
 * forward pass.
 *
 * State is split by lifetime: llm_config never changes after load; the
 * weights are read-only and shared by every thread; the KV cache pages and
 * the per-step scratch belong to whoever runs the forward pass (the engine,
 * or a command such as perplexity).
 */
#ifndef LLMD_CORE_MODEL_H
#define LLMD_CORE_MODEL_H

#include "attention/attention.h"
#include "core/tokenizer.h"

#include <stdbool.h>
#include <stdint.h>

struct llm_config {
    int n_layers;
    int dim;     /* model width */
    int ffn_dim; /* SwiGLU hidden width */
    int n_heads;
    int n_kv_heads; /* < n_heads: grouped-query attention */
    int head_dim;   /* dim / n_heads */
    int vocab_size;
    int ctx_len; /* context length trained for */
    float rope_base;
    float rms_eps;
    bool tied_output; /* the output head reuses the token embeddings */
};

/* How the linear layers compute: the precision paths measured against each
 * other. */
enum llm_precision { LLM_FP32, LLM_W8A8, LLM_W4A4_RTN, LLM_ATOM };
int llm_precision_parse(const char *name, enum llm_precision *out);
const char *llm_precision_name(enum llm_precision p);

/* The output head's (lm_head's) form: its bytes are the largest single
 * read of a decode step at small batch. */
enum llm_head {
    LLM_HEAD_F32,
    LLM_HEAD_F16,  /* half the bytes; exact for f16 files (read in place there) */
    LLM_HEAD_INT8, /* W8A8, int8 per vocabulary row and per token: a quarter */
    LLM_HEAD_INT4, /* W4A8, int4 groups of 128 per row, int8 per token: an eighth */
};
int llm_head_parse(const char *name, enum llm_head *out); /* "f32", "f16", "int8", "int4" */
const char *llm_head_name(enum llm_head head);

/* Atom's recipe and its ablation switches (precision LLM_ATOM; LLM_W4A4_RTN
 * is the same with every switch off). */
struct llm_quant_options {
    int group_size;         /* channels per int4 group; 0 = one group per row (groups of
                               Q_GROUP_SIZE_MAX where a row is wider: the kernels' limit) */
    int n_outlier;          /* int8 outlier channels; -1 = width / 32, 0 = none */
    float act_clip;         /* 0.9 */
    float weight_clip;      /* 0.85 */
    bool gptq;              /* GPTQ for the weights (else round to nearest) */
    const char *calib_file; /* calibration text (models/calibration.txt) */
    int calib_tokens;       /* calibration tokens to use */
};

/* Called during long work (loading, quantizing) with a fraction done. */
typedef void (*llm_progress_fn)(const char *what, double fraction, void *ctx);

struct llm_model_options {
    enum llm_precision precision;
    enum attn_kv_type kv_type;
    int kv_pages;               /* KV page pool size; 0 = ctx_len x kv_sequences tokens */
    int kv_sequences;           /* full-context sequences the default pool holds (8) */
    int page_size;              /* tokens per KV page (16) */
    enum attn_mode sparse_mode; /* what a non-zero token budget means: ATTN_QUEST, or the
                                   query-agnostic ATTN_WINDOW baseline */
    int dense_layers;           /* layers that always attend densely (Quest: 2) */
    struct llm_quant_options quant;
    enum llm_head head;       /* the output head's form (a quantized file's int8 head wins) */
    int threads;              /* 0 = all cores */
    llm_progress_fn progress; /* may be NULL */
    void *progress_ctx;
};
void llm_model_options_default(struct llm_model_options *o);

typedef struct llm_model llm_model;

/* Loads a GGUF model. On failure returns -errno and writes a message
 * (naming the file and what is wrong) into err. */
int llm_model_load(const char *path, const struct llm_model_options *options, llm_model **out,
                   char *err, size_t err_len);
void llm_model_free(llm_model *model);
const struct llm_config *llm_model_config(const llm_model *model);
const llm_tokenizer *llm_model_tokenizer(const llm_model *model);
attn_cache *llm_model_kv_cache(llm_model *model);
/* The name under which the model is served (general.name, else the file's
 * base name without .gguf). */
const char *llm_model_name(const llm_model *model);
/* How the linear layers compute: the requested precision, or the one a
 * quantized file was made with (which wins over the request). */
enum llm_precision llm_model_precision(const llm_model *model);
/* True when the model came from a quantized file (no calibration at load). */
bool llm_model_prequantized(const llm_model *model);
/* Writes the quantized model to `path` as a GGUF that loads without
 * recalibration: `source_path` (the file the model was loaded from) with
 * each linear layer replaced by its quantized form and llmd.quant.*
 * metadata added (see core/model_file.c). -EINVAL for an fp32 model. */
int llm_model_save_quantized(const llm_model *model, const char *source_path, const char *path,
                             char *err, size_t err_len);
/* The chat template stored in the GGUF, or NULL. */
const char *llm_model_chat_template(const llm_model *model);

/* ------------------------------------------------------ linear-layer hook */

/* The linear layers of a block. */
enum llm_linear_kind {
    LLM_LINEAR_Q,
    LLM_LINEAR_K,
    LLM_LINEAR_V,
    LLM_LINEAR_O,
    LLM_LINEAR_GATE,
    LLM_LINEAR_UP,
    LLM_LINEAR_DOWN,
    LLM_LINEAR_COUNT
};

/* "q", "k", "v", "o", "gate", "up", "down"; NULL when out of range. */
const char *llm_linear_kind_name(enum llm_linear_kind kind);

/* Computes y (T x n) = x (T x k) W^T for linear `kind` of block `layer`, W
 * (n x k, row-major) being the model's float weights, in place of the
 * model; returns false to let the model compute it. Called on the thread
 * running the forward pass, for every linear of every step, so a hook that
 * keeps state must not share a model between threads. */
typedef bool (*llm_linear_hook_fn)(void *ctx, int layer, enum llm_linear_kind kind, const float *w,
                                   int n, int k, const float *x, int T, float *y);

/* Routes the linear layers of an fp32 model through fn (NULL removes it).
 * Returns 0, or -ENOTSUP when the model is quantized (its float weights
 * are gone). For running chosen layers on other hardware, simulated or not
 * (the PIM crossbars: cli/pim_llm.c). */
int llm_model_set_linear_hook(llm_model *model, llm_linear_hook_fn fn, void *ctx);

/* ---------------------------------------------------------- forward pass */

/* One sequence's part of a batched step: n_tokens new tokens that go at
 * positions [attn_seq_len(kv), + n_tokens). Logits are produced for the last
 * token only, or for every token when all_logits is set. */
struct llm_batch_item {
    attn_seq *kv;
    const int32_t *tokens;
    int n_tokens;
    bool all_logits;
    int quest_budget;           /* 0 = dense */
    enum attn_mode sparse_mode; /* what the budget means; ATTN_DENSE (0) = the model's option */
};

/* Scratch for forward passes of up to max_tokens tokens a step. One per
 * thread that runs forward passes. */
typedef struct llm_workspace llm_workspace;
llm_workspace *llm_workspace_create(const llm_model *model, int max_tokens);
void llm_workspace_free(llm_workspace *ws);

/* Where a step's time goes (llm_workspace_profile): wall time from the end
 * of one phase to the end of the next, as the first thread sees it, so a
 * phase's figure includes waiting for its slowest thread. */
enum llm_phase {
    LLM_PHASE_EMBED,     /* token embeddings */
    LLM_PHASE_NORM,      /* RMSNorm (+ activation quantization) before Q/K/V and gate/up */
    LLM_PHASE_QKV,       /* the Q, K and V products */
    LLM_PHASE_ROPE_KV,   /* RoPE, K/V into the cache, Quest bounds */
    LLM_PHASE_ATTENTION, /* attention (page selection included) */
    LLM_PHASE_ATTN_OUT,  /* quantizing its output, the O product and residual */
    LLM_PHASE_FFN_IN,    /* the gate and up products */
    LLM_PHASE_FFN_ACT,   /* SwiGLU (+ quantization) */
    LLM_PHASE_FFN_OUT,   /* the down product and residual */
    LLM_PHASE_HEAD,      /* final norm and the output head */
    LLM_PHASE_COUNT
};
const char *llm_phase_name(enum llm_phase phase);
/* From now on every step adds each phase's seconds to seconds[phase]
 * (LLM_PHASE_COUNT entries, owned by the caller; NULL stops). */
void llm_workspace_profile(llm_workspace *ws, double *seconds);

/* Runs one batched step over n_items sequences (some prefilling, some
 * decoding). Reserves KV pages first: returns -ENOSPC, having changed
 * nothing, when the pool is short. On success appends K/V, commits the new
 * lengths, and writes logits rows (vocab_size floats each) in item order:
 * one row per item, or n_tokens rows for an item with all_logits.
 * `stats` (may be NULL) accumulates Quest page counts. */
int llm_forward(llm_model *model, llm_workspace *ws, struct llm_batch_item *items, int n_items,
                float *logits, struct attn_stats *stats);

#endif
