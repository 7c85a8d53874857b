/* Tests for Atom's calibration statistics and the outlier channel order. */
#include "quant/quant.h"
#include "tests/test_quant_helpers.h"

#include <criterion/criterion.h>
#include <string.h>

/* Running float means against a double computation of the same sums. */
#define STAT_REL_TOL 1e-5

Test(atom_calib, mean_square_and_hessian_match_a_direct_computation)
{
    const int k = 48, sizes[] = {1, 7, 64, 30};
    int loud[2] = {4, 40};
    atom_calib *calib = atom_calib_create(k, true);
    float *all = util_xmalloc((size_t)102 * k * sizeof *all);
    int tokens = 0;
    for (int i = 0; i < 4; i++) {
        float *x = tq_matrix(50 + (uint64_t)i, sizes[i], k, loud, 2, 10.0f);
        atom_calib_add(calib, x, sizes[i]);
        memcpy(all + (size_t)tokens * k, x, (size_t)sizes[i] * k * sizeof *x);
        tokens += sizes[i];
        free(x);
    }
    atom_calib_add(calib, all, 0); /* no tokens: no change */
    cr_assert_eq(atom_calib_tokens(calib), tokens);
    const float *ms = atom_calib_mean_square(calib), *h = atom_calib_hessian(calib);
    for (int i = 0; i < k; i++) {
        for (int j = 0; j < k; j++) {
            double s = 0;
            for (int t = 0; t < tokens; t++) s += (double)all[t * k + i] * all[t * k + j];
            s /= tokens;
            double scale = 0; /* |x_i| |x_j| averaged: the size of the terms */
            for (int t = 0; t < tokens; t++) scale += fabs((double)all[t * k + i] * all[t * k + j]);
            scale /= tokens;
            cr_assert_leq(fabs(h[i * k + j] - s), STAT_REL_TOL * scale, "H[%d][%d] %g vs %g", i, j,
                          h[i * k + j], s);
            if (i == j) cr_assert_leq(fabs(ms[i] - s), STAT_REL_TOL * s, "ms[%d]", i);
        }
    }
    free(all);
    atom_calib_free(calib);
}

Test(atom_calib, without_hessian_gives_only_mean_squares)
{
    atom_calib *calib = atom_calib_create(16, false);
    float x[2 * 16];
    for (int i = 0; i < 32; i++) x[i] = (float)(i % 16);
    atom_calib_add(calib, x, 2);
    cr_assert_null(atom_calib_hessian(calib));
    cr_assert_float_eq(atom_calib_mean_square(calib)[3], 9.0f, 0);
    atom_calib_free(calib);
}

Test(atom_outliers, normal_channels_keep_their_order_and_outliers_go_last_by_size)
{
    const float ms[10] = {1, 50, 2, 3, 90, 4, 70, 5, 6, 7};
    int perm[10];
    atom_outlier_permutation(ms, 10, 3, perm);
    const int want[10] = {0, 2, 3, 5, 7, 8, 9, 1, 6, 4};
    for (int j = 0; j < 10; j++) cr_assert_eq(perm[j], want[j], "perm[%d] = %d", j, perm[j]);
}

Test(atom_outliers, ties_break_by_channel_and_edge_counts_work)
{
    const float ms[6] = {5, 5, 1, 5, 0, 2};
    int perm[6];
    atom_outlier_permutation(ms, 6, 2, perm); /* three tie at 5: channels 1 and 3 win */
    const int want[6] = {0, 2, 4, 5, 1, 3};
    for (int j = 0; j < 6; j++) cr_assert_eq(perm[j], want[j]);
    atom_outlier_permutation(ms, 6, 0, perm);
    for (int j = 0; j < 6; j++) cr_assert_eq(perm[j], j);
    atom_outlier_permutation(ms, 6, 6, perm);
    const int sorted[6] = {4, 2, 5, 0, 1, 3};
    for (int j = 0; j < 6; j++) cr_assert_eq(perm[j], sorted[j]);
}

Test(atom_outliers, calibration_finds_the_loud_channels)
{
    const int k = 256, n_loud = 16;
    int loud[16];
    for (int i = 0; i < n_loud; i++) loud[i] = (i * 37 + 3) % k;
    float *x = tq_matrix(77, 512, k, loud, n_loud, 6.0f);
    for (int i = 0; i < n_loud; i++) /* distinct sizes, so the order is known */
        for (int t = 0; t < 512; t++) x[t * k + loud[i]] *= 1.0f + 0.2f * (float)i;
    atom_calib *calib = atom_calib_create(k, false);
    atom_calib_add(calib, x, 512);
    int perm[256];
    atom_outlier_permutation(atom_calib_mean_square(calib), k, n_loud, perm);
    for (int i = 0; i < n_loud; i++) cr_assert_eq(perm[k - n_loud + i], loud[i]);
    free(x);
    atom_calib_free(calib);
}
