/*
 * model_internal.h: the model's insides, shared by the files of core/ that
 * build or run it (model.c, forward.c, atom.c). Not for other modules.
 */
#ifndef LLMD_CORE_MODEL_INTERNAL_H
#define LLMD_CORE_MODEL_INTERNAL_H

#include "core/llm.h"
#include "quant/quant.h"

/* One weight matrix y = x W^T in the model's precision: W (n, k) in fp32, or
 * its quantized form. `perm` is the input channel order the quantized form
 * expects (NULL: the original order). */
struct llm_linear {
    int n, k;
    float *w;    /* (n, k); NULL once a quantized form replaces it */
    q_linear *q; /* quantized paths */
};

struct llm_block {
    float *attn_norm;         /* (dim) */
    struct llm_linear wq;     /* (n_heads * head_dim, dim), rows in GGUF's RoPE pair order */
    struct llm_linear wk;     /* (n_kv_heads * head_dim, dim) */
    struct llm_linear wv;     /* (n_kv_heads * head_dim, dim) */
    struct llm_linear wo;     /* (dim, n_heads * head_dim) */
    float *ffn_norm;          /* (dim) */
    struct llm_linear w_gate; /* (ffn_dim, dim) */
    struct llm_linear w_up;   /* (ffn_dim, dim) */
    struct llm_linear w_down; /* (dim, ffn_dim) */
    /* Atom channel orders (NULL when not reordered). The down projection's is
     * folded into the rows of gate and up, so it needs none at run time. */
    int *perm_attn_in;  /* (dim) input of Q, K, V: applied by the fused RMSNorm */
    int *perm_ffn_in;   /* (dim) input of gate and up: likewise */
    int *perm_attn_out; /* (n_heads * head_dim) input of O: a gather per token */
};

struct llm_model {
    struct llm_config config;
    struct llm_model_options options;
    enum llm_precision precision;
    char *name;
    char *chat_template;
    llm_tokenizer *tokenizer;
    llm_gguf *file; /* the mapped GGUF, open for the model's life: the embeddings,
                       an f16 head and quantized layers are read where they lie */
    const struct llm_gguf_tensor *token_embd; /* (vocab, dim) in the file's type, a row at a time */
    float *output_norm;                       /* (dim) */
    /* The output head (lm_head), in one of three forms: */
    float *output;              /* (vocab, dim) fp32 (owned), or NULL */
    const uint16_t *output_f16; /* (vocab, dim) f16 (LLM_HEAD_F16): the file's own bytes when
                                   it stores the head in f16, else output_f16_owned */
    uint16_t *output_f16_owned;
    q_linear *output_q;       /* W8A8 (LLM_HEAD_INT8, or a quantized file's int8 head) */
    struct llm_block *blocks; /* (n_layers) */
    struct q_format qformat;  /* quantized paths: the base format; n_outlier per input width
                                 comes from llm_model_qformat */
    attn_cache *kv;
    float *rope_freq;               /* (head_dim / 2) */
    llm_linear_hook_fn linear_hook; /* fp32 only; NULL = none */
    void *linear_hook_ctx;
    bool prequantized; /* loaded from a quantized file (llmd quantize) */
};

/* The output head with f16 weights: y (R, V) = x (R, D) W^T (head.c);
 * D a multiple of 8. The scalar one is the reference for tests. */
void llm_head_f16(const float *x, const uint16_t *w, float *y, int R, int V, int D);
void llm_head_f16_scalar(const float *x, const uint16_t *w, float *y, int R, int V, int D);
/* Columns [v0, v1) of the same product, on the calling thread. */
void llm_head_f16_part(const float *x, const uint16_t *w, float *y, int R, int V, int D, int v0,
                       int v1);

/* Token `token`'s embedding as dim floats. */
void llm_model_embed(const llm_model *model, int32_t token, float *out);

/* The quantized format of a linear layer with k input channels. */
struct q_format llm_model_qformat(const llm_model *model, int k);

/* Forward hooks for calibration: when set, called with each linear group's
 * input (fp32, in the original channel order) for every step. */
enum llm_calib_point { LLM_CALIB_QKV, LLM_CALIB_O, LLM_CALIB_GATE_UP, LLM_CALIB_DOWN };
typedef void (*llm_calib_fn)(int layer, enum llm_calib_point point, const float *x, int m, int k,
                             void *ctx);
void llm_workspace_set_calib(llm_workspace *ws, llm_calib_fn fn, void *ctx);

/* Quantizes the model's linear layers for its precision (model->precision),
 * calibrating on options->quant.calib_file for Atom. Called by load. */
int llm_model_quantize(llm_model *model, char *err, size_t err_len);

/* Quantized files (model_file.c). Metadata keys start with this. */
#define LLM_QUANT_KEY_PREFIX "llmd.quant."
/* Reads llmd.quant.* when present: sets the precision, the quantization
 * options and m->prequantized. 0 also when absent (an fp32 file). */
int llm_model_read_quant_metadata(llm_model *m, const llm_gguf *g, char *err, size_t err_len);
/* The output head's tensor name in quantized files when it is W8A8 (an I8
 * blob like the layers'; the source's output.weight, if any, is dropped). */
#define LLM_QUANT_HEAD_TENSOR "output.weight"
/* Loads a quantized file's int8 head, when it has one: 0 with *out NULL
 * when the head is not quantized there. */
int llm_model_load_quantized_head(const llm_model *m, const llm_gguf *g, q_linear **out, char *err,
                                  size_t err_len);
/* Loads one quantized layer (n, k) from its I8 blob, checking it against
 * the metadata's format. */
int llm_model_load_quantized_linear(const llm_model *m, const llm_gguf *g, const char *name, int n,
                                    int k, struct llm_linear *lin, char *err, size_t err_len);
/* Derives a loaded block's channel orders from its layers (and checks that
 * the layers sharing an input agree). */
int llm_model_link_quantized_block(llm_model *m, struct llm_block *b, int layer, char *err,
                                   size_t err_len);

#endif
