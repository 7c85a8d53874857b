/* Tests for quant's formats: which are legal, and that illegal ones are refused. */
#include "quant/quant.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>

Test(quant_format, defaults_are_atom_and_w8a8)
{
    struct q_format f = q_format_default(Q_W4A4);
    cr_assert_eq(f.method, Q_W4A4);
    cr_assert_eq(f.group_size, 128);
    cr_assert_eq(f.n_outlier, 0);
    cr_assert_float_eq(f.act_clip, 0.9f, 0);
    cr_assert_float_eq(f.weight_clip, 0.85f, 0);
    cr_assert_eq(q_format_check(&f, 4096), 0);
    f = q_format_default(Q_W8A8);
    cr_assert_eq(f.method, Q_W8A8);
    cr_assert_float_eq(f.act_clip, 1.0f, 0);
    cr_assert_eq(q_format_check(&f, 4096), 0);
}

Test(quant_format, accepts_multiples_of_16_and_short_last_groups)
{
    struct q_format f = q_format_default(Q_W4A4);
    int ks[] = {16, 128, 144, 512, 1536, 65536};
    for (size_t i = 0; i < sizeof ks / sizeof *ks; i++) cr_assert_eq(q_format_check(&f, ks[i]), 0);
    f.n_outlier = 16; /* 496 int4 channels: groups of 128, 128, 128, 112 */
    cr_assert_eq(q_format_check(&f, 512), 0);
    f.n_outlier = 512; /* every channel int8 */
    cr_assert_eq(q_format_check(&f, 512), 0);
    f.group_size = 16;
    f.n_outlier = 0;
    cr_assert_eq(q_format_check(&f, 48), 0);
    f.group_size = 512;
    cr_assert_eq(q_format_check(&f, 48), 0);
}

Test(quant_format, rejects_illegal_shapes_with_einval)
{
    struct q_format f = q_format_default(Q_W4A4);
    cr_assert_eq(q_format_check(&f, 0), -EINVAL);
    cr_assert_eq(q_format_check(&f, 100), -EINVAL);   /* not a multiple of 16 */
    cr_assert_eq(q_format_check(&f, 65552), -EINVAL); /* too wide */
    cr_assert_eq(q_format_check(NULL, 128), -EINVAL);
    f.group_size = 120;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
    f.group_size = 528;
    cr_assert_eq(q_format_check(&f, 1024), -EINVAL); /* int16 sums of AVX2 */
    f.group_size = 0;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
    f = q_format_default(Q_W4A4);
    f.n_outlier = 8;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
    f.n_outlier = 144;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
    f.n_outlier = -16;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
    f = q_format_default(Q_W4A4);
    f.act_clip = 0;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
    f.act_clip = 1.5f;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
    f = q_format_default(Q_W8A8);
    f.n_outlier = 16;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
    f = q_format_default(Q_W8A8);
    f.method = (enum q_method)7;
    cr_assert_eq(q_format_check(&f, 128), -EINVAL);
}

Test(quant_format, creating_activations_of_an_illegal_shape_aborts, .signal = SIGABRT)
{
    struct q_format f = q_format_default(Q_W4A4);
    q_act_create(&f, 100, 1);
}

Test(quant_format, quantizing_weights_with_a_non_permutation_aborts, .signal = SIGABRT)
{
    struct q_format f = q_format_default(Q_W4A4);
    static float w[16 * 32];
    int perm[32];
    for (int j = 0; j < 32; j++) perm[j] = j / 2; /* repeats */
    f.group_size = 16;
    q_linear_quantize(w, 16, 32, &f, perm);
}
