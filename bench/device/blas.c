/*
 * blas.c: the three OpenBLAS-only calls of util/startup.c, for the
 * static build of the device checks (bench/device/check.sh), which links
 * the reference BLAS/LAPACK instead: Debian's static OpenBLAS starts its
 * thread server in a static binary and crashes there. Only that build
 * links this file.
 */
#include <stddef.h>

void openblas_set_num_threads(int n)
{
    (void)n;
}

int openblas_get_num_threads(void)
{
    return 1;
}

char *openblas_get_corename(void)
{
    return "reference";
}
