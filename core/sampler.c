/* sampler.c: next-token selection with penalties, temperature, top-k,
 * top-p and min-p, from a per-sequence seeded generator. */
#include "core/sampler.h"

#include "util/vec.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct llm_sampler {
    struct llm_sampling params;
    struct util_rng rng;
    int vocab_size;
    int *counts;                  /* (vocab) occurrences, for the penalties */
    struct candidate *candidates; /* (vocab) scratch */
    float *prob;                  /* (vocab) scratch: unnormalised probabilities */
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
    if (!(s->temperature >= 0.0f && s->temperature <= 100.0f))
        bad = "temperature";
    else if (s->top_k < 0)
        bad = "top_k";
    else if (!(s->top_p >= 0.0f && s->top_p <= 1.0f))
        bad = "top_p";
    else if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
        bad = "min_p";
    else if (!(s->repetition_penalty > 0.0f && s->repetition_penalty <= 100.0f))
        bad = "repetition_penalty";
    else if (!(s->presence_penalty >= -2.0f && s->presence_penalty <= 2.0f))
        bad = "presence_penalty";
    else if (!(s->frequency_penalty >= -2.0f && s->frequency_penalty <= 2.0f))
        bad = "frequency_penalty";
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
    sm->prob = util_xmalloc(sizeof(float) * (size_t)vocab_size);
    return sm;
}

void llm_sampler_free(llm_sampler *sm)
{
    if (!sm) return;
    free(sm->counts);
    free(sm->candidates);
    free(sm->original);
    free(sm->prob);
    free(sm);
}

void llm_sampler_accept(llm_sampler *sm, int32_t token)
{
    if (token >= 0 && token < sm->vocab_size) sm->counts[token]++;
}

/* ------------------------------------------------------- vector helpers */
/* A step samples every running sequence on the engine thread, each over the
 * whole vocabulary: these loops are AVX2 (the build's baseline), 8 logits at
 * a time; the tails are plain. */

static float max_of(const float *x, int n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m); /* NaN: skipped */
    float best = util_hmax8(m);
    for (; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}

/* p[i] = e^(x[i] - shift); returns their sum. */
static double exp_shifted(const float *x, int n, float shift, float *p)
{
    __m256 s = _mm256_set1_ps(shift), acc = _mm256_setzero_ps();
    double total = 0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = util_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        if (p) _mm256_storeu_ps(p + i, e);
        acc = _mm256_add_ps(acc, e);
        if ((i & 1023) == 1016) { /* a float sum of 8 lanes, emptied into the double often */
            total += util_hsum8(acc);
            acc = _mm256_setzero_ps();
        }
    }
    total += util_hsum8(acc);
    for (; i < n; i++) {
        float e = expf(x[i] - shift);
        if (p) p[i] = e;
        total += e;
    }
    return total;
}

static float log_sum_exp(const float *x, int n)
{
    float mx = max_of(x, n);
    return mx + (float)log(exp_shifted(x, n, mx, NULL));
}

/* The largest logit, the lowest id among equals. */
static int32_t argmax(const float *x, int n)
{
    float best = max_of(x, n);
    for (int i = 0; i < n; i++)
        if (x[i] == best) return i;
    return 0; /* all NaN */
}

static void apply_penalties(const llm_sampler *sm, float *logits)
{
    const struct llm_sampling *p = &sm->params;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
        p->frequency_penalty == 0.0f)
        return;
    for (int i = 0; i < sm->vocab_size; i++) {
        int n = sm->counts[i];
        if (!n) continue;
        float l = logits[i];
        l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        logits[i] = l - p->presence_penalty - p->frequency_penalty * (float)n;
    }
}

/* ----------------------------------------------------------- truncation */

/* Most likely first; equal logits by id, so the order is deterministic. */
static bool before(const struct candidate *x, const struct candidate *y)
{
    return x->logit > y->logit || (x->logit == y->logit && x->id < y->id);
}

static int by_logit_desc(const void *a, const void *b)
{
    const struct candidate *x = a, *y = b;
    return before(x, y) ? -1 : before(y, x) ? 1 : 0;
}

static void swap_candidates(struct candidate *a, struct candidate *b)
{
    struct candidate t = *a;
    *a = *b;
    *b = t;
}

/* Moves the k best of c[0, n) to the front, in no order (quickselect). */
static void select_best(struct candidate *c, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (before(&c[mid], &c[lo])) swap_candidates(&c[mid], &c[lo]);
        if (before(&c[hi], &c[lo])) swap_candidates(&c[hi], &c[lo]);
        if (before(&c[mid], &c[hi])) swap_candidates(&c[mid], &c[hi]);
        struct candidate pivot = c[hi];
        int store = lo;
        for (int i = lo; i < hi; i++)
            if (before(&c[i], &pivot)) swap_candidates(&c[i], &c[store++]);
        swap_candidates(&c[store], &c[hi]);
        if (store == k - 1 || store == k) return;
        if (store < k)
            lo = store + 1;
        else
            hi = store - 1;
    }
}

