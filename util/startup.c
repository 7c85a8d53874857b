/*
 * startup.c: the run-time environment llmd's libraries read before main().
 *
 * - Debian's OpenBLAS 0.3.21 does not recognise some recent Xeons and falls
 *   back to its SSE3 ("Prescott") kernels, 5-8x slower than its AVX-512
 *   ones. It reads OPENBLAS_CORETYPE only when it is loaded.
 * - libgomp spins up to 300000 iterations after every parallel region before
 *   it sleeps. llmd runs dozens of short regions per token; on a machine
 *   whose two vCPUs are SMT siblings, or that others share, the spinning
 *   thread slows the one doing the work: decoding ran at 45 tokens/s with
 *   the default and at 275 with GOMP_SPINCOUNT=1000 (BENCHMARKS.md). libgomp
 *   reads it only when it is loaded.
 * Both are fixed by re-executing the program once with the variables set
 * (unless the user set them). A constructor does it, so every binary (llmd,
 * tests, benchmarks) runs the same way. LLMD_NO_REEXEC=1 turns it off (for
 * valgrind, which does not follow exec).
 * OpenBLAS is also made single-threaded: llmd's parallelism is OpenMP's.
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

__attribute__((constructor)) static void fix_environment(int argc, char **argv, char **envp)
{
    (void)argc;
    (void)envp;
    /* llmd parallelises with OpenMP, calling OpenBLAS from each thread:
     * OpenBLAS's own threads would spin against OpenMP's on the same cores. */
    openblas_set_num_threads(1);
    if (getenv("LLMD_NO_REEXEC")) return;
    bool again = false;
    if (!getenv("OPENBLAS_CORETYPE") && blas_misdetected()) {
        setenv("OPENBLAS_CORETYPE", util_cpu_has_avx512() ? "SkylakeX" : "Haswell", 1);
        again = true;
    }
    if (!getenv("GOMP_SPINCOUNT") && !getenv("OMP_WAIT_POLICY")) {
        setenv("GOMP_SPINCOUNT", "1000", 1);
        again = true;
    }
    if (!again) return;
    execv("/proc/self/exe", argv);
    /* exec failed: carry on in the environment we have rather than not at all */
    fprintf(stderr, "llmd: warning: could not re-execute with OPENBLAS_CORETYPE/GOMP_SPINCOUNT set\n");
}
