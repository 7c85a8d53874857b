/*
 * pim_internal.h: what the files of pim/ share and nobody else sees: the
 * programmed-matrix layout, the product engine's plan and tiles (the
 * interface between the engine and the dataflows), the crossbar kernels and
 * the counter-based random streams.
 */
#ifndef LLMD_PIM_INTERNAL_H
#define LLMD_PIM_INTERNAL_H

#include "pim/pim.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ----------------------------------------------------------------- limits */

#define PIM_GROUP        32 /* output columns one kernel call covers */
#define PIM_MAX_SLICES   32 /* weight slices (32 bits over 1-bit cells) */
#define PIM_MAX_CYCLES   32 /* input cycles (32 bits over a 1-bit DAC) */
#define PIM_TILE_VECTORS 64 /* input vectors one engine tile covers */
#define PIM_MAX_CELLS    (1LL << 31)

static inline int pim_ceil_div(long a, long b)
{
    return (int)((a + b - 1) / b);
}

/* OpenMP threads for work of ctx (1 in builds without OpenMP, e.g. fuzzing). */
static inline int pim_threads(const struct pim_ctx *ctx)
{
#ifdef _OPENMP
    return ctx->threads > 0 ? ctx->threads : omp_get_max_threads();
#else
    (void)ctx;
    return 1;
#endif
}

/* ---------------------------------------------------------- random streams */

/* Counter-based streams: sample i of stream `key` depends only on (key, i),
 * so work split over threads or tiles draws the same numbers. */
uint64_t pim_key(uint64_t a, uint64_t b, uint64_t c, uint64_t d);

/* Uniform in (0, 1] as float; standard normal by Box-Muller (float,
 * |z| <= 5.8). first + n must stay below 2^33. */
void pim_rng_uniform(uint64_t key, uint64_t first, float *out, size_t n);
void pim_rng_normal(uint64_t key, uint64_t first, float *out, size_t n);

/* The implementations, for tests that compare them. */
enum pim_isa { PIM_ISA_SCALAR, PIM_ISA_AVX2, PIM_ISA_AVX512, PIM_ISA_COUNT };
bool pim_isa_available(enum pim_isa isa);
const char *pim_isa_name(enum pim_isa isa);
void pim_rng_normal_with(enum pim_isa isa, uint64_t key, uint64_t first, float *out, size_t n);
void pim_rng_normal_avx512(uint64_t key, uint64_t first, float *out, size_t n);
void pim_rng_normal_avx2(uint64_t key, uint64_t first, float *out, size_t n);
void pim_rng_normal_scalar(uint64_t key, uint64_t first, float *out, size_t n);

/* The 32-bit mixer and the uniform both versions share, bit for bit. */
static inline uint32_t pim_mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* The pair of 32-bit words behind samples 2k and 2k+1 of stream key. */
static inline void pim_rng_words(uint64_t key, uint32_t k, uint32_t *u1, uint32_t *u2)
{
    uint32_t a = (uint32_t)key, b = (uint32_t)(key >> 32);
    *u1 = pim_mix32(pim_mix32(k ^ a) + b);
    *u2 = pim_mix32(pim_mix32(k + b) ^ a ^ 0x9e3779b9u);
}

/* (0, 1]: 24 bits. */
static inline float pim_word_to_unit(uint32_t w)
{
    return (float)((w >> 8) + 1) * 0x1p-24f;
}

/* The engine run that records column ranges (pim_matrix_calibrate_adc). */
extern const struct pim_dataflow pim_calibration_dataflow;

/* ---------------------------------------------------------------- kernels */

/* Column sums of one weight plane over an m-group of PIM_GROUP columns.
 *   int8:  lv [nb][r4/4][PIM_GROUP][4] uint8 levels; d [nt][ld] int8 digits,
 *          block b's rows at d + b*r4;  p [nt][nb][PIM_GROUP] = sums.
 *   float: g [nb][r4][PIM_GROUP] conductances in level units; d [nt][ld];
 *          p as above; q (may be NULL) = sums of (g + off)^2 d^2 (read noise).
 * r4 is a multiple of 4. Sums are exact in float for the int8 kernel. */
typedef void (*pim_kernel_i8_fn)(const uint8_t *lv, const int8_t *d, int ld, int nt, int nb, int r4,
                                 float *p);
