/*
 * pim: a pool of simulated ReRAM processing-in-memory accelerators.
 *
 * The simulator is functional (the numbers the analog hardware produces,
 * with its converters, noise, faults and drift) and a cost model (cycles,
 * latency, energy by component, A/D and D/A conversions, crossbars, area).
 * Every random effect is drawn from counter-based streams keyed by a seed,
 * so a job with a seed is reproducible whatever the thread count.
 *
 * Layers of this header, bottom up:
 *   device      struct pim_device: crossbar, cells, converters,
 *               non-idealities, per-component latency/energy/area.
 *   cost        struct pim_cost: what a piece of work cost on a device.
 *   dataflows   ISAAC, CASCADE, Neural-PIM: where the analog/digital
 *               boundary sits (struct pim_dataflow, function pointers).
 *   matrices    pim_matrix: a weight matrix programmed onto crossbars, and
 *               the bit-sliced vector-matrix product through it.
 *   methods     high-precision solve/inversion (RePAST) and K-FAC, SME
 *               bit-sparse mapping, ADMM memristor-aware compression,
 *               dataflow evaluation of layer shapes, a linear layer.
 *   jobs        struct pim_job / struct pim_result: one unit of work, as
 *               plain C structs (server/pim_json.h converts from/to JSON).
 *   pool        pim_pool: N devices, a bounded queue, worker threads, a job
 *               table with expiry, cancellation, waiting, metrics.
 *
 * Errors are 0 or -errno (util_strerror); functions that fail on bad
 * arguments return -EINVAL and, where they take a `struct pim_error *`,
 * say which parameter and why. pim knows nothing of JSON or HTTP.
 *
 * Signed numbers on crossbars:
 *   weights  PIM_SIGNED_OFFSET: w + 2^(bits-1) stored unsigned (ISAAC), the
 *            offset removed digitally; optional ISAAC column flipping keeps
 *            a column's sum within half the ADC range.
 *            PIM_SIGNED_DIFFERENTIAL: |w| on a positive or a negative
 *            crossbar, currents subtracted before the ADC.
 *   inputs   two's complement, streamed over dac_bits-wide digits, least
 *            significant first; the top digit carries the sign (a 1-bit top
 *            digit is applied as 1 and subtracted in shift-and-add, a wider
 *            one needs a bipolar DAC and ADC).
 */
#ifndef LLMD_PIM_H
#define LLMD_PIM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ errors */

/* Where a request went wrong: `param` names the offending field (as the
 * job's JSON spells it, e.g. "device.adc_bits", "matrix"), `message` says
 * why. Filled by functions that validate; zero-initialise before use. */
struct pim_error {
    char param[64];
    char message[192];
};

/* ----------------------------------------------------------------- device */

enum pim_signed_mode { PIM_SIGNED_OFFSET, PIM_SIGNED_DIFFERENTIAL };

/* Read noise: sigma proportional to each cell's conductance, or a constant
 * sigma relative to g_on for every cell. */
enum pim_read_noise_model { PIM_READ_NOISE_PROPORTIONAL, PIM_READ_NOISE_ADDITIVE };

#define PIM_NAME_MAX 64

/* One simulated accelerator. Units: seconds, joules, watts, siemens, mm^2.
 * Conductances in the functional model are expressed in "levels": a cell
 * programmed to level k conducts g_off + k (g_on - g_off) / (2^cell_bits - 1). */
struct pim_device {
    char name[PIM_NAME_MAX];

    /* crossbars */
    int rows, cols;   /* size of one crossbar */
    int cell_bits;    /* bits per cell, 1..7 */
    double g_on;      /* highest conductance, 1 / R_on */
    double on_off;    /* g_on / g_off, > 1 */
    long n_crossbars; /* crossbars on the device; bigger matrices take passes */

    /* operands and converters */
    int weight_bits; /* weight precision, 2..32 */
    int input_bits;  /* input precision, 2..32 */
    enum pim_signed_mode signed_mode;
    int dac_bits;          /* input bits applied per read cycle, 1..8 */
    int adc_bits;          /* 0 = ideal converter (no quantisation, no clipping) */
    double adc_full_scale; /* in column-sum units (level x digit); 0 = one LSB per unit */
    bool adc_flip;         /* ISAAC: store a column inverted when its sum exceeds half */

