/*
 * util: the small pieces every module of llmd shares and none of them owns:
 * error codes, logging, clocks, allocation, CPU features, half-precision
 * conversion, a seeded random generator, and the OpenBLAS start-up fix.
 *
 * Errors are 0 or a negative errno value (-EINVAL, -ENOMEM, ...);
 * util_strerror() turns one into a message. Out-of-memory aborts.
 */
#ifndef LLMD_UTIL_H
#define LLMD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ errors */

/* Message for an error code (0 or -errno). Never NULL. */
const char *util_strerror(int code);

/* An invariant that stays checked in release builds. */
#define UTIL_CHECK(cond)                                                       \
    do {                                                                       \
        if (!(cond)) util_die("%s:%d: check failed: %s", __FILE__, __LINE__, #cond); \
    } while (0)

/* Print a message to stderr and abort. */
_Noreturn void util_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ----------------------------------------------------------------- logging */

enum util_log_level { UTIL_LOG_ERROR, UTIL_LOG_WARN, UTIL_LOG_INFO, UTIL_LOG_DEBUG };

/* Process-wide log settings. Messages above `level` are dropped; `json`
 * writes one JSON object a line instead of plain text. Not thread-safe to
 * change while other threads log; set once at start-up. */
void util_log_configure(enum util_log_level level, bool json);
/* Parses "error", "warn", "info" or "debug"; returns -EINVAL otherwise. */
int util_log_level_parse(const char *name, enum util_log_level *out);
void util_log(enum util_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool util_log_enabled(enum util_log_level level);

#define LOG_ERROR(...) util_log(UTIL_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) util_log(UTIL_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) util_log(UTIL_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) util_log(UTIL_LOG_DEBUG, __VA_ARGS__)

/* ------------------------------------------------------------------ clocks */

/* Monotonic seconds since an arbitrary origin. */
double util_now(void);

/* ------------------------------------------------------------- allocation */

/* malloc/calloc/realloc that abort with a message on out-of-memory. */
void *util_xmalloc(size_t size);
void *util_xcalloc(size_t count, size_t size);
void *util_xrealloc(void *ptr, size_t size);
char *util_xstrdup(const char *s);
/* A whole file (or FIFO) in a NUL-terminated buffer the caller frees; its
 * length in *len. NULL with errno set when it cannot be opened or read. */
char *util_read_file(const char *path, size_t *len);
/* 64-byte aligned, zeroed memory (a cache line, an AVX-512 register);
 * free with util_aligned_free. Aborts on out-of-memory. */
void *util_aligned_alloc(size_t size);
void util_aligned_free(void *ptr);

/* --------------------------------------------------------------- CPU/ISA */

struct util_cpu {
    bool avx2, fma, f16c;
    bool avxvnni; /* VNNI on ymm (cpuid 7.1 eax bit 4) */
    bool avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16, avx512fp16;
    bool amx_tile, amx_int8;
    bool amx_usable; /* the kernel granted the tile data permission */
};

/* The features of the CPU we run on, read once by cpuid. AMX permission is
 * requested from the kernel on the first call (arch_prctl). Set
 * LLMD_ISA=avx2 (or avx512) to cap what kernels may use, for testing and
 * for benchmarks that compare levels. */
const struct util_cpu *util_cpu(void);
/* True when AVX-512 F/BW/VL/DQ are all there (and not capped). */
bool util_cpu_has_avx512(void);
/* A short description like "avx2 fma avx512f ... amx-int8". */
const char *util_cpu_flags_string(void);
/* The CPU model name from /proc/cpuinfo, or "unknown". */
const char *util_cpu_model_name(void);

/* --------------------------------------------------------- half precision */

float util_f16_to_f32(uint16_t h);
uint16_t util_f32_to_f16(float f); /* round to nearest even */
float util_bf16_to_f32(uint16_t h);
uint16_t util_f32_to_bf16(float f); /* round to nearest even */

/* -------------------------------------------------------------------- rng */

/* xoshiro256** seeded by splitmix64: fast, reproducible for a given seed. */
struct util_rng {
    uint64_t s[4];
};
void util_rng_seed(struct util_rng *rng, uint64_t seed);
uint64_t util_rng_next(struct util_rng *rng);
/* Uniform in [0, 1). */
double util_rng_uniform(struct util_rng *rng);
/* Standard normal (Box-Muller). */
double util_rng_normal(struct util_rng *rng);

/* ------------------------------------------------------------ thread pool */

/* The threads that run a forward pass together (pool.c): the caller plus
 * n_threads - 1 workers. util_pool_run calls fn(ctx, ith, nth) on every
 * thread (the caller is ith 0) and returns when all have returned; inside
 * fn, util_pool_barrier waits until every thread has reached it (all must
 * call it the same number of times). One run at a time: a pool belongs to
 * the thread that runs it. Workers spin briefly between runs, then sleep. */
typedef struct util_pool util_pool;
typedef void util_pool_fn(void *ctx, int ith, int nth);
util_pool *util_pool_create(int n_threads);
void util_pool_free(util_pool *pool);
int util_pool_threads(const util_pool *pool);
void util_pool_run(util_pool *pool, util_pool_fn *fn, void *ctx);
void util_pool_barrier(util_pool *pool);
/* Part ith of nth of [0, n): [*begin, *end), parts differing by at most one. */
void util_split(int n, int ith, int nth, int *begin, int *end);

/* --------------------------------------------------------------- OpenBLAS */

/* The name of the kernel set OpenBLAS runs ("SkylakeX", "Haswell", ...).
 * At start-up (a constructor in startup.c) llmd re-executes itself with
 * OPENBLAS_CORETYPE set when OpenBLAS misdetected this CPU and would run
 * slow SSE3 kernels, and with a short OpenMP spin (GOMP_SPINCOUNT); see
 * startup.c. */
const char *util_blas_corename(void);
int util_blas_threads(void);

#endif
