/*
 * quant: low-bit linear layers the Atom way, and the W8A8 baseline.
 *
 * A quantized linear layer computes y = x W^T for x (m, k) and W (n, k).
 * Its input channels may be reordered by a permutation (Atom moves the
 * outlier channels to the end): the layer then holds W's columns in that
 * order, and its activations must be quantized in the same order.
 *
 * Formats (weights / activations):
 *   W8A8      int8 per output row / int8 per token, symmetric.
 *   W4A4      the first k - n_outlier channels in groups of `group_size`:
 *             int4 symmetric, one scale per output row per group / per
 *             token per group; the last n_outlier channels int8, one scale
 *             per row / per token. n_outlier = 0 and no permutation is the
 *             plain round-to-nearest W4A4 baseline.
 *   W4A8      int4 weights in groups as W4A4 (no outliers), activations int8
 *             per token per group: for layers whose inputs int4 would hurt
 *             (the output head), at half W8A8's weight bytes.
 * Symmetric means scale = clip * absmax / 7 (int4, values -7..7) or
 * absmax / 127 (int8, -127..127), fp32 scales, round to nearest even.
 * Products accumulate in int32 and are rescaled per group in fp32.
 *
 * Kernels: a scalar reference plus AVX2, AVX-VNNI, AVX-512 VNNI and
 * AMX-INT8 versions, the widest the CPU has chosen at start-up by cpuid
 * (q_kernel_name() says which).
 *
 * Atom's recipe around it: calibration statistics (mean squared activation
 * per input channel, and X^T X for GPTQ), outlier selection, GPTQ.
 */
#ifndef LLMD_QUANT_H
#define LLMD_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum q_method { Q_W8A8, Q_W4A4, Q_W4A8 };

/* The widest int4 group the kernels take (AVX2 sums a group in int16). */
#define Q_GROUP_SIZE_MAX 512

struct q_format {
    enum q_method method;
    int group_size;    /* W4A4: channels per group; 128 by default */
    int n_outlier;     /* W4A4: trailing channels kept int8; 0 = none */
    float act_clip;    /* activation clipping: scale from clip * absmax (1 = none) */
    float weight_clip; /* weight clipping, likewise */
};

/* The defaults: W4A4 with groups of 128, no outliers, clipping 0.9
 * (activations) and 0.85 (weights); W8A8 without clipping; W4A8 with groups
 * of 128 and weight clipping 0.9 (activations are int8: not clipped). */
struct q_format q_format_default(enum q_method method);

/* 0 when `format` can quantize layers of k input channels, else -EINVAL
 * (the reason is logged at debug level). Legal: k a multiple of 16 in
 * 16..65536; clipping factors in (0, 1]. W4A4: group_size a multiple of 16
 * in 16..512, n_outlier a multiple of 16 in 0..k; the int4 channels
 * k - n_outlier need not be a multiple of group_size (the last group is
 * shorter). W8A8: n_outlier 0, group_size ignored. Clipping applies to the
 * int4 groups only; int8 values (outliers, W8A8) keep their full range.
 * Every function below that takes a format checks it (UTIL_CHECK). */
int q_format_check(const struct q_format *format, int k);

/* ------------------------------------------------------------ activations */

/* Activations of up to `max_m` tokens, quantized for one format and width k.
 * Reused step after step; shared by every layer that reads the same input
 * (Q, K and V; gate and up). Quantizing uses every core (OpenMP) for 4
 * tokens or more, unless called from a parallel region. An act may be read
 * by several q_gemm at once, but not while it is being quantized. */
typedef struct q_act q_act;

q_act *q_act_create(const struct q_format *format, int k, int max_m);
void q_act_free(q_act *act);

/* Quantizes x (m, k) into act, reading channel perm[j] as channel j (perm
 * may be NULL for the identity). */
void q_act_quantize(q_act *act, const float *x, int m, const int *perm);
/* The same, fused with RMSNorm: quantizes x / sqrt(mean(x^2) + eps) *
 * norm_weight, norm_weight (k) in x's channel order like x (it is read
 * through perm too). */
void q_act_quantize_rmsnorm(q_act *act, const float *x, const float *norm_weight, float eps, int m,
                            const int *perm);
/* The same, fused with SwiGLU: quantizes silu(gate) * up; gate and up are
 * (m, k) and already in the layer's channel order. */
void q_act_quantize_swiglu(q_act *act, const float *gate, const float *up, int m);
/* The same three for tokens [t_begin, t_end) of m only, on the calling
 * thread: for callers that split the tokens over their own threads. The
 * act holds m tokens once every part is done. */
void q_act_quantize_rows(q_act *act, const float *x, int m, int t_begin, int t_end,
                         const int *perm);
void q_act_quantize_rmsnorm_rows(q_act *act, const float *x, const float *norm_weight, float eps,
                                 int m, int t_begin, int t_end, const int *perm);
void q_act_quantize_swiglu_rows(q_act *act, const float *gate, const float *up, int m, int t_begin,
                                int t_end);
/* The quantized activations of the last call, dequantized to x (m, k) in
 * the act's channel order (position j holds channel perm[j]): for tests and
 * error reports. m must not exceed the tokens last quantized. */
void q_act_dequantize(const q_act *act, int m, float *x);

/* ---------------------------------------------------------------- weights */

typedef struct q_linear q_linear;

/* Quantizes W (n, k) by round-to-nearest. perm (k entries, or NULL) gives the
 * channel order; the layer keeps its own copy. */
