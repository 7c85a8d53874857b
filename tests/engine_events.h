/* engine_events.h: what the engine tests share: an event callback that
 * collects each request's tokens, text and final event (the request's
 * `user` is its slot), and waiting for DONE events. Header-only. */
#ifndef LLMD_TESTS_ENGINE_EVENTS_H
#define LLMD_TESTS_ENGINE_EVENTS_H

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "core/llm.h"

#define MAX_REQ 64
#define MAX_GEN 64

struct result {
    int32_t tokens[MAX_GEN];
    int n_tokens;
    char text[4096];
    size_t text_len;
    bool done;
    struct llm_event final;
};

struct collector {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct result results[MAX_REQ];
    int n_done;
};

static inline void on_event(const struct llm_event *ev, void *ctx)
{
    struct collector *c = ctx;
    struct result *r = &c->results[(intptr_t)ev->user];
    pthread_mutex_lock(&c->lock);
    if (ev->type == LLM_EVENT_TOKEN) {
        cr_assert_lt(r->n_tokens, MAX_GEN);
        r->tokens[r->n_tokens++] = ev->token;
        cr_assert_lt(r->text_len + (size_t)ev->text_len, sizeof r->text);
        memcpy(r->text + r->text_len, ev->text, (size_t)ev->text_len);
        r->text_len += (size_t)ev->text_len;
    } else {
        cr_assert(!r->done, "two DONE events for one request");
        r->done = true;
        r->final = *ev;
        c->n_done++;
        pthread_cond_broadcast(&c->cond);
    }
    pthread_mutex_unlock(&c->lock);
}

static inline void collector_init(struct collector *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
}

/* Waits until n requests of c are done. */
static inline void wait_done(struct collector *c, int n)
{
    pthread_mutex_lock(&c->lock);
    while (c->n_done < n) pthread_cond_wait(&c->cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
}

#endif
