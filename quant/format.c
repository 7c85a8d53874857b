/* format.c: which formats are legal, and the channel groups they imply. */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <errno.h>
#include <stdlib.h>

struct q_format q_format_default(enum q_method method)
{
    if (method == Q_W8A8)
        return (struct q_format){.method = Q_W8A8,
                                 .group_size = 0,
                                 .n_outlier = 0,
                                 .act_clip = 1.0f,
                                 .weight_clip = 1.0f};
    if (method == Q_W4A8)
        return (struct q_format){.method = Q_W4A8,
                                 .group_size = 128,
                                 .n_outlier = 0,
                                 .act_clip = 1.0f,
                                 .weight_clip = 0.9f};
    return (struct q_format){.method = Q_W4A4,
                             .group_size = 128,
                             .n_outlier = 0,
                             .act_clip = 0.9f,
                             .weight_clip = 0.85f};
}

static bool clip_ok(float clip)
{
    return clip > 0.0f && clip <= 1.0f;
}

int q_format_check(const struct q_format *format, int k)
{
    const char *why = NULL;
    if (!format)
        why = "no format";
    else if (k < Q_CHANNEL_ALIGN || k > Q_MAX_K || k % Q_CHANNEL_ALIGN)
        why = "k must be a multiple of 16 in 16..65536";
    else if (!clip_ok(format->act_clip) || !clip_ok(format->weight_clip))
        why = "clipping factors must be in (0, 1]";
    else if (format->method == Q_W8A8) {
        if (format->n_outlier != 0) why = "W8A8 has no outlier channels";
    } else if (format->method == Q_W4A4 || format->method == Q_W4A8) {
        if (format->group_size < Q_CHANNEL_ALIGN || format->group_size > Q_MAX_GROUP ||
            format->group_size % Q_CHANNEL_ALIGN)
            why = "group_size must be a multiple of 16 in 16..512";
        else if (format->n_outlier < 0 || format->n_outlier > k ||
                 format->n_outlier % Q_CHANNEL_ALIGN)
            why = "n_outlier must be a multiple of 16 in 0..k";
        else if (format->method == Q_W4A8 && format->n_outlier != 0)
            why = "W4A8 has no outlier channels";
    } else
        why = "unknown method";
    if (!why) return 0;
    LOG_DEBUG("quant: format rejected for k=%d: %s", k, why);
    return -EINVAL;
}

void q_layout_init(struct q_layout *lay, const struct q_format *format, int k)
{
    UTIL_CHECK(q_format_check(format, k) == 0);
    int k_normal = format->method == Q_W8A8 ? 0 : k - format->n_outlier;
    int n_int4 =
        format->method == Q_W8A8 ? 0 : (k_normal + format->group_size - 1) / format->group_size;
    int n_int8 = format->method == Q_W8A8 || format->n_outlier > 0;
    lay->k = k;
    lay->n_groups = n_int4 + n_int8;
    lay->groups = util_xcalloc((size_t)lay->n_groups, sizeof *lay->groups);
    int act_offset = 0;
    size_t w_offset = 0;
    for (int g = 0; g < lay->n_groups; g++) {
        struct q_group *grp = &lay->groups[g];
        if (g < n_int4) {
            grp->start = g * format->group_size;
            grp->len = k_normal - grp->start < format->group_size ? k_normal - grp->start
                                                                  : format->group_size;
            grp->bits = 4;
            grp->a_bits = format->method == Q_W4A8 ? 8 : 4;
        } else {
            grp->start = k_normal;
            grp->len = k - k_normal;
            grp->bits = 8;
            grp->a_bits = 8;
        }
        grp->act_offset = act_offset;
        grp->w_offset = w_offset;
        act_offset += q_round_up(grp->len, Q_ACT_GROUP_ALIGN);
        w_offset += (size_t)grp->len * Q_BLOCK_ROWS * (size_t)grp->bits / 8;
    }
    /* Rows a multiple of 1 KB apart would share L1 sets: the kernels read 6
     * or 16 rows at once. One more line breaks the pattern. */
    lay->act_row_bytes = act_offset % 1024 ? act_offset : act_offset + Q_ACT_GROUP_ALIGN;
    lay->block_bytes = w_offset;
}

void q_layout_free(struct q_layout *lay)
{
    free(lay->groups);
    lay->groups = NULL;
    lay->n_groups = 0;
}

/* One (position, channel) pair mixed, for the two sums of q_perm_hash. */
#define PERM_MIX(j, c, h1, h2)                                                                     \
    do {                                                                                           \
        uint32_t x_ = ((uint32_t)(c) ^ ((uint32_t)(j)*0x9e3779b9u)) * 0x85ebca6bu;                 \
        x_ ^= x_ >> 13;                                                                            \
        x_ *= 0xc2b2ae35u;                                                                         \
        h1 += x_ ^ (x_ >> 16);                                                                     \
        h2 += (x_ + (uint32_t)(j)) * 0x27d4eb2fu;                                                  \
    } while (0)

uint64_t q_perm_hash(const int *perm, int k)
{
    /* Two sums of mixed (position, channel) pairs: no chain from one
     * element to the next, so it vectorises. It only has to tell apart
     * orders that a caller mixed up, not resist an adversary. Two loops:
     * one with `perm ? perm[j] : j` inside becomes masked loads from NULL,
     * which the CPU serves by microcode, 40 ns each. */
    uint32_t h1 = 0, h2 = 0;
    if (perm) {
#pragma omp simd reduction(+ : h1, h2)
        for (int j = 0; j < k; j++) PERM_MIX(j, perm[j], h1, h2);
    } else {
#pragma omp simd reduction(+ : h1, h2)
        for (int j = 0; j < k; j++) PERM_MIX(j, j, h1, h2);
    }
    return (uint64_t)h1 << 32 | h2;
}