q_linear *q_linear_quantize(const float *w, int n, int k, const struct q_format *format,
                            const int *perm);
/* The same in steps, for a matrix too large to hold in fp32 at once: an
 * empty layer (weights zero), then rows [row0, row0 + n_rows) of W from w
 * (n_rows x k, in the original channel order), in any order. */
q_linear *q_linear_create(int n, int k, const struct q_format *format, const int *perm);
void q_linear_quantize_rows(q_linear *layer, const float *w, int row0, int n_rows);
/* The same with GPTQ for the int4 part (block 128, damping `damp` of the mean
 * diagonal): `hessian` is X^T X (k, k) in the original channel order, from
 * calibration. The error of the int4 columns is pushed into the outlier
 * columns before they are rounded to int8. Returns NULL if the Cholesky
 * factorisation fails even after extra damping. */
q_linear *q_linear_quantize_gptq(const float *w, int n, int k, const struct q_format *format,
                                 const int *perm, const float *hessian, float damp);
void q_linear_free(q_linear *layer);
int q_linear_rows(const q_linear *layer);
int q_linear_cols(const q_linear *layer);
const struct q_format *q_linear_format(const q_linear *layer);
/* The layer's channel order (k entries, owned by the layer), or NULL for the
 * identity: pass it to q_act_quantize*. */
const int *q_linear_perm(const q_linear *layer);
size_t q_linear_bytes(const q_linear *layer);

/* The weights as the kernels see them, dequantized to float (n, k), in the
 * original channel order: for tests and error reports. */
void q_linear_dequantize(const q_linear *layer, float *w);

/* Serialisation for `llmd quantize`: a flat blob that q_linear_load reads back.
 * save returns the bytes written (or needed, when buf is NULL). load returns
 * NULL on a malformed blob (every size is checked). */
size_t q_linear_save(const q_linear *layer, void *buf, size_t cap);
q_linear *q_linear_load(const void *buf, size_t size);
/* The same, but the layer reads its weights and scales where they lie in
 * buf when the blob is 64-byte aligned there (a mapped file): buf must then
 * outlive the layer. Otherwise a copy, as q_linear_load. */
q_linear *q_linear_view(const void *buf, size_t size);

/* --------------------------------------------------------------- products */

/* y (m, n) = act (m, k) x layer^T, with the chosen kernel. act and layer must
 * have the same format, k and channel order. Parallel over the cores
 * (OpenMP) unless called from a parallel region. */
void q_gemm(const q_linear *layer, const q_act *act, int m, float *y);

/* One product of a batched call: y (m, layer n) = act x layer^T, row t at
 * y + t * ldy; with `accumulate`, y += the product instead (a residual add
 * for free). */
struct q_gemm_job {
    const q_linear *layer;
    const q_act *act;
    float *y;
    int ldy;
    bool accumulate;
};

/* Thread ith's share (of nth) of the products of m tokens of every job: the
 * jobs' column blocks are split as one range, so that the products that
 * read one input (Q, K and V; gate and up) are one parallel phase. Every
 * thread calls it with the same arguments; it does not synchronise (the
 * caller puts a barrier after it). */
void q_gemm_jobs(const struct q_gemm_job *jobs, int n_jobs, int m, int ith, int nth);

/* The kernel implementations, for tests and benchmarks that compare them. */
enum q_kernel {
    Q_KERNEL_SCALAR,
    Q_KERNEL_AVX2,
    Q_KERNEL_AVX_VNNI, /* 256-bit VNNI: CPUs that have it without AVX-512 (Alder Lake) */
    Q_KERNEL_AVX512_VNNI,
    Q_KERNEL_AMX,
    Q_KERNEL_COUNT
};
/* True when the CPU (and OS) can run it. */
bool q_kernel_available(enum q_kernel kernel);
/* The one chosen at start-up (LLMD_QKERNEL=scalar|avx2|avxvnni|avx512|amx overrides). */
enum q_kernel q_kernel_selected(void);
const char *q_kernel_name(enum q_kernel kernel);
/* q_gemm with a given kernel (must be available). */
void q_gemm_with(enum q_kernel kernel, const q_linear *layer, const q_act *act, int m, float *y);

/* ------------------------------------------------------------ calibration */

/* Per-channel statistics of one layer's input over calibration tokens. */
typedef struct atom_calib atom_calib;

/* with_hessian: also accumulate X^T X (k*k floats) for GPTQ. */
atom_calib *atom_calib_create(int k, bool with_hessian);
void atom_calib_free(atom_calib *calib);
/* Adds m tokens of input x (m, k). */
void atom_calib_add(atom_calib *calib, const float *x, int m);
/* Mean squared activation per channel (k floats owned by calib, brought up
 * to date by every add). */
const float *atom_calib_mean_square(const atom_calib *calib);
/* X^T X / tokens (k*k, both triangles, owned by calib, brought up to date
 * by every add), or NULL without hessian. */
const float *atom_calib_hessian(const atom_calib *calib);
/* Tokens added so far. */
long long atom_calib_tokens(const atom_calib *calib);
/* Permutation (k entries): normal channels first in their original order,
 * then the n_outlier channels of largest mean square, in increasing order of
 * it (the largest last). perm[j] is the original channel at position j. */
void atom_outlier_permutation(const float *mean_square, int k, int n_outlier, int *perm);

#endif
