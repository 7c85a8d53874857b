/*
 * llm: the public header of core/, the model side of llmd. It reads top to
 * bottom like the model itself: the GGUF file, the tokenizer, the model and
 * its forward pass, the sampler, and the batching engine that serves many
 * sequences at once.
 */
#ifndef LLMD_CORE_LLM_H
#define LLMD_CORE_LLM_H

#include "core/gguf.h"
#include "core/tokenizer.h"
#include "core/model.h"
#include "core/sampler.h"
#include "core/engine.h"

#endif