    /* non-idealities (0 = off) */
    double prog_noise; /* programming sigma, fraction of g_on - g_off */
    double read_noise; /* sigma per read (see read_noise_model) */
    enum pim_read_noise_model read_noise_model;
    double stuck_on_rate;      /* fraction of cells stuck at g_on */
    double stuck_off_rate;     /* fraction of cells stuck at g_off */
    double drift_nu;           /* G(t) = G(t0) (t / t0)^-nu, t0 = 1 s */
    double drift_nu_std;       /* cell-to-cell spread of nu */
    double drift_time;         /* seconds since programming; <= 1 = no drift */
    double npim_sa_gain_error; /* Neural-PIM analog S+A/ADC transfer: relative gain error */
    double npim_sa_noise;      /* and noise, sigma as a fraction of the converter's full scale */
    double npim_full_scale;    /* Neural-PIM converter range: fraction of a column block's
                                  worst-case |sum w x| (a calibrated range clips the rare tail) */

    /* INV circuit (analog one-step solver, RePAST) */
    int inv_bits;           /* precision of its matrix, DAC and ADC */
    double inv_settle_time; /* one solve */
    double inv_opamp_power; /* per op-amp (one per row) */

    /* timing */
    double t_read;         /* one crossbar read cycle */
    double write_time_row; /* programming one crossbar row (write-verify) */

    /* power/energy and area per component */
    double adc_power, adc_rate, adc_area; /* one ADC at adc_ref_bits */
    int adc_ref_bits;                     /* the resolution the ADC figures are for */
    int adcs_per_crossbar;                /* ADCs shared by one crossbar's columns */
    double dac_power, dac_area;           /* one DAC (one per crossbar row) */
    double xbar_power, xbar_area;         /* one crossbar while read */
    double sa_power, sa_area;             /* one digital shift-and-add unit */
    double npim_sa_energy, npim_sa_area;  /* one analog S+A step, one unit (Neural-PIM) */
    double cascade_buffer_energy;         /* one analog partial-sum transfer (CASCADE) */
    double edram_energy, edram_bits;      /* one buffer access of edram_bits */
    double write_energy_cell;             /* programming one cell */

    /* the digital processor a job's work is compared with (K-FAC) */
    double digital_flops;       /* sustained FLOP/s */
    double digital_energy_flop; /* J per FLOP, memory traffic included */
};

/* The built-in ISAAC-like default: 128x128 crossbars, 2-bit cells, 1-bit DAC,
 * 8-bit ADC, 16-bit operands, offset weights with column flipping, ideal
 * cells (no noise), ISAAC's component figures (PAPERS.md). It equals
 * conf/pim/isaac.json. */
void pim_device_default(struct pim_device *dev);

/* Checks every field; returns 0 or -EINVAL with err naming the field
 * ("device.<field>"). */
int pim_device_validate(const struct pim_device *dev, struct pim_error *err);

/* True when no analog non-ideality is on (conductances are exact levels). */
bool pim_device_cells_ideal(const struct pim_device *dev);

/* Weight slices per value (cells per weight and polarity) and input cycles. */
int pim_device_weight_slices(const struct pim_device *dev);
int pim_device_input_cycles(const struct pim_device *dev);
/* Energy of one A/D conversion at the device's resolution. */
double pim_device_adc_energy(const struct pim_device *dev);

/* ------------------------------------------------------------------- cost */

enum pim_energy_part {
    PIM_E_CROSSBAR, /* array read currents */
    PIM_E_DAC,
    PIM_E_ADC,
    PIM_E_SHIFT_ADD,     /* digital shift-and-add */
    PIM_E_ANALOG_SA,     /* Neural-PIM analog shift-and-add */
    PIM_E_ANALOG_BUFFER, /* CASCADE analog partial-sum buffers */
    PIM_E_BUFFER,        /* eDRAM input/output buffers */
    PIM_E_WRITE,         /* programming cells */
    PIM_E_INV,           /* INV circuit op-amps */
    PIM_E_DIGITAL,       /* digital arithmetic of the job around the arrays */
    PIM_E_COUNT
};

/* Name of an energy part as reported ("adc", "crossbar", ...). */
const char *pim_energy_part_name(enum pim_energy_part part);

