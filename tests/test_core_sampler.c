/* Tests for core/sampler.c: greedy, seeded sampling, truncation, penalties,
 * logprobs and validation. */
#include "core/llm.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#define VOCAB 50

static void fill_logits(float *logits, unsigned seed)
{
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    for (int i = 0; i < VOCAB; i++) logits[i] = (float)util_rng_normal(&rng) * 2.0f;
}

static int32_t sample_once(const struct llm_sampling *s, const float *logits)
{
    float copy[VOCAB];
    memcpy(copy, logits, sizeof copy);
    llm_sampler *sm = llm_sampler_create(s, VOCAB);
    int32_t t = llm_sampler_sample(sm, copy, NULL);
    llm_sampler_free(sm);
    return t;
}

Test(sampler, greedy_picks_the_largest_logit_and_the_lowest_id_on_ties)
{
    struct llm_sampling s;
    llm_sampling_default(&s);
    float logits[VOCAB];
    fill_logits(logits, 1);
    int32_t best = 0;
    for (int i = 1; i < VOCAB; i++)
        if (logits[i] > logits[best]) best = i;
    cr_assert_eq(sample_once(&s, logits), best);
    logits[7] = logits[3] = 100.0f;
    cr_assert_eq(sample_once(&s, logits), 3);
}

Test(sampler, same_seed_gives_the_same_tokens_and_other_seeds_differ)
{
    struct llm_sampling s;
    llm_sampling_default(&s);
    s.temperature = 1.5f;
    float logits[VOCAB];
    fill_logits(logits, 2);
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        s.seed = run == 2 ? 99 : 42;
        llm_sampler *sm = llm_sampler_create(&s, VOCAB);
        for (int i = 0; i < 64; i++) {
            float copy[VOCAB];
            memcpy(copy, logits, sizeof copy);
            (run == 0 ? a : run == 1 ? b : c)[i] = llm_sampler_sample(sm, copy, NULL);
        }
        llm_sampler_free(sm);
    }
    cr_assert_arr_eq(a, b, sizeof a);
    cr_assert(memcmp(a, c, sizeof a) != 0);
}

Test(sampler, top_k_only_ever_picks_among_the_k_best)
{
    struct llm_sampling s;
    llm_sampling_default(&s);
    s.temperature = 5.0f; /* nearly uniform before truncation */
    s.top_k = 3;
    float logits[VOCAB];
    fill_logits(logits, 3);
    float sorted[VOCAB];
    memcpy(sorted, logits, sizeof sorted);
    for (int i = 0; i < VOCAB; i++)
        for (int j = i + 1; j < VOCAB; j++)
            if (sorted[j] > sorted[i]) {
                float t = sorted[i];
                sorted[i] = sorted[j];
                sorted[j] = t;
            }
    llm_sampler *sm = llm_sampler_create(&s, VOCAB);
    int seen_distinct[VOCAB] = {0};
    for (int i = 0; i < 500; i++) {
        float copy[VOCAB];
        memcpy(copy, logits, sizeof copy);
        int32_t t = llm_sampler_sample(sm, copy, NULL);
        cr_assert_geq(logits[t], sorted[2], "token %d is outside the top 3", t);
        seen_distinct[t] = 1;
    }
    int distinct = 0;
    for (int i = 0; i < VOCAB; i++) distinct += seen_distinct[i];
    cr_assert_eq(distinct, 3, "all three candidates should be drawn at temperature 5");
    llm_sampler_free(sm);
}

Test(sampler, top_p_keeps_the_smallest_set_reaching_p)
{
    struct llm_sampling s;
    llm_sampling_default(&s);
    s.temperature = 1.0f;
    s.top_p = 0.5f;
    float logits[VOCAB];
    for (int i = 0; i < VOCAB; i++) logits[i] = -20.0f;
    logits[10] = logf(0.4f), logits[11] = logf(0.3f), logits[12] = logf(0.3f); /* ~ all mass */
    llm_sampler *sm = llm_sampler_create(&s, VOCAB);
    for (int i = 0; i < 300; i++) {
        float copy[VOCAB];
        memcpy(copy, logits, sizeof copy);
        int32_t t = llm_sampler_sample(sm, copy, NULL);
        cr_assert(t == 10 || t == 11, "0.4 + 0.3 reaches 0.5: token %d must not be drawn", t);
    }
    llm_sampler_free(sm);
}