/*
 * The candidates a truncating draw walks, most likely first, in c, with
 * their unnormalised probabilities (e^(logit - max)) in c[i].logit; returns
 * their count and their probability sum in *total. The same set and order as
 * sorting the whole vocabulary would give: top-k by quickselect; without
 * top-k, only the candidates above a probability threshold are sorted, the
 * threshold lowered until they reach top-p's mass (most distributions reach
 * it among a few hundred tokens).
 */
static int truncate_candidates(const struct llm_sampling *p, const float *scaled, int n,
                               struct candidate *c, float *prob, double *total)
{
    int count;
    if (p->top_k > 0 && p->top_k < n) {
        for (int i = 0; i < n; i++) c[i] = (struct candidate){i, scaled[i]};
        select_best(c, n, p->top_k);
        count = p->top_k;
        qsort(c, (size_t)count, sizeof *c, by_logit_desc);
        float mx = c[0].logit;
        *total = 0;
        for (int i = 0; i < count; i++) {
            c[i].logit = expf(c[i].logit - mx);
            *total += c[i].logit;
        }
    } else {
        float mx = max_of(scaled, n);
        double all = exp_shifted(scaled, n, mx, prob);
        /* min-p first: its floor is relative to the best token (probability 1 here) */
        float floor = p->min_p > 0.0f ? p->min_p : 0.0f;
        double mass = all;
        if (floor > 0.0f) {
            mass = 0;
            for (int i = 0; i < n; i++) mass += prob[i] >= floor ? prob[i] : 0.0f;
        }
        double want = p->top_p < 1.0f ? p->top_p * mass : mass;
        float threshold = floor > 1e-3f ? floor : 1e-3f;
        for (;;) {
            count = 0;
            for (int i = 0; i < n; i++)
                if (prob[i] >= threshold) c[count++] = (struct candidate){i, scaled[i]};
            qsort(c, (size_t)count, sizeof *c, by_logit_desc);
            double cum = 0;
            int keep = 0;
            while (keep < count && cum < want) cum += prob[c[keep++].id];
            /* below the threshold everything is less likely than what is kept */
            if (cum >= want || threshold <= floor) {
                for (int i = 0; i < keep; i++) c[i].logit = prob[c[i].id];
                count = keep;
                *total = cum;
                break;
            }
            threshold = threshold / 64 > floor ? threshold / 64 : floor;
            if (threshold < 1e-30f) threshold = floor; /* a flat distribution: take them all */
        }
    }
    if (p->top_k > 0 && p->top_k < n) { /* then min-p and top-p, as without top-k */
        if (p->min_p > 0.0f) {
            float floor = p->min_p * c[0].logit;
            int keep = 1;
            while (keep < count && c[keep].logit >= floor) keep++;
            for (int i = keep; i < count; i++) *total -= c[i].logit;
            count = keep;
        }
        if (p->top_p < 1.0f) {
            double cum = 0;
            int keep = 0;
            while (keep < count && cum < p->top_p * *total) cum += c[keep++].logit;
            *total = cum;
            count = keep;
        }
    }
    return count;
}

int32_t llm_sampler_sample(llm_sampler *sm, float *logits, float *logprob)
{
    const struct llm_sampling *p = &sm->params;
    int n = sm->vocab_size;
    if (logprob) memcpy(sm->original, logits, sizeof(float) * (size_t)n);

    apply_penalties(sm, logits);
    int32_t chosen;
    /* top_p 0 keeps the smallest set with any mass: the best token (OpenAI takes it so) */
    if (p->temperature == 0.0f || p->top_p == 0.0f) {
        chosen = argmax(logits, n);
    } else {
        for (int i = 0; i < n; i++) logits[i] /= p->temperature; /* vectorised by the compiler */
        bool truncating = (p->top_k > 0 && p->top_k < n) || p->top_p < 1.0f || p->min_p > 0.0f;
        struct candidate *c = sm->candidates;
        double total;
        int count = n;
        if (truncating) {
            count = truncate_candidates(p, logits, n, c, sm->prob, &total);
        } else { /* the whole vocabulary, in id order */
            total = exp_shifted(logits, n, max_of(logits, n), sm->prob);
        }
        double r = util_rng_uniform(&sm->rng) * total, acc = 0;
        chosen = truncating ? c[count - 1].id : n - 1;
        for (int i = 0; i < count; i++) {
            acc += truncating ? c[i].logit : sm->prob[i];
            if (r < acc) {
                chosen = truncating ? c[i].id : i;
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