/* What some work cost. Counts are exact; energies and times are sums. */
struct pim_cost {
    uint64_t cycles; /* crossbar read cycles on the critical path */
    double latency;  /* seconds of simulated time */
    double energy[PIM_E_COUNT];
    uint64_t adc_conversions;
    uint64_t dac_conversions;
    uint64_t crossbar_reads; /* one crossbar activated for one cycle */
    uint64_t shift_adds;     /* digital shift-and-add operations */
    uint64_t analog_ops;     /* analog S+A steps or buffer transfers */
    uint64_t cell_writes;
    uint64_t inv_solves;
    uint64_t crossbars; /* crossbars the job mapped (one copy of each array) */
    uint64_t replicas;  /* copies of an array run side by side on spare crossbars
                           to take vectors (or INV solves) in parallel */
    uint64_t adcs;      /* ADCs the mapping needs to keep pace (all copies) */
    double area;        /* mm^2 of the arrays and periphery used (all copies) */
};

/* Total energy (J). */
double pim_cost_energy(const struct pim_cost *cost);
/* dst += src: counts, energies and latency add; crossbars, ADCs and area
 * add too (the parts were mapped side by side); replicas keeps the larger. */
void pim_cost_add(struct pim_cost *dst, const struct pim_cost *src);

/* -------------------------------------------------------------- dataflows */

enum pim_dataflow_kind { PIM_DF_ISAAC, PIM_DF_CASCADE, PIM_DF_NEURAL_PIM, PIM_DF_COUNT };

/* How many of each operation one input vector costs through an M x N
 * matrix mapped on a device, for one dataflow. */
struct pim_vmm_counts {
    int row_blocks;     /* ceil(N / rows) */
    int weight_slices;  /* S_w */
    int input_cycles;   /* S_i */
    uint64_t crossbars; /* row_blocks * ceil(M * S_w * polarities / cols) */
    uint64_t adc_conversions, dac_conversions, crossbar_reads, shift_adds, analog_ops;
    uint64_t cycles; /* read cycles per vector in a full pipeline */
    uint64_t depth;  /* extra cycles to drain the pipeline once */
};

struct pim_vmm_plan; /* engine internals (pim/pim_internal.h) */

/* A dataflow: where the partial sums of the crossbars are converted.
 *   ISAAC       every column of every crossbar, every input cycle:
 *               #A/D = M * S_w * S_i * ceil(N/R)
 *   CASCADE     partial sums of the ceil(N/R) crossbars of a column summed in
 *               analog buffers first: #A/D = M * S_w * S_i
 *   Neural-PIM  shift-and-add over slices and cycles in analog, one
 *               conversion per column per crossbar row block at the end:
 *               #A/D = M * ceil(N/R); its S+A/ADC circuits are modelled as a
 *               transfer function with gain error and noise.
 * The functions are the engine's: `counts` is the cost model, `reduce` and
 * `finish` the functional model (see pim_internal.h). */
struct pim_dataflow {
    enum pim_dataflow_kind kind;
    const char *name; /* "isaac", "cascade", "neural_pim" */
    void (*counts)(const struct pim_device *dev, int m, int n, struct pim_vmm_counts *out);
    void (*reduce)(const struct pim_vmm_plan *plan, void *tile);
    void (*finish)(const struct pim_vmm_plan *plan, void *tile);
};

const struct pim_dataflow *pim_dataflow_get(enum pim_dataflow_kind kind);
/* By name ("isaac", "cascade", "neural_pim"); NULL if unknown. */
const struct pim_dataflow *pim_dataflow_by_name(const char *name);

/* Cost of `vectors` input vectors through an M x N matrix with one dataflow
 * (the analytic model the functional simulator also reports), including
 * programming the matrix when `program` is set. */
void pim_vmm_cost(const struct pim_device *dev, const struct pim_dataflow *df, int m, int n,
                  uint64_t vectors, bool program, struct pim_cost *cost);

/* ------------------------------------------------------------ run context */

/* Per-job state threaded through the long functions: the seed, a stream
 * counter (so each programmed matrix and each product draws its own noise),
 * and the cancellation flag checked at every tile/iteration. */
struct pim_ctx {
    uint64_t seed;
    uint64_t stream;           /* next stream id; advanced by each use */
    const atomic_bool *cancel; /* may be NULL */
    int threads;               /* OpenMP threads; 0 = the runtime's default */
    /* Products whose every conversion is provably exact (ideal cells, one
     * LSB per unit and no column able to leave the ADC range) equal the
     * integer product bit for bit; they are computed as such unless this is
     * set (benchmarks of the bit-sliced engine set it). Costs are the same. */
    bool no_exact_shortcut;
};

void pim_ctx_init(struct pim_ctx *ctx, uint64_t seed);
/* True once cancellation was requested. */
bool pim_ctx_cancelled(const struct pim_ctx *ctx);

/* --------------------------------------------------------------- matrices */

/* A weight matrix programmed onto crossbars. */
typedef struct pim_matrix pim_matrix;

