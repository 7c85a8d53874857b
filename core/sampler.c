/* sampler.c: next-token selection with penalties, temperature, top-k,
 * top-p and min-p, from a per-sequence seeded generator. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/sampler.h"

struct llm_sampler {
    struct llm_sampling params;
    struct util_rng rng;
    int vocab_size;
    int *counts;                  /* (vocab) occurrences, for the penalties */
    struct candidate *candidates; /* (vocab) scratch */
    float *original;              /* (vocab) the logits before penalties, for logprob */
};

struct candidate {
    int32_t id;
    float logit;
};

void llm_sampling_default(struct llm_sampling *s)
{
    memset(s, 0, sizeof *s);
    s->top_p = 1.0f;
    s->repetition_penalty = 1.0f;
}

int llm_sampling_validate(const struct llm_sampling *s, const char **field)
{
    const char *bad = NULL;
    if (!(s->temperature >= 0.0f && s->temperature <= 100.0f)) bad = "temperature";
    else if (s->top_k < 0) bad = "top_k";
    else if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) bad = "top_p";
    else if (!(s->min_p >= 0.0f && s->min_p <= 1.0f)) bad = "min_p";
    else if (!(s->repetition_penalty > 0.0f && s->repetition_penalty <= 100.0f)) bad = "repetition_penalty";
    else if (!(s->presence_penalty >= -2.0f && s->presence_penalty <= 2.0f)) bad = "presence_penalty";
    else if (!(s->frequency_penalty >= -2.0f && s->frequency_penalty <= 2.0f)) bad = "frequency_penalty";
    if (field) *field = bad;
    return bad ? -EINVAL : 0;
}

llm_sampler *llm_sampler_create(const struct llm_sampling *s, int vocab_size)
{
    llm_sampler *sm = util_xcalloc(1, sizeof *sm);
    sm->params = *s;
    sm->vocab_size = vocab_size;
    util_rng_seed(&sm->rng, s->seed);
    sm->counts = util_xcalloc((size_t)vocab_size, sizeof(int));
    sm->candidates = util_xmalloc(sizeof(struct candidate) * (size_t)vocab_size);
    sm->original = util_xmalloc(sizeof(float) * (size_t)vocab_size);
    return sm;
}

void llm_sampler_free(llm_sampler *sm)
{
    if (!sm) return;
    free(sm->counts);
    free(sm->candidates);
    free(sm->original);
    free(sm);
}

void llm_sampler_accept(llm_sampler *sm, int32_t token)
{
    if (token >= 0 && token < sm->vocab_size) sm->counts[token]++;
}

static float log_sum_exp(const float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)(x[i] - mx));
    return mx + (float)log(sum);
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void apply_penalties(const llm_sampler *sm, float *logits)
{
    const struct llm_sampling *p = &sm->params;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f) return;
    for (int i = 0; i < sm->vocab_size; i++) {
        int n = sm->counts[i];
        if (!n) continue;
        float l = logits[i];
        l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        logits[i] = l - p->presence_penalty - p->frequency_penalty * (float)n;
    }
}

/* Most likely first; equal logits by id, so the order is deterministic. */
static int by_logit_desc(const void *a, const void *b)
{
    const struct candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

int32_t llm_sampler_sample(llm_sampler *sm, float *logits, float *logprob)
{
    const struct llm_sampling *p = &sm->params;
    int n = sm->vocab_size;
    if (logprob) memcpy(sm->original, logits, sizeof(float) * (size_t)n);

    apply_penalties(sm, logits);
    int32_t chosen;
    if (p->temperature == 0.0f) {
        chosen = argmax(logits, n);
    } else {
        struct candidate *c = sm->candidates;
        for (int i = 0; i < n; i++) c[i] = (struct candidate){i, logits[i] / p->temperature};
        int count = n;
        bool truncating = (p->top_k > 0 && p->top_k < n) || p->top_p < 1.0f || p->min_p > 0.0f;
        if (truncating) {
            qsort(c, (size_t)n, sizeof *c, by_logit_desc);
            if (p->top_k > 0 && p->top_k < count) count = p->top_k;
        }
        float mx = -INFINITY;
        for (int i = 0; i < count; i++) mx = c[i].logit > mx ? c[i].logit : mx;
        double total = 0;
        for (int i = 0; i < count; i++) {
            c[i].logit = expf(c[i].logit - mx); /* now an unnormalised probability */
            total += c[i].logit;
        }
        if (p->min_p > 0.0f) { /* c[0] is the most likely: sorted */
            float floor = p->min_p * c[0].logit;
            int keep = 1;
            while (keep < count && c[keep].logit >= floor) keep++;
            for (int i = keep; i < count; i++) total -= c[i].logit;
            count = keep;
        }
        if (p->top_p < 1.0f) {
            double cum = 0;
            int keep = 0;
            while (keep < count && cum < p->top_p * total) cum += c[keep++].logit;
            total = cum;
            count = keep;
        }
        double r = util_rng_uniform(&sm->rng) * total, acc = 0;
        chosen = c[count - 1].id;
        for (int i = 0; i < count; i++) {
            acc += c[i].logit;
            if (r < acc) {
                chosen = c[i].id;
                break;
            }
        }
    }
    if (logprob) *logprob = sm->original[chosen] - log_sum_exp(sm->original, n);
    return chosen;
}

int llm_top_logprobs(const float *logits, int vocab_size, int n, int32_t *tokens, float *logprobs)
{
    if (n > vocab_size) n = vocab_size;
    if (n <= 0) return 0;
    float lse = log_sum_exp(logits, vocab_size);
    int have = 0;
    for (int i = 0; i < vocab_size; i++) {
        float l = logits[i];
        if (have == n && l <= logprobs[n - 1]) continue;
        int j = have < n ? have++ : n - 1;
        while (j > 0 && logprobs[j - 1] < l) {
            logprobs[j] = logprobs[j - 1];
            tokens[j] = tokens[j - 1];
            j--;
        }
        logprobs[j] = l;
        tokens[j] = i;
    }
    for (int i = 0; i < have; i++) logprobs[i] -= lse;
    return have;
}
