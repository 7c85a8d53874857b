/*
 * config.c: what the typed settings (struct srv_config, filled by
 * cli/settings.c) mean for the model and the engine.
 */
#include "server/server.h"
#include "util/util.h"

#include <string.h>

void srv_config_model_options(const struct srv_config *c, struct llm_model_options *o)
{
    llm_model_options_default(o);
    UTIL_CHECK(llm_precision_parse(c->precision, &o->precision) == 0);
    UTIL_CHECK(attn_kv_type_parse(c->kv_type, &o->kv_type) == 0);
    o->kv_pages = c->kv_pages;
    /* The engine admits a request only when the pool can hold it at full
     * length, so by default the pool holds max_running full contexts. */
    o->kv_sequences = c->max_running;
    o->page_size = c->page_size;
    o->threads = c->threads;
    o->sparse_mode = strcmp(c->sparse_mode, "window") == 0 ? ATTN_WINDOW : ATTN_QUEST;
    o->dense_layers = c->dense_layers;
    o->quant.group_size = c->group_size;
    o->quant.n_outlier = c->outliers;
    o->quant.act_clip = (float)c->act_clip;
    o->quant.weight_clip = (float)c->weight_clip;
    o->quant.gptq = c->gptq;
    o->quant.calib_file = c->calib_file;
    o->quant.calib_tokens = c->calib_tokens;
    UTIL_CHECK(llm_head_parse(c->head, &o->head) == 0); /* the table checked the choice */
}

void srv_config_engine_config(const struct srv_config *c, struct llm_engine_config *e)
{
    llm_engine_config_default(e);
    e->max_running = c->max_running;
    e->max_waiting = c->max_waiting;
    e->max_step_tokens = c->max_step_tokens;
    e->prefill_chunk = c->prefill_chunk;
    e->quest_budget = c->quest_budget;
    e->prefix_cache = c->prefix_cache;
}
