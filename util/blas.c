/*
 * blas.c: keep OpenBLAS on its fast kernels.
 *
 * Debian's OpenBLAS 0.3.21 does not recognise some recent Xeons and falls
 * back to its SSE3 ("Prescott") kernels, 5-8x slower than its AVX-512 ones.
 * It reads OPENBLAS_CORETYPE only when it is loaded, before main() runs, so
 * the fix is to re-execute the program with the variable set. A constructor
 * does it so that every binary (llmd, tests, benchmarks) gets the fast path.
 * LLMD_NO_REEXEC=1 turns it off (for valgrind, which does not follow exec).
 * It also makes OpenBLAS single-threaded: llmd's parallelism is OpenMP's.
 */
#include "util.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *openblas_get_corename(void);

const char *util_blas_corename(void) { return openblas_get_corename(); }

int util_blas_threads(void) { return openblas_get_num_threads(); }

/* True when OpenBLAS runs a kernel set below what the CPU supports. */
static bool blas_misdetected(void)
{
    const char *core = openblas_get_corename();
    bool generic = strcmp(core, "Prescott") == 0 || strcmp(core, "Core2") == 0 ||
                   strcmp(core, "Nehalem") == 0 || strcmp(core, "Sandybridge") == 0 ||
                   strcmp(core, "Katmai") == 0 || strcmp(core, "Unknown") == 0;
    return generic && util_cpu()->avx2;
}

__attribute__((constructor)) static void blas_fix_coretype(int argc, char **argv, char **envp)
{
    (void)argc;
    (void)envp;
    /* llmd parallelises with OpenMP, calling OpenBLAS from each thread:
     * OpenBLAS's own threads would spin against OpenMP's on the same cores. */
    openblas_set_num_threads(1);
    if (getenv("OPENBLAS_CORETYPE") || getenv("LLMD_NO_REEXEC") || !blas_misdetected()) return;
    setenv("OPENBLAS_CORETYPE", util_cpu_has_avx512() ? "SkylakeX" : "Haswell", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the slow kernels rather than not at all */
    fprintf(stderr, "llmd: warning: could not re-execute with OPENBLAS_CORETYPE set\n");
}