/* Symmetric quantisation of n values to `bits` (two's complement range
 * +-(2^(bits-1) - 1)); q receives the integers, the return value is the
 * scale (value = q * scale; 0 when all inputs are 0). */
double pim_quantize(const float *x, size_t n, int bits, int32_t *q);

/* Programs the integer matrix wq (m x n, row-major, |wq| < 2^(weight_bits-1))
 * onto crossbars of dev: encodes signs, slices bits over cells, draws the
 * programming noise, faults and drift of the cells from ctx. `scale` is the
 * value of one integer step (for float results). Returns 0, -EINVAL (bad
 * sizes or values), -E2BIG (over 2^28 stored cells) or -ECANCELED. *out is
 * freed with pim_matrix_free. */
int pim_matrix_program_q(const struct pim_device *dev, struct pim_ctx *ctx, const int32_t *wq,
                         int m, int n, double scale, pim_matrix **out);
/* The same for a float matrix, quantised per tensor to dev->weight_bits. */
int pim_matrix_program(const struct pim_device *dev, struct pim_ctx *ctx, const float *w, int m,
                       int n, pim_matrix **out);
void pim_matrix_free(pim_matrix *mat);
int pim_matrix_rows(const pim_matrix *mat);
int pim_matrix_cols(const pim_matrix *mat);
/* The quantised weights (m x n) and their scale; valid until free. */
const int32_t *pim_matrix_weights_q(const pim_matrix *mat);
double pim_matrix_scale(const pim_matrix *mat);
/* Programming cost (cell writes, energy, latency) of this matrix. */
void pim_matrix_program_cost(const pim_matrix *mat, struct pim_cost *cost);

/* The bit-sliced product through the crossbars in integer units:
 * acc (batch x m) ~= xq (batch x n) * wq^T, exactly equal on an ideal device
 * whose ADC does not clip. |xq| < 2^(input_bits-1). Adds the cost of the
 * reads to *cost (not the programming). Returns 0, -EINVAL or -ECANCELED. */
int pim_matrix_vmm_q(pim_matrix *mat, const struct pim_dataflow *df, struct pim_ctx *ctx,
                     const int32_t *xq, int batch, double *acc, struct pim_cost *cost);
/* Calibrates the ISAAC converter's range per weight slice on sample inputs
 * (batch x n floats, quantised like products' inputs): the full scale of
 * slice s becomes the largest |column value| the samples drive on it, for
 * unipolar and bipolar cycles apart (CrossSim's calibrated ADC ranges).
 * Later products through mat use these ranges instead of adc_full_scale.
 * Returns 0, -EINVAL or -ECANCELED. */
int pim_matrix_calibrate_adc(pim_matrix *mat, struct pim_ctx *ctx, const float *x, int batch);

/* True when products through mat with df are exact whatever the inputs. */
bool pim_matrix_product_exact(const pim_matrix *mat, const struct pim_dataflow *df);
/* The same for float inputs (batch x n), each vector quantised with its own
 * scale to input_bits; y (batch x m) = x W^T in float. */
int pim_matrix_vmm(pim_matrix *mat, const struct pim_dataflow *df, struct pim_ctx *ctx,
                   const float *x, int batch, float *y, struct pim_cost *cost);

/* A linear layer y (m x n) = x (m x k) W^T (W is n x k) through the
 * simulated crossbars: programs W, runs the product, adds programming and
 * read cost to *cost. For running chosen LLM layers on the device. */
int pim_linear(const struct pim_device *dev, const struct pim_dataflow *df, struct pim_ctx *ctx,
               const float *x, int m, const float *w, int n, int k, float *y,
               struct pim_cost *cost);

/* ------------------------------------------------- high-precision solving */

/* RePAST: an INV crossbar holding A_H (A at inv_bits, with the device's
 * programming noise) solves in one analog step to about inv_bits accuracy;
 * VMM crossbars holding A bit-sliced at residual_bits compute residuals
 * r = b - A x; iterative refinement x += INV(r) corrects x. Where the
 * correction alone does not contract (cond(A) * 2^-inv_bits near 1 and
 * above), each refinement step solves for its correction by flexible GMRES
 * preconditioned by the INV circuit (GMRES-IR), still with INV solves and
 * crossbar products only. */
