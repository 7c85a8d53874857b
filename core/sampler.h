/*
 * sampler: picks the next token from logits. Greedy when temperature is 0;
 * otherwise penalties, temperature, top-k, top-p and min-p, then a draw from
 * the sequence's own generator (the same seed gives the same tokens).
 */
#ifndef LLMD_CORE_SAMPLER_H
#define LLMD_CORE_SAMPLER_H

#include "util/util.h"

#include <stdint.h>

struct llm_sampling {
    float temperature;        /* 0 = greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off; 0 = greedy */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off; divides positive logits of seen tokens (CTRL style) */
    float presence_penalty;   /* 0 = off; subtracted once from seen tokens */
    float frequency_penalty;  /* 0 = off; subtracted per occurrence */
    uint64_t seed;
};

/* Greedy decoding with no penalties. */
void llm_sampling_default(struct llm_sampling *s);
/* 0, or -EINVAL naming the bad field in *field (when field is not NULL). */
int llm_sampling_validate(const struct llm_sampling *s, const char **field);

/* Per-sequence sampler state: the generator and the counts of tokens seen. */
typedef struct llm_sampler llm_sampler;

llm_sampler *llm_sampler_create(const struct llm_sampling *s, int vocab_size);
void llm_sampler_free(llm_sampler *sampler);
/* Counts a token for the penalties (prompt and generated tokens alike). */
void llm_sampler_accept(llm_sampler *sampler, int32_t token);
/* Picks a token. `logits` (vocab_size) is modified in place (penalties,
 * temperature). *logprob gets the chosen token's log-probability under the
 * unmodified distribution's softmax when logprob is not NULL. */
int32_t llm_sampler_sample(llm_sampler *sampler, float *logits, float *logprob);

/* The n most likely tokens of `logits` with their log-probabilities
 * (log-softmax), most likely first. Returns how many were written. */
int llm_top_logprobs(const float *logits, int vocab_size, int n, int32_t *tokens, float *logprobs);

#endif