Test(sampler, top_p_zero_is_greedy_whatever_the_temperature)
{
    struct llm_sampling s;
    llm_sampling_default(&s);
    s.temperature = 1.5f;
    s.top_p = 0.0f;
    s.seed = 3;
    float logits[VOCAB];
    fill_logits(logits, 4);
    int32_t best = 0;
    for (int i = 1; i < VOCAB; i++)
        if (logits[i] > logits[best]) best = i;
    llm_sampler *sm = llm_sampler_create(&s, VOCAB);
    for (int i = 0; i < 50; i++) {
        float copy[VOCAB];
        memcpy(copy, logits, sizeof copy);
        cr_assert_eq(llm_sampler_sample(sm, copy, NULL), best);
    }
    llm_sampler_free(sm);
}

Test(sampler, min_p_drops_tokens_below_the_fraction_of_the_best)
{
    struct llm_sampling s;
    llm_sampling_default(&s);
    s.temperature = 1.0f;
    s.min_p = 0.5f;
    float logits[VOCAB];
    for (int i = 0; i < VOCAB; i++) logits[i] = -3.0f;
    logits[0] = 0.0f;
    logits[1] = logf(0.6f); /* p ratio 0.6 >= 0.5: kept */
    llm_sampler *sm = llm_sampler_create(&s, VOCAB);
    for (int i = 0; i < 300; i++) {
        float copy[VOCAB];
        memcpy(copy, logits, sizeof copy);
        int32_t t = llm_sampler_sample(sm, copy, NULL);
        cr_assert(t == 0 || t == 1, "token %d is below min_p", t);
    }
    llm_sampler_free(sm);
}

Test(sampler, penalties_change_the_greedy_choice_of_seen_tokens)
{
    struct llm_sampling s;
    llm_sampling_default(&s);
    float logits[VOCAB] = {0};
    logits[5] = 2.0f;
    logits[6] = 1.5f;
    s.repetition_penalty = 2.0f; /* 2.0 -> 1.0 < 1.5 */
    llm_sampler *sm = llm_sampler_create(&s, VOCAB);
    llm_sampler_accept(sm, 5);
    float copy[VOCAB];
    memcpy(copy, logits, sizeof copy);
    cr_assert_eq(llm_sampler_sample(sm, copy, NULL), 6);
    llm_sampler_free(sm);

    llm_sampling_default(&s);
    s.frequency_penalty = 0.3f; /* seen twice: 2.0 - 0.6 = 1.4 < 1.5 */
    sm = llm_sampler_create(&s, VOCAB);
    llm_sampler_accept(sm, 5);
    memcpy(copy, logits, sizeof copy);
    cr_assert_eq(llm_sampler_sample(sm, copy, NULL), 5, "seen once: 1.7 still wins");
    llm_sampler_accept(sm, 5);
    memcpy(copy, logits, sizeof copy);
    cr_assert_eq(llm_sampler_sample(sm, copy, NULL), 6);
    llm_sampler_free(sm);

    llm_sampling_default(&s);
    s.presence_penalty = 0.6f;
    sm = llm_sampler_create(&s, VOCAB);
    llm_sampler_accept(sm, 5);
    memcpy(copy, logits, sizeof copy);
    cr_assert_eq(llm_sampler_sample(sm, copy, NULL), 6);
    llm_sampler_free(sm);
}

Test(sampler, logprob_is_the_log_softmax_of_the_unmodified_logits)
{
    struct llm_sampling s;
    llm_sampling_default(&s);
    s.repetition_penalty = 3.0f;
    float logits[VOCAB];
    fill_logits(logits, 4);
    double sum = 0;
    for (int i = 0; i < VOCAB; i++) sum += exp(logits[i]);
    llm_sampler *sm = llm_sampler_create(&s, VOCAB);
    llm_sampler_accept(sm, 0);
    float copy[VOCAB], lp;
    memcpy(copy, logits, sizeof copy);
    int32_t t = llm_sampler_sample(sm, copy, &lp);
    cr_assert_float_eq(lp, logits[t] - log(sum), 1e-4);
    llm_sampler_free(sm);
}

Test(sampler, top_logprobs_are_sorted_and_normalised)
{
    float logits[VOCAB];
    fill_logits(logits, 5);
    int32_t ids[5];
    float lps[5];
    cr_assert_eq(llm_top_logprobs(logits, VOCAB, 5, ids, lps), 5);
    double sum = 0;
    for (int i = 0; i < VOCAB; i++) sum += exp(logits[i]);
    for (int i = 0; i < 5; i++) {
        cr_assert_float_eq(lps[i], logits[ids[i]] - log(sum), 1e-4);
        if (i) cr_assert_geq(lps[i - 1], lps[i]);
    }
    int better = 0;
    for (int i = 0; i < VOCAB; i++) better += logits[i] > logits[ids[4]];
    cr_assert_eq(better, 4);
}