struct pim_solve_options {
    bool refine;        /* false: the plain one-step INV solve */
    int max_iterations; /* refinement steps (outer), default 10 */
    int inner_max;      /* INV-preconditioned steps per refinement, default 40 */
    double tolerance;   /* stop when a correction is below tolerance ||x||
                           (or the residual stops shrinking); default 2^-18 */
    int residual_bits;  /* precision of A and x on the VMM crossbars, default 32 */
};

void pim_solve_options_default(struct pim_solve_options *opt);

struct pim_solve_stats {
    int iterations;   /* refinement steps taken */
    int inv_solves;   /* INV circuit solves */
    int vmm_products; /* residual/Krylov products on VMM crossbars */
    double residual;  /* final ||b - A x|| / ||b|| in float64 */
    double rcond;     /* A's reciprocal condition number (1-norm, float64) */
    bool converged;   /* refined, and residual <= tolerance */
};

/* The largest system pim_solve takes (its INV circuit is simulated by a
 * dense LU). */
#define PIM_SOLVE_MAX_N 2048

/* Solves A X = B for A (n x n, float64, row-major, n <= PIM_SOLVE_MAX_N)
 * and k right-hand sides B (n x k, row-major); X (n x k). Right-hand sides
 * are refined 64 at a time. Returns 0, -EINVAL, -ECANCELED, -EDOM when A
 * is singular to working precision (stats->rcond < DBL_EPSILON) or its INV
 * mapping is singular, or -ERANGE when the result is not finite. A solve
 * whose refinement stalls above the tolerance returns 0 with
 * stats->converged false. */
int pim_solve(const struct pim_device *dev, struct pim_ctx *ctx, const double *a, int n,
              const double *b, int k, const struct pim_solve_options *opt, double *x,
              struct pim_solve_stats *stats, struct pim_cost *cost);

/* A^-1 (n x n) by solving A X = I. */
int pim_invert(const struct pim_device *dev, struct pim_ctx *ctx, const double *a, int n,
               const struct pim_solve_options *opt, double *inv, struct pim_solve_stats *stats,
               struct pim_cost *cost);

/* One K-FAC preconditioning step for a linear layer with weight gradient
 * grad (d_out x d_in): factors A = a^T a / B + sqrt(damping) I (d_in x d_in)
 * and G = g^T g / B + sqrt(damping) I (d_out x d_out) from the activations
 * a (B x d_in) and output gradients g (B x d_out); the preconditioned
 * gradient G^-1 grad A^-1 (d_out x d_in) by high-precision solves on the
 * device. `digital` receives the cost of the same work (factor products,
 * Cholesky, triangular solves) on the device's reference digital processor. */
int pim_kfac_step(const struct pim_device *dev, struct pim_ctx *ctx, const float *act,
                  const float *out_grad, int batch, int d_in, int d_out, const float *grad,
                  double damping, const struct pim_solve_options *opt, float *precond,
                  struct pim_solve_stats *stats, struct pim_cost *cost, struct pim_cost *digital);

/* -------------------------------------------------------------------- SME */

/* SME bit-sparse mapping of a quantised matrix: weights in sign-magnitude,
 * each magnitude slice (cell_bits wide) and sign is a plane; columns of all
 * planes, high planes first, are grouped by crossbar width; all-zero columns
 * and, within a group, all-zero rows are squeezed out and the survivors
 * packed, with index tables routing inputs to rows and columns to outputs.
 * Crossbars left empty are released. */
typedef struct pim_sme pim_sme;

struct pim_sme_stats {
    uint64_t
        crossbars_baseline; /* ceil(N/R) ceil(2 M S_w / C), the same cells and signs unsqueezed */
    uint64_t crossbars_offset; /* ceil(N/R) ceil(M S_w' / C) of the offset (ISAAC) mapping */
    uint64_t crossbars_sme;    /* after squeeze-out */
    uint64_t zero_columns;     /* plane columns squeezed out */
    uint64_t zero_rows;        /* group rows squeezed out */
    double bit_density;        /* non-zero bits / all magnitude bits */
};

/* Maps wq (m x n) whose values fit weight_bits (|wq| < 2^(weight_bits-1)).
 * Returns 0 or -EINVAL. */
int pim_sme_map(const struct pim_device *dev, const int32_t *wq, int m, int n, int weight_bits,
                pim_sme **out, struct pim_sme_stats *stats);
void pim_sme_free(pim_sme *sme);
/* acc (batch x m) = xq (batch x n) wq^T through the packed crossbars with
 * the device's DAC/ADC (ISAAC dataflow, column flipping): exact for an ideal
 * converter or one that does not clip. Adds cost. */