typedef void (*pim_kernel_f32_fn)(const float *g, const float *d, int ld, int nt, int nb, int r4,
                                  float off, float *p, float *q);

/* Levels of exact cells are stored packed, `pack` (2 or 4) per byte: chunk
 * k of 128 bytes holds row groups k*pack + q (q < pack) of the int8 layout
 * above, group q in bits [q*w, q*w + w), w = 8 / pack. Unpacking restores
 * n_chunks * pack row groups of 128 bytes. */
typedef void (*pim_unpack_fn)(const uint8_t *packed, int pack, size_t n_chunks, uint8_t *out);

struct pim_kernels {
    pim_kernel_i8_fn i8;
    pim_kernel_f32_fn f32;
    pim_unpack_fn unpack;
};

/* The kernels of one ISA (must be available), and the best available one
 * (LLMD_ISA caps it, see util.h). */
const struct pim_kernels *pim_kernels_for(enum pim_isa isa);
enum pim_isa pim_isa_selected(void);

void pim_kernel_i8_scalar(const uint8_t *lv, const int8_t *d, int ld, int nt, int nb, int r4,
                          float *p);
void pim_kernel_f32_scalar(const float *g, const float *d, int ld, int nt, int nb, int r4,
                           float off, float *p, float *q);
void pim_unpack_scalar(const uint8_t *packed, int pack, size_t n_chunks, uint8_t *out);
void pim_unpack_avx2(const uint8_t *packed, int pack, size_t n_chunks, uint8_t *out);
void pim_unpack_avx512(const uint8_t *packed, int pack, size_t n_chunks, uint8_t *out);
void pim_kernel_i8_avx2(const uint8_t *lv, const int8_t *d, int ld, int nt, int nb, int r4,
                        float *p);
void pim_kernel_f32_avx2(const float *g, const float *d, int ld, int nt, int nb, int r4, float off,
                         float *p, float *q);
void pim_kernel_i8_avx512(const uint8_t *lv, const int8_t *d, int ld, int nt, int nb, int r4,
                          float *p);
void pim_kernel_f32_avx512(const float *g, const float *d, int ld, int nt, int nb, int r4,
                           float off, float *p, float *q);

/* ------------------------------------------------------- programmed matrix */

struct pim_matrix {
    struct pim_device dev;
    int m, n;
    double scale; /* value of one integer weight step */
    int32_t *wq;  /* (m x n) quantised weights */

    int slices;       /* S_w */
    int polarities;   /* 1 offset, 2 differential */
    int stored;       /* planes stored per slice: 2 for differential float cells; 1 for
                         offset, and for differential exact cells, fused as
                         l+ - l- + (levels - 1) (the bias removed with the digit sums) */
    int levels;       /* 2^cell_bits */
    int nb, r4;       /* row blocks, rows per block padded to 4 * pack */
    int groups;       /* m-groups of PIM_GROUP columns */
    int pack;         /* levels per byte of lv (1, 2 or 4) */
    int64_t offset;   /* offset-mode bias 2^(weight_bits-1), else 0 */
    bool exact_cells; /* integer levels (int8 kernel), else float */
    float level_off;  /* g_off in level units (read noise) */

    /* cells, plane (s, p) then m-group: packed int8 lv or float g, see kernels */
    uint8_t *lv;
    float *g;
    size_t plane_group_cells; /* cells of one (plane, m-group): nb * r4 * PIM_GROUP */
    size_t plane_group_bytes; /* their bytes in lv: cells / pack */
    uint8_t *flip;            /* [s][nb][groups*PIM_GROUP]: column stored inverted */

    /* Neural-PIM converter per (block, column): full scale and gain */
    double *npim_fs;  /* [nb][groups*PIM_GROUP] */
    float *npim_gain; /* [nb][groups*PIM_GROUP] */

    double *adc_range; /* [slices][2] calibrated full scale (unipolar, bipolar) or NULL */

    uint64_t stream;   /* key of this matrix's read-noise streams */
    uint64_t products; /* products run so far (each draws new noise) */
    struct pim_cost program_cost;
};

/* ------------------------------------------------------------ engine plan */