Test(sampler, validation_names_the_bad_field)
{
    struct llm_sampling s;
    const char *field;
    llm_sampling_default(&s);
    cr_assert_eq(llm_sampling_validate(&s, &field), 0);
    s.top_p = -0.1f;
    cr_assert_eq(llm_sampling_validate(&s, &field), -EINVAL);
    cr_assert_str_eq(field, "top_p");
    s.top_p = 0.0f; /* greedy, as OpenAI takes it */
    cr_assert_eq(llm_sampling_validate(&s, &field), 0);
    llm_sampling_default(&s);
    s.temperature = NAN;
    cr_assert_eq(llm_sampling_validate(&s, &field), -EINVAL);
    cr_assert_str_eq(field, "temperature");
    llm_sampling_default(&s);
    s.presence_penalty = 2.5f;
    cr_assert_eq(llm_sampling_validate(&s, &field), -EINVAL);
    cr_assert_str_eq(field, "presence_penalty");
}

/* A real vocabulary's size: the truncated draws stay in the set a full sort
 * of the vocabulary would keep (the sampler sorts only what it must). */
static int by_value_desc(const void *a, const void *b, void *v)
{
    const float *x = v;
    int i = *(const int *)a, j = *(const int *)b;
    if (x[i] != x[j]) return x[i] < x[j] ? 1 : -1;
    return (i > j) - (i < j);
}

Test(sampler, truncation_on_a_large_vocabulary_keeps_the_full_sorts_set)
{
    enum { BIG = 32000 };
    float *logits = malloc(sizeof(float) * BIG), *copy = malloc(sizeof(float) * BIG);
    struct util_rng rng;
    util_rng_seed(&rng, 5);
    for (int i = 0; i < BIG; i++) logits[i] = (float)util_rng_normal(&rng) * 3.0f;
    int *order = malloc(sizeof(int) * BIG);
    for (int i = 0; i < BIG; i++) order[i] = i;
    qsort_r(order, BIG, sizeof(int), by_value_desc, logits);
    double total = 0;
    for (int i = 0; i < BIG; i++) total += exp((double)logits[i] - logits[order[0]]);
    const float top_ps[] = {0.5f, 0.9f, 0.99f};
    for (int k = 0; k < 3; k++) {
        /* the reference: the smallest prefix of the sorted vocabulary reaching top_p */
        bool *kept = calloc(BIG, sizeof(bool));
        double cum = 0;
        for (int i = 0; i < BIG && cum < top_ps[k] * total; i++) {
            cum += exp((double)logits[order[i]] - logits[order[0]]);
            kept[order[i]] = true;
        }
        struct llm_sampling s;
        llm_sampling_default(&s);
        s.temperature = 1.0f;
        s.top_p = top_ps[k];
        s.seed = 11;
        llm_sampler *sm = llm_sampler_create(&s, BIG);
        for (int draw = 0; draw < 300; draw++) {
            memcpy(copy, logits, sizeof(float) * BIG);
            int32_t t = llm_sampler_sample(sm, copy, NULL);
            cr_assert(t >= 0 && t < BIG && kept[t], "top_p %g drew token %d outside the set",
                      top_ps[k], t);
        }
        llm_sampler_free(sm);
        free(kept);
    }
    /* top-k: only the k best */
    struct llm_sampling s;
    llm_sampling_default(&s);
    s.temperature = 2.0f;
    s.top_k = 40;
    llm_sampler *sm = llm_sampler_create(&s, BIG);
    for (int draw = 0; draw < 300; draw++) {
        memcpy(copy, logits, sizeof(float) * BIG);
        int32_t t = llm_sampler_sample(sm, copy, NULL);
        bool among = false;
        for (int i = 0; i < 40; i++) among |= order[i] == t;
        cr_assert(among, "top_k 40 drew token %d", t);
    }
    llm_sampler_free(sm);
    /* greedy: the largest, the lowest id on ties, anywhere in the row */
    llm_sampling_default(&s);
    sm = llm_sampler_create(&s, BIG);
    memcpy(copy, logits, sizeof(float) * BIG);
    cr_assert_eq(llm_sampler_sample(sm, copy, NULL), order[0]);
    memcpy(copy, logits, sizeof(float) * BIG);
    copy[31999] = copy[12345] = 1000.0f;
    cr_assert_eq(llm_sampler_sample(sm, copy, NULL), 12345);
    llm_sampler_free(sm);
    free(order), free(logits), free(copy);
}