int pim_sme_vmm_q(const pim_sme *sme, struct pim_ctx *ctx, const int32_t *xq, int batch,
                  double *acc, struct pim_cost *cost);
/* Programming cost of the packed crossbars. */
void pim_sme_program_cost(const pim_sme *sme, struct pim_cost *cost);
/* SME's bit-sparsity orchestration: rounds each value to the nearest one
 * with at most max_bits non-zero magnitude bits (0 = unchanged; magnitudes
 * of up to 16 bits). */
void pim_sme_requantize(int32_t *wq, size_t count, int weight_bits, int max_bits);

/* ------------------------------------------------------------------- ADMM */

/* Memristor-aware compression of W (rows x cols) for the least-squares
 * objective f(W) = ||X W^T - Y||^2 / (2 samples) with inputs X (samples x
 * cols) and targets Y (samples x rows): at most `keep_blocks` non-zero
 * crossbar-aligned blocks (block_rows x block_cols) and values on the
 * `levels` conductance levels of a differential cell pair (2 levels - 1
 * signed values times a scale). ADMM: W-step gradient descent on
 * f + rho/2 ||W - Z + U||^2, Z-step projection, U += W - Z; then masked
 * retraining; then evaluation with device mismatch G (1 + N(0, sigma)). */
struct pim_admm_options {
    int block_rows, block_cols;
    double keep_ratio;     /* fraction of blocks kept, (0, 1] */
    int levels;            /* conductance levels per cell, >= 2 */
    double rho;            /* default 1e-2 relative to the objective's curvature */
    int iterations;        /* ADMM iterations, default 30 */
    int w_steps;           /* gradient steps per W-step, default 20 */
    int retrain_steps;     /* masked retraining steps, default 100 */
    double mismatch_sigma; /* device mismatch for the evaluation, default 0.05 */
    int mismatch_trials;   /* default 8 */
};

void pim_admm_options_default(struct pim_admm_options *opt);

struct pim_admm_stats {
    int blocks_total, blocks_kept;
    double compression_ratio; /* dense weights / non-zero weights */
    double error_before;      /* relative error ||X W^T - Y|| / ||Y|| of the given W */
    double error_pruned;      /* after ADMM projection, before retraining */
    double error_after;       /* the compressed W */
    double error_mismatch;    /* the compressed W under device mismatch (mean) */
    double scale;             /* weight value of one level step */
    uint64_t crossbars_dense, crossbars_kept, crossbars_freed;
    double power_dense, power_kept; /* W of the arrays and their converters while read */
    double area_dense, area_kept;   /* mm^2 */
};

/* The widest W pim_admm_compress takes (it keeps X^T X, cols x cols). */
#define PIM_ADMM_MAX_COLS 4096

int pim_admm_compress(const struct pim_device *dev, struct pim_ctx *ctx, const float *w, int rows,
                      int cols, const float *x, const float *y, int samples,
                      const struct pim_admm_options *opt, float *w_out,
                      struct pim_admm_stats *stats, struct pim_cost *cost);

/* ------------------------------------------------------- dataflow reports */

struct pim_layer_shape {
    int in, out;    /* fan-in N and outputs M of the layer */
    uint64_t count; /* input vectors through it (tokens x repeats, or output pixels) */
};

struct pim_dataflow_report {
    enum pim_dataflow_kind kind;
    struct pim_cost cost;
    double throughput;         /* vectors per second in a full pipeline */
    double throughput_per_mm2; /* the same per mm^2 of arrays and converters */
    double energy_per_vector;  /* J */
};

/* Cost of all layers under one dataflow, weights resident: each matrix on
 * crossbars of its own (as many as it needs, whatever n_crossbars says),
 * programming not counted; crossbars, ADCs and area: the largest layer's. */
void pim_dataflow_evaluate(const struct pim_device *dev, const struct pim_dataflow *df,
                           const struct pim_layer_shape *layers, int n_layers,
                           struct pim_dataflow_report *report);

/* ------------------------------------------------------------------- jobs */

enum pim_job_type {
    PIM_JOB_VMM,
    PIM_JOB_SOLVE,
    PIM_JOB_INVERT,
    PIM_JOB_KFAC_STEP,
    PIM_JOB_SME_MAP,
    PIM_JOB_ADMM_COMPRESS,
    PIM_JOB_DATAFLOW_EVAL,
    PIM_JOB_TYPE_COUNT
};

/* "vmm", "solve", ...; NULL for an out-of-range value. */
const char *pim_job_type_name(enum pim_job_type type);
/* Returns 0 and sets *type, or -EINVAL for an unknown name. */
int pim_job_type_parse(const char *name, enum pim_job_type *type);