/* One product call: fixed for all tiles. */
struct pim_vmm_plan {
    const struct pim_matrix *mat;
    const struct pim_device *dev;
    int cycles;                           /* S_i */
    bool top_negated;                     /* 1-bit top digit applied as 1, subtracted */
    double step_unsigned[PIM_MAX_SLICES]; /* ISAAC converter LSB per slice, unipolar */
    double step_signed[PIM_MAX_SLICES];   /* and bipolar */
    uint64_t noise_key;                   /* the random streams of this call */
    double *calibration; /* [slices][2] largest |column value| (calibration runs) */
};

/* One tile of the engine: vectors [t0, t0+nt) x the PIM_GROUP columns of
 * m-group `group` (first column c0). For each (cycle j, slice s) the engine
 * fills p with the analog column values as read (positive minus negative
 * plane, read noise included) and calls the dataflow's reduce; after all
 * (j, s) it calls finish, which writes the tile's part of acc. */
struct pim_vmm_tile {
    int t0, nt;           /* vectors */
    int group, c0, width; /* m-group, its first column, real columns in it */
    int j, s;             /* current cycle and slice */
    double weight;        /* +-2^(j dac_bits + s cell_bits) */
    bool adc_signed;      /* this cycle's column values can be negative */
    const float *p;       /* [nt][nb][PIM_GROUP] column values */
    const float *dsum;    /* [nt][nb] digit sums of this cycle (un-flipping) */
    const double *xsum;   /* [nt][nb] input sums per row block (offset removal) */
    double *y;            /* [nt][PIM_GROUP] digital accumulators, zeroed */
    double *analog;       /* [nt][nb][PIM_GROUP] analog accumulators, zeroed */
    float *noise;         /* PIM_GROUP floats of scratch */
    double *acc;          /* (batch x m) results */
};

/* The flags of the columns of tile's m-group stored inverted for slice s
 * and row block b (PIM_GROUP bytes, all 0 when none is). */
extern const uint8_t pim_no_flips[PIM_GROUP];
static inline const uint8_t *pim_tile_flips(const struct pim_vmm_plan *plan,
                                            const struct pim_vmm_tile *tile, int b)
{
    const struct pim_matrix *mat = plan->mat;
    if (!mat->flip) return pim_no_flips;
    size_t width = (size_t)mat->groups * PIM_GROUP;
    return mat->flip + ((size_t)tile->s * mat->nb + b) * width + tile->c0;
}

/* A converter: rounds to a multiple of step, codes clamped to
 * [-max_code, max_code] when signed, [0, max_code] otherwise, with
 * max_code = 2^(bits-1) - 1 or 2^bits - 1; bits 0 = ideal. */
struct pim_adc {
    int bits;
    double step, inv_step, lo, hi; /* hi, lo: the extreme codes */
};

static inline struct pim_adc pim_adc_make(int bits, double step, bool is_signed)
{
    struct pim_adc a = {.bits = bits, .step = step, .inv_step = 1 / step};
    a.hi = bits == 0   ? 0
           : is_signed ? (double)((1u << (bits - 1)) - 1)
                       : (double)((1u << bits) - 1);
    a.lo = is_signed ? -a.hi : 0;
    return a;
}

static inline double pim_adc_convert(const struct pim_adc *a, double v)
{
    if (a->bits == 0) return v;
    double code = __builtin_floor(v * a->inv_step + 0.5);
    code = code < a->lo ? a->lo : code;
    code = code > a->hi ? a->hi : code;
    return code * a->step;
}

/* ------------------------------------------------------------ cost helpers */

/* Adds the cost of `vectors` vectors for counts c on dev to *cost. */
void pim_cost_add_reads(const struct pim_device *dev, const struct pim_dataflow *df,
                        const struct pim_vmm_counts *c, int m, int n, uint64_t vectors,
                        struct pim_cost *cost);
/* Programming cost of `cells` cells on `crossbars` crossbars. */
void pim_cost_add_program(const struct pim_device *dev, uint64_t cells, uint64_t crossbars,
                          struct pim_cost *cost);
/* Digital work: flops on the reference processor, as PIM_E_DIGITAL energy
 * and latency. */
void pim_cost_add_digital(const struct pim_device *dev, double flops, struct pim_cost *cost);

/* pim_quantize for double values. */
double pim_quantize_d(const double *x, size_t n, int bits, int32_t *q);

/* Relative L2 error ||a - b|| / ||b|| (0 when both are 0). */
double pim_rel_l2(const double *a, const double *b, size_t n);
double pim_rel_l2_f(const float *a, const double *b, size_t n);

#endif
