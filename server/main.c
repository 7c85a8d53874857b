/* main.c: the llmd command line. */
#include <stdio.h>

#include "util/util.h"

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("llmd: cpu %s; OpenBLAS %s\n", util_cpu_flags_string(), util_blas_corename());
    return 0;
}