#define PIM_TENSOR_MAX_DIMS 4

/* A float tensor, row-major. ndim 0 = absent. The job owns data. */
struct pim_tensor {
    int ndim;
    int64_t shape[PIM_TENSOR_MAX_DIMS];
    float *data;
};

size_t pim_tensor_count(const struct pim_tensor *t);
/* Allocates zeroed data for the given shape (aborts on OOM). */
void pim_tensor_alloc(struct pim_tensor *t, int ndim, const int64_t *shape);
void pim_tensor_free(struct pim_tensor *t);

/* One job. Tensors and `layers` are owned by the job (pim_job_free).
 *   vmm            matrix (M x N), input (N or B x N), calibrate_adc (calibrate
 *                  the converter ranges per slice on the input first)
 *   solve          matrix A (n x n), rhs b (n or n x k), solve options
 *   invert         matrix A, solve options
 *   kfac_step      activations (B x d_in), output_grads (B x d_out),
 *                  grad (d_out x d_in), damping, solve options
 *   sme_map        matrix W, weight_bits, sme_max_bits, optional input
 *   admm_compress  matrix W, inputs X, targets Y, admm options
 *   dataflow_eval  layers, dataflows (bit mask of 1 << kind)
 * Every type runs on `device`; vmm's products go through `dataflow`, the
 * others' ISAAC-style (solve's residuals need exact conversions). */
struct pim_job {
    enum pim_job_type type;
    struct pim_device device;
    enum pim_dataflow_kind dataflow;
    uint64_t seed;

    struct pim_tensor matrix, input, rhs;
    struct pim_tensor activations, output_grads, grad;
    struct pim_tensor inputs, targets;

    bool calibrate_adc;
    struct pim_solve_options solve;
    double damping;
    int weight_bits, sme_max_bits;
    struct pim_admm_options admm;
    struct pim_layer_shape *layers;
    int n_layers;
    unsigned dataflows;

    int threads; /* OpenMP threads the job may use; 0 = the runtime's default */
};

/* Defaults for every field (the default device, ISAAC, seed 0, default
 * options); tensors absent. */
void pim_job_init(struct pim_job *job, enum pim_job_type type);
/* Checks shapes, sizes and values (NaN/Inf) of a job; 0 or -EINVAL with err. */
int pim_job_validate(const struct pim_job *job, struct pim_error *err);
/* Frees the tensors and layers (not the struct itself). */
void pim_job_free(struct pim_job *job);

/* What a finished job produced. rel_l2_vs_fp64 compares `output` with the
 * same computation in float64 on the unquantised operands:
 *   vmm, sme_map   W x;  solve, invert, kfac_step  the LAPACK solution;
 *   admm_compress  predictions X W_c^T against X W^T of the given W. */
struct pim_result {
    struct pim_tensor output; /* ndim 0 when the job has none */
    double rel_l2_vs_fp64;    /* NaN where it does not apply */
    struct pim_cost cost;
    int iterations; /* solve/invert/kfac: refinement steps */
    struct pim_solve_stats solve;
    double plain_rel_l2;     /* solve/invert: the plain INV solve's error */
    struct pim_cost digital; /* kfac_step: the same work done digitally */
    struct pim_sme_stats sme;
    struct pim_admm_stats admm;
    struct pim_dataflow_report reports[PIM_DF_COUNT];
    int n_reports;
};

void pim_result_free(struct pim_result *res);

/* Runs a validated job to completion on the calling thread. Returns 0 and
 * fills *res (the caller frees it with pim_result_free), -ECANCELED when
 * ctx's flag was raised, or another -errno with err saying why. */
int pim_job_run(const struct pim_job *job, const atomic_bool *cancel, struct pim_result *res,
                struct pim_error *err);

/* ------------------------------------------------------------------- pool */

enum pim_job_status {
    PIM_STATUS_QUEUED,
    PIM_STATUS_RUNNING,
    PIM_STATUS_DONE,
    PIM_STATUS_FAILED,
    PIM_STATUS_CANCELLED,
    PIM_STATUS_COUNT
};

/* "queued", "running", "done", "failed", "cancelled". */
const char *pim_job_status_name(enum pim_job_status status);

typedef struct pim_pool pim_pool;

/* What a finished job hands to the completion callback (and to metrics). */
struct pim_completion {
    uint64_t id;
    enum pim_job_type type;
    enum pim_job_status status;
    double queue_seconds; /* submit to start */
    double run_seconds;   /* start to finish */
    double energy;        /* simulated J */
    uint64_t adc_conversions;
};

struct pim_pool_config {
    int n_devices;            /* simulated devices = worker threads, default 2 */
    int queue_capacity;       /* queued jobs before submit says -EAGAIN, default 64 */
    double result_ttl;        /* seconds a finished job stays readable, default 600 */
    int threads_per_job;      /* OpenMP threads a job may use, 0 = cores / devices */
    uint64_t first_id;        /* the first job's id (then +1 a job); 0 = 1 */
    struct pim_device device; /* what the devices are (for the listing) */
    /* Called on the worker thread when a job finishes, fails or is
     * cancelled while running (and on the cancelling thread for a queued
     * job). Must be quick and thread-safe (uv_async_send is). */
    void (*on_complete)(const struct pim_completion *done, void *user);
    void *user;
};

void pim_pool_config_default(struct pim_pool_config *cfg);

/* Starts the workers. Returns 0 or -EINVAL; *out freed by pim_pool_destroy,
 * which cancels running jobs, drops queued ones and joins the workers. */
int pim_pool_create(const struct pim_pool_config *cfg, pim_pool **out);
void pim_pool_destroy(pim_pool *pool);

/* Queues a job. The pool takes ownership of *job's contents on success (the
 * struct is copied; the caller must not free its tensors), not on failure.
 * Returns 0 and the id, -EAGAIN when the queue is full (answer 429 with
 * Retry-After), -EINVAL for an invalid job (err says why), -ESHUTDOWN when
 * the pool is being destroyed. */
int pim_pool_submit(pim_pool *pool, struct pim_job *job, uint64_t *id, struct pim_error *err);

/* A snapshot of a job, taken under a reference: while the view is held the
 * record is not freed and `result`/`error` (set once finished) do not
 * change. Release every acquired view with pim_pool_release. */
struct pim_job_view {
    uint64_t id;
    enum pim_job_type type;
    enum pim_job_status status;
    int device;                          /* the device that ran it, -1 if none yet */
    double submitted, started, finished; /* util_now() clock; 0 if not yet */
    const struct pim_result *result;     /* status done: the result, else NULL */
    int error_code;                      /* status failed: -errno */
    const struct pim_error *error;       /* status failed: why */
    void *ref;                           /* the pool's record */
};

/* Fills *view and returns 0, or -ENOENT (unknown or expired id). */
int pim_pool_acquire(pim_pool *pool, uint64_t id, struct pim_job_view *view);
void pim_pool_release(pim_pool *pool, struct pim_job_view *view);

/* Blocks until the job is finished (done/failed/cancelled) or `timeout`
 * seconds pass. Returns 0 when finished, -ETIMEDOUT, or -ENOENT. */
int pim_pool_wait(pim_pool *pool, uint64_t id, double timeout);

/* Cancels a job: a queued one is dropped at once, a running one stops at its
 * next check point. Returns 0, -ENOENT, or -EALREADY when it had finished. */
int pim_pool_cancel(pim_pool *pool, uint64_t id);

/* One device's state for GET /v1/pim/devices. */
struct pim_device_info {
    int index;
    char name[PIM_NAME_MAX];
    bool busy;
    uint64_t current_job; /* 0 when idle */
    uint64_t jobs_done;
    double busy_seconds; /* wall time spent running jobs */
    double energy;       /* simulated J of its jobs */
};

/* Copies up to max entries; returns the number of devices. */
int pim_pool_devices(pim_pool *pool, struct pim_device_info *out, int max);

/* Counters for /metrics. */
struct pim_pool_stats {
    uint64_t submitted[PIM_JOB_TYPE_COUNT];
    uint64_t finished[PIM_JOB_TYPE_COUNT][PIM_STATUS_COUNT]; /* done/failed/cancelled */
    uint64_t rejected_full;                                  /* submits answered -EAGAIN */
    double energy;                                           /* simulated J of all finished jobs */
    uint64_t adc_conversions;
    int busy_devices, n_devices;
    int queue_length, queue_capacity;
    int jobs_in_table;
};

void pim_pool_stats(pim_pool *pool, struct pim_pool_stats *stats);

/* Drops finished jobs older than result_ttl now (done on every submit and
 * acquire too). */
void pim_pool_expire(pim_pool *pool);

/* The device configuration the pool's devices were created with. */
const struct pim_device *pim_pool_device_config(const pim_pool *pool);

#endif
