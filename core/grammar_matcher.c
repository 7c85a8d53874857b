/*
 * grammar_matcher.c: following outputs through a compiled grammar, and the token
 * masks.
 *
 * A parse stack is a persistent list of grammar positions: a node is (pos,
 * parent node), interned, so equal stacks are one id and stacks share their
 * bottoms. The top of a stack is a position whose symbol is a terminal; the
 * nodes below hold where to continue when the rule above them ends. A state
 * is the sorted set of top nodes that the text so far can be in, plus
 * whether the text is complete; it is interned to an id as well. So the
 * step (state, byte) -> state is a function of two integers and memoized in
 * a 256-entry row per state, and a token mask is a property of a state.
 *
 * Inside a repeated construct (the characters of a JSON string) the state
 * after one more character is the state before it: references in tail
 * position do not push a node, so the stacks come back equal and intern to
 * the same id. After warm-up, a step is a cached mask applied to the logits
 * and a few memoized transitions.
 *
 * Masks: the vocabulary is a byte trie stored in preorder with each node's
 * subtree end, walked from a state with one memoized transition per trie
 * node, skipping the subtree of every node whose transition is dead.
 *
 * Memory: the caches grow with the text and the states seen. When they pass
 * the grammar's limit they are dropped before the next mask or accept and
 * rebuilt with only the live matchers' stacks (copied into the new tables).
 */
#include "core/grammar_internal.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define STATE_UNKNOWN 0 /* a transition not worked out yet */
#define STATE_DEAD    1 /* no stack left: the text left the language */
#define STATE_FIRST   2 /* ids of real states start here */

/* -------------------------------------------------------------- the vocab */

/* A trie node in preorder: its subtree is [self, end). Its tokens are
 * trie_tokens[tok_begin, next node's tok_begin): those with text exactly
 * the path to it, plain ones first, then from tok_sf the space_first ones. */
struct trie_node {
    int32_t end;
    int32_t tok_begin, tok_sf;
    int32_t below; /* the bytes of the nodes under it: sets[below], or -1 when not all ASCII */
    uint16_t depth; /* the root is depth 0 and not stored */
    uint8_t byte;
};

struct ascii_set {
    uint64_t w[2];
};

struct llm_grammar_vocab {
    int32_t n_tokens, eos;
    uint32_t id; /* tells cached masks of different vocabularies apart */
    char *text;
    size_t *off;
    int32_t *len;
    bool *space_first;
    struct trie_node *trie; /* n_trie nodes plus a sentinel */
    int32_t n_trie;
    int32_t *trie_tokens;
    int32_t space_child; /* the root's child for ' ', or -1 */
    int max_depth;
    struct ascii_set *below; /* distinct byte sets of subtrees */
    int32_t n_below;
};

#define VOCAB_MAX_TOKEN_LEN 65535 /* trie depth is 16 bits; longer tokens are never allowed */

static atomic_uint vocab_ids = 1;

static int vocab_cmp(const void *pa, const void *pb, void *ctx)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    const llm_grammar_vocab *v = ctx;
    int32_t la = v->len[a], lb = v->len[b];
    int c = memcmp(v->text + v->off[a], v->text + v->off[b], (size_t)(la < lb ? la : lb));
    if (c) return c;
    if (la != lb) return la < lb ? -1 : 1;
    if (v->space_first[a] != v->space_first[b]) return v->space_first[a] ? 1 : -1;
    return (a > b) - (a < b);
}

/* The set of bytes under each node (deduplicated: most are small), for
 * the mask walk's shortcut through subtrees that a state loops over. The
 * sum of subtree sizes is the sum of depths: cheap. */
static void vocab_subtree_bytes(llm_grammar_vocab *v)
{
    int32_t cap = 64, table_cap = 1024;
    v->below = util_xmalloc((size_t)cap * sizeof *v->below);
    int32_t *table = util_xmalloc((size_t)table_cap * sizeof *table);
    memset(table, 0xff, (size_t)table_cap * sizeof *table);
    for (int32_t i = 0; i < v->n_trie; i++) {
        struct ascii_set set = {{0, 0}};
        bool ascii = true;
        for (int32_t j = i + 1; j < v->trie[i].end && ascii; j++) {
            uint8_t b = v->trie[j].byte;
            ascii = b < 128;
            set.w[b >> 6 & 1] |= 1ull << (b & 63);
        }
        if (!ascii) {
            v->trie[i].below = -1;
            continue;
        }
        uint64_t h = (set.w[0] * 0x9e3779b97f4a7c15ull) ^ (set.w[1] * 0xc2b2ae3d27d4eb4full);
        size_t k = (size_t)(h >> 32) & (size_t)(table_cap - 1);
        for (; table[k] >= 0; k = (k + 1) & (size_t)(table_cap - 1))
            if (!memcmp(&v->below[table[k]], &set, sizeof set)) break;
        if (table[k] < 0) {
            if (v->n_below == cap) {
                cap *= 2;
                v->below = util_xrealloc(v->below, (size_t)cap * sizeof *v->below);
            }
            v->below[v->n_below] = set;
            table[k] = v->n_below++;
            if (2 * v->n_below > table_cap) { /* rehash */
                free(table);
                table_cap *= 2;
                table = util_xmalloc((size_t)table_cap * sizeof *table);
                memset(table, 0xff, (size_t)table_cap * sizeof *table);
                for (int32_t e = 0; e < v->n_below; e++) {
                    const struct ascii_set *b = &v->below[e];
                    uint64_t he = (b->w[0] * 0x9e3779b97f4a7c15ull) ^ (b->w[1] * 0xc2b2ae3d27d4eb4full);
                    size_t q = (size_t)(he >> 32) & (size_t)(table_cap - 1);
                    while (table[q] >= 0) q = (q + 1) & (size_t)(table_cap - 1);
                    table[q] = e;
                }
                v->trie[i].below = v->n_below - 1;
                continue;
            }
        }
        v->trie[i].below = table[k];
    }
    free(table);
}

static void vocab_build_trie(llm_grammar_vocab *v)
{
    int32_t n = 0;
    size_t nodes_cap = 1;
    int32_t *order = util_xmalloc((size_t)v->n_tokens * sizeof *order);
    for (int32_t t = 0; t < v->n_tokens; t++)
        if (v->len[t] > 0 && v->len[t] <= VOCAB_MAX_TOKEN_LEN && t != v->eos) {
            order[n++] = t;
            nodes_cap += (size_t)v->len[t];
        }
    qsort_r(order, (size_t)n, sizeof *order, vocab_cmp, v);

    v->trie = util_xmalloc(nodes_cap * sizeof *v->trie);
    v->trie_tokens = util_xmalloc(((size_t)n + 1) * sizeof *v->trie_tokens);
    int32_t *path = util_xmalloc(((size_t)VOCAB_MAX_TOKEN_LEN + 1) * sizeof *path);
    int32_t n_nodes = 0, n_tt = 0, depth = 0, prev = -1;
    v->space_child = -1;
    for (int32_t k = 0; k < n; k++) {
        int32_t t = order[k];
        const uint8_t *s = (const uint8_t *)v->text + v->off[t];
        int32_t len = v->len[t], lcp = 0;
        if (prev >= 0) {
            const uint8_t *p = (const uint8_t *)v->text + v->off[prev];
            int32_t lp = v->len[prev];
            while (lcp < len && lcp < lp && p[lcp] == s[lcp]) lcp++;
        }
        while (depth > lcp) v->trie[path[--depth]].end = n_nodes;
        for (; depth < len; depth++) {
            v->trie[n_nodes] = (struct trie_node){.depth = (uint16_t)(depth + 1),
                                                  .byte = s[depth],
                                                  .tok_begin = n_tt,
                                                  .tok_sf = n_tt};
            if (depth == 0 && s[0] == ' ') v->space_child = n_nodes;
            path[depth] = n_nodes++;
        }
        /* the node at the end of t's text is the last one made (shorter
         * texts sort first), so its tokens follow its predecessors' */
        v->trie_tokens[n_tt++] = t;
        if (!v->space_first[t]) v->trie[path[len - 1]].tok_sf = n_tt;
        if (len > v->max_depth) v->max_depth = len;
        prev = t;
    }
    while (depth > 0) v->trie[path[--depth]].end = n_nodes;
    v->trie[n_nodes] = (struct trie_node){.end = n_nodes + 1, .tok_begin = n_tt, .tok_sf = n_tt};
    v->n_trie = n_nodes;
    free(path);
    free(order);
    vocab_subtree_bytes(v);
}

llm_grammar_vocab *llm_grammar_vocab_create(const struct llm_grammar_token *tokens, int n_tokens, int32_t eos)
{
    if (!tokens || n_tokens < 1 || eos < -1 || eos >= n_tokens) return NULL;
    llm_grammar_vocab *v = util_xcalloc(1, sizeof *v);
    v->n_tokens = n_tokens;
    v->eos = eos;
    v->id = atomic_fetch_add(&vocab_ids, 1);
    v->off = util_xmalloc((size_t)n_tokens * sizeof *v->off);
    v->len = util_xmalloc((size_t)n_tokens * sizeof *v->len);
    v->space_first = util_xmalloc((size_t)n_tokens * sizeof *v->space_first);
    size_t total = 0;
    for (int t = 0; t < n_tokens; t++)
        if (tokens[t].text && tokens[t].len > 0) total += (size_t)tokens[t].len;
    v->text = util_xmalloc(total + 1);
    total = 0;
    for (int t = 0; t < n_tokens; t++) {
        bool ok = tokens[t].text && tokens[t].len > 0;
        v->off[t] = total;
        v->len[t] = ok ? tokens[t].len : 0;
        /* losing the space only applies to a text that starts with one */
        v->space_first[t] = ok && tokens[t].space_first && tokens[t].text[0] == ' ';
        if (ok) memcpy(v->text + total, tokens[t].text, (size_t)tokens[t].len);
        total += (size_t)v->len[t];
    }
    vocab_build_trie(v);
    return v;
}

void llm_grammar_vocab_free(llm_grammar_vocab *v)
{
    if (!v) return;
    free(v->text);
    free(v->off);
    free(v->len);
    free(v->space_first);
    free(v->trie);
    free(v->trie_tokens);
    free(v->below);
    free(v);
}

int llm_grammar_vocab_size(const llm_grammar_vocab *v)
{
    return v ? v->n_tokens : 0;
}

/* -------------------------------------------------------------- the cache */

struct node {
    int32_t pos, parent; /* parent -1: the bottom of the stack */
};

struct state {
    int64_t tops; /* cache->tops[tops .. tops + n_tops) */
    int32_t n_tops;
    bool accepting;
    uint32_t hash;
    uint32_t *next; /* 256 transitions, or NULL until one is needed */
    uint64_t *mask; /* for vocabulary mask_vocab, or NULL */
    uint32_t mask_vocab;
    int32_t mask_allowed;
    bool loops_known;
    struct ascii_set loops; /* ASCII bytes b with next(state, b) == state */
};

struct llm_grammar_cache {
    struct node *nodes;
    uint32_t *stamp; /* per node: the closure that last reached it */
    int32_t n_nodes, cap_nodes;
    int32_t *node_table; /* open addressing, node ids, -1 empty */
    size_t node_table_cap;
    uint32_t gen;

    struct state *states;
    int32_t n_states, cap_states;
    int32_t *state_table;
    size_t state_table_cap;
    int32_t *tops;
    int64_t n_tops, cap_tops;
    int32_t initial;

    /* the first token's mask differs (space_first), so it has a slot of its own */
    uint64_t *first_mask;
    uint32_t first_vocab;
    int32_t first_allowed;

    /* scratch of a closure and of a mask walk */
    int32_t *work, *found;
    int32_t n_work, cap_work, n_found, cap_found;
    bool accepting, overflow;
    int32_t *walk;
    int walk_cap;

    size_t bytes;
};

struct llm_grammar_matcher {
    llm_grammar *g;
    const llm_grammar_vocab *v;
    int32_t state;
    bool started; /* a token with text was accepted: space_first no longer applies */
    bool ended;   /* EOS was accepted */
    llm_grammar_matcher *prev, *next;
};

static uint32_t mix32(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

static void *cache_grow(struct llm_grammar_cache *c, void *p, int64_t *cap, int64_t need, size_t elem)
{
    if (need <= *cap) return p;
    int64_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    c->bytes += (size_t)(n - *cap) * elem;
    *cap = n;
    return util_xrealloc(p, (size_t)n * elem);
}

static void node_table_rehash(struct llm_grammar_cache *c)
{
    size_t cap = c->node_table_cap ? 2 * c->node_table_cap : 1024;
    c->bytes += (cap - c->node_table_cap) * sizeof(int32_t);
    free(c->node_table);
    c->node_table = util_xmalloc(cap * sizeof *c->node_table);
    memset(c->node_table, 0xff, cap * sizeof *c->node_table);
    c->node_table_cap = cap;
    for (int32_t id = 0; id < c->n_nodes; id++) {
        size_t i =
            mix32((uint64_t)(uint32_t)c->nodes[id].pos << 32 | (uint32_t)c->nodes[id].parent) &
            (cap - 1);
        while (c->node_table[i] >= 0) i = (i + 1) & (cap - 1);
        c->node_table[i] = id;
    }
}

static int32_t node_intern(struct llm_grammar_cache *c, int32_t pos, int32_t parent)
{
    if (2 * (size_t)(c->n_nodes + 1) > c->node_table_cap) node_table_rehash(c);
    size_t mask = c->node_table_cap - 1;
    size_t i = mix32((uint64_t)(uint32_t)pos << 32 | (uint32_t)parent) & mask;
    for (;; i = (i + 1) & mask) {
        int32_t id = c->node_table[i];
        if (id < 0) break;
        if (c->nodes[id].pos == pos && c->nodes[id].parent == parent) return id;
    }
    if (c->n_nodes == c->cap_nodes) {
        int32_t cap = c->cap_nodes ? 2 * c->cap_nodes : 1024;
        c->bytes += (size_t)(cap - c->cap_nodes) * (sizeof *c->nodes + sizeof *c->stamp);
        c->nodes = util_xrealloc(c->nodes, (size_t)cap * sizeof *c->nodes);
        c->stamp = util_xrealloc(c->stamp, (size_t)cap * sizeof *c->stamp);
        memset(c->stamp + c->cap_nodes, 0, (size_t)(cap - c->cap_nodes) * sizeof *c->stamp);
        c->cap_nodes = cap;
    }
    int32_t id = c->n_nodes++;
    c->nodes[id] = (struct node){pos, parent};
    c->stamp[id] = 0;
    c->node_table[i] = id;
    return id;
}

static uint32_t state_hash(const int32_t *tops, int32_t n, bool accepting)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)accepting;
    for (int32_t i = 0; i < n; i++) h = (h ^ (uint32_t)tops[i]) * 0x100000001b3ull;
    return mix32(h);
}

static void state_table_rehash(struct llm_grammar_cache *c)
{
    size_t cap = c->state_table_cap ? 2 * c->state_table_cap : 256;
    c->bytes += (cap - c->state_table_cap) * sizeof(int32_t);
    free(c->state_table);
    c->state_table = util_xmalloc(cap * sizeof *c->state_table);
    memset(c->state_table, 0xff, cap * sizeof *c->state_table);
    c->state_table_cap = cap;
    for (int32_t id = STATE_FIRST; id < c->n_states; id++) {
        size_t i = c->states[id].hash & (cap - 1);
        while (c->state_table[i] >= 0) i = (i + 1) & (cap - 1);
        c->state_table[i] = id;
    }
}

/* The id of the state (tops sorted, no duplicates; accepting). */
static int32_t state_intern(struct llm_grammar_cache *c, const int32_t *tops, int32_t n, bool accepting)
{
    if (n == 0 && !accepting) return STATE_DEAD;
    if (2 * (size_t)(c->n_states + 1) > c->state_table_cap) state_table_rehash(c);
    uint32_t h = state_hash(tops, n, accepting);
    size_t mask = c->state_table_cap - 1;
    size_t i = h & mask;
    for (;; i = (i + 1) & mask) {
        int32_t id = c->state_table[i];
        if (id < 0) break;
        const struct state *s = &c->states[id];
        if (s->hash == h && s->n_tops == n && s->accepting == accepting &&
            (n == 0 || !memcmp(c->tops + s->tops, tops, (size_t)n * sizeof *tops)))
            return id;
    }
    int64_t cap = c->cap_states;
    c->states = cache_grow(c, c->states, &cap, c->n_states + 1, sizeof *c->states);
    c->cap_states = (int32_t)cap;
    c->tops = cache_grow(c, c->tops, &c->cap_tops, c->n_tops + n, sizeof *c->tops);
    int32_t id = c->n_states++;
    c->states[id] =
        (struct state){.tops = c->n_tops, .n_tops = n, .accepting = accepting, .hash = h};
    if (n > 0) memcpy(c->tops + c->n_tops, tops, (size_t)n * sizeof *tops);
    c->n_tops += n;
    c->state_table[i] = id;
    return id;
}

static struct llm_grammar_cache *cache_create(void)
{
    struct llm_grammar_cache *c = util_xcalloc(1, sizeof *c);
    int64_t cap = 0;
    c->states = cache_grow(c, NULL, &cap, 64, sizeof *c->states);
    c->cap_states = (int32_t)cap;
    c->n_states = STATE_FIRST;
    c->states[STATE_UNKNOWN] = (struct state){0};
    c->states[STATE_DEAD] = (struct state){0};
    c->states[STATE_DEAD].next = util_xmalloc(256 * sizeof(uint32_t));
    for (int b = 0; b < 256; b++) c->states[STATE_DEAD].next[b] = STATE_DEAD;
    c->bytes += sizeof *c + 256 * sizeof(uint32_t);
    c->gen = 1;
    return c;
}

static void cache_free(struct llm_grammar_cache *c)
{
    if (!c) return;
    for (int32_t id = 0; id < c->n_states; id++) {
        free(c->states[id].next);
        free(c->states[id].mask);
    }
    free(c->states);
    free(c->state_table);
    free(c->tops);
    free(c->nodes);
    free(c->stamp);
    free(c->node_table);
    free(c->first_mask);
    free(c->work);
    free(c->found);
    free(c->walk);
    free(c);
}

/* -------------------------------------------------------------- closures */

static void closure_visit(struct llm_grammar_cache *c, int32_t node)
{
    if (c->stamp[node] == c->gen) return;
    c->stamp[node] = c->gen;
    if (c->n_work == c->cap_work) {
        int64_t cap = c->cap_work;
        c->work = cache_grow(c, c->work, &cap, c->n_work + 1, sizeof *c->work);
        c->cap_work = (int32_t)cap;
    }
    c->work[c->n_work++] = node;
}

/* Continues a stack at position pos: at the end of an alternative it
 * returns to the parent (or completes the text at the bottom). */
static void closure_add(const llm_grammar *g, struct llm_grammar_cache *c, int32_t pos, int32_t parent)
{
    if (g->syms[pos].kind == LLM_GRAMMAR_END) {
        if (parent < 0)
            c->accepting = true;
        else
            closure_visit(c, parent);
        return;
    }
    closure_visit(c, node_intern(c, pos, parent));
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void closure_begin(struct llm_grammar_cache *c)
{
    if (++c->gen == 0) { /* wrapped: forget every stamp */
        memset(c->stamp, 0, (size_t)c->cap_nodes * sizeof *c->stamp);
        c->gen = 1;
    }
    c->n_work = c->n_found = 0;
    c->accepting = c->overflow = false;
}

/* Expands the stacks queued by closure_add until every top is a terminal,
 * and interns the result. A rule reference is replaced by each of its
 * alternatives, over a node for what follows it (none when nothing does:
 * the tail call that keeps repetitions from growing the stacks). The stamps
 * make each node expand once per closure, which also ends the loops of
 * rules that reach themselves in tail position without reading. */
static int32_t closure_end(llm_grammar *g, struct llm_grammar_cache *c)
{
    while (c->n_work > 0 && !c->overflow) {
        int32_t id = c->work[--c->n_work];
        struct node nd = c->nodes[id];
        struct llm_grammar_sym sym = g->syms[nd.pos];
        if (sym.kind == LLM_GRAMMAR_TERM) {
            if (c->n_found == LLM_GRAMMAR_MAX_STACKS) {
                c->overflow = true;
                break;
            }
            if (c->n_found == c->cap_found) {
                int64_t cap = c->cap_found;
                c->found = cache_grow(c, c->found, &cap, c->n_found + 1, sizeof *c->found);
                c->cap_found = (int32_t)cap;
            }
            c->found[c->n_found++] = id;
            continue;
        }
        UTIL_CHECK(sym.kind == LLM_GRAMMAR_REF);
        int32_t parent = nd.parent;
        if (g->syms[nd.pos + 1].kind != LLM_GRAMMAR_END) parent = node_intern(c, nd.pos + 1, nd.parent);
        const struct llm_grammar_rule *r = &g->rules[sym.arg];
        for (int32_t a = r->alt_begin; a < r->alt_end; a++) closure_add(g, c, g->alts[a], parent);
    }
    if (c->overflow) {
        g->stats.stack_overflows++;
        return STATE_DEAD;
    }
    if (c->n_found > 1) qsort(c->found, (size_t)c->n_found, sizeof *c->found, cmp_i32);
    return state_intern(c, c->found, c->n_found, c->accepting);
}

static int32_t initial_state(llm_grammar *g, struct llm_grammar_cache *c)
{
    closure_begin(c);
    const struct llm_grammar_rule *r = &g->rules[g->root];
    for (int32_t a = r->alt_begin; a < r->alt_end; a++) closure_add(g, c, g->alts[a], -1);
    return closure_end(g, c);
}

static uint32_t next_slow(llm_grammar *g, struct llm_grammar_cache *c, int32_t s, uint8_t b)
{
    if (!c->states[s].next) {
        c->states[s].next = util_xcalloc(256, sizeof(uint32_t));
        c->bytes += 256 * sizeof(uint32_t);
    }
    closure_begin(c);
    const struct state *st = &c->states[s];
    for (int32_t k = 0; k < st->n_tops; k++) {
        struct node nd = c->nodes[c->tops[st->tops + k]];
        if (llm_grammar_byteset_has(&g->sets[g->syms[nd.pos].arg], b))
            closure_add(g, c, nd.pos + 1, nd.parent);
    }
    int32_t next = closure_end(g, c);
    g->stats.transitions_computed++;
    c->states[s].next[b] = (uint32_t)next; /* states[] may have moved */
    return (uint32_t)next;
}

/* The state after byte b from state s. */
static inline uint32_t next_state(llm_grammar *g, struct llm_grammar_cache *c, uint32_t s, uint8_t b)
{
    const uint32_t *row = c->states[s].next;
    if (row && row[b]) return row[b];
    return next_slow(g, c, (int32_t)s, b);
}

/* ------------------------------------------------------------ cache reset */

/* The node `id` of `from` interned in `to`, parents first; map[] holds the
 * copies made so far (-1: none). chain is scratch for the unmapped part. */
static int32_t copy_node(const struct llm_grammar_cache *from, struct llm_grammar_cache *to, int32_t *map,
                         int32_t id, int32_t **chain, int64_t *chain_cap)
{
    int64_t n = 0;
    int32_t k = id;
    for (; k >= 0 && map[k] < 0; k = from->nodes[k].parent) {
        if (n == *chain_cap) {
            *chain_cap = *chain_cap ? 2 * *chain_cap : 64;
            *chain = util_xrealloc(*chain, (size_t)*chain_cap * sizeof **chain);
        }
        (*chain)[n++] = k;
    }
    int32_t parent = k < 0 ? -1 : map[k];
    for (int64_t i = n - 1; i >= 0; i--) {
        int32_t old = (*chain)[i];
        parent = node_intern(to, from->nodes[old].pos, parent);
        map[old] = parent;
    }
    return map[id];
}

static void cache_reset(llm_grammar *g)
{
    struct llm_grammar_cache *old = g->cache, *c = cache_create();
    int32_t *map = util_xmalloc(((size_t)old->n_nodes + 1) * sizeof *map);
    memset(map, 0xff, ((size_t)old->n_nodes + 1) * sizeof *map);
    int32_t *tops = NULL, *chain = NULL;
    int64_t chain_cap = 0;
    for (llm_grammar_matcher *m = g->matchers; m; m = m->next) {
        if (m->state < STATE_FIRST) continue;
        const struct state *s = &old->states[m->state];
        tops = util_xrealloc(tops, ((size_t)s->n_tops + 1) * sizeof *tops);
        for (int32_t k = 0; k < s->n_tops; k++)
            tops[k] = copy_node(old, c, map, old->tops[s->tops + k], &chain, &chain_cap);
        qsort(tops, (size_t)s->n_tops, sizeof *tops, cmp_i32);
        m->state = state_intern(c, tops, s->n_tops, s->accepting);
    }
    free(tops);
    free(chain);
    free(map);
    c->initial = initial_state(g, c);
    cache_free(old);
    g->cache = c;
    g->stats.cache_resets++;
}

static void cache_check(llm_grammar *g)
{
    if (g->cache->bytes > g->cache_limit) cache_reset(g);
}

/* --------------------------------------------------------------- grammars */

void llm_grammar_free_tables(llm_grammar *g); /* grammar_gbnf.c */

llm_grammar *llm_grammar_finish(llm_grammar *g)
{
    atomic_init(&g->refs, 1);
    g->cache_limit = LLM_GRAMMAR_DEFAULT_CACHE_BYTES;
    g->cache = cache_create();
    g->cache->initial = initial_state(g, g->cache);
    return g;
}

llm_grammar *llm_grammar_ref(llm_grammar *g)
{
    if (g) atomic_fetch_add(&g->refs, 1);
    return g;
}

void llm_grammar_unref(llm_grammar *g)
{
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1) return;
    UTIL_CHECK(!g->matchers);
    cache_free(g->cache);
    llm_grammar_free_tables(g);
    free(g);
}

void llm_grammar_set_cache_limit(llm_grammar *g, size_t bytes)
{
    if (g) g->cache_limit = bytes;
}

void llm_grammar_stats(const llm_grammar *g, struct llm_grammar_stats *out)
{
    *out = g->stats;
    out->cache_bytes = g->cache->bytes;
    out->states = g->cache->n_states - STATE_FIRST;
    out->stacks = g->cache->n_nodes;
}

/* ------------------------------------------------------------------ masks */

enum walk_tokens { WALK_ALL, WALK_PLAIN, WALK_SPACE_FIRST };

/* The ASCII bytes that lead from s back to s (inside a JSON string: all but
 * '"', '\\' and controls). */
static const struct ascii_set *state_loops(llm_grammar *g, struct llm_grammar_cache *c, uint32_t s)
{
    if (!c->states[s].loops_known) {
        struct ascii_set set = {{0, 0}};
        for (int b = 0; b < 128; b++)
            if (next_state(g, c, s, (uint8_t)b) == s) set.w[b >> 6] |= 1ull << (b & 63);
        c->states[s].loops = set; /* states[] may have moved */
        c->states[s].loops_known = true;
    }
    return &c->states[s].loops;
}

/* Marks in bits the tokens of trie nodes [from, to) that the grammar allows
 * from state s, where s is the state at depth base (the nodes' parent).
 * Returns how many it marked. Where a path comes back to s and every byte
 * below it loops on s, the whole subtree is allowed without walking it:
 * inside a string, that is most of the vocabulary. */
static int32_t mask_walk(llm_grammar *g, const llm_grammar_vocab *v, uint32_t s, int32_t from, int32_t to,
                         int base, enum walk_tokens which, uint64_t *bits)
{
    struct llm_grammar_cache *c = g->cache;
    if (c->walk_cap < v->max_depth + 1) {
        c->bytes += (size_t)(v->max_depth + 1 - c->walk_cap) * sizeof *c->walk;
        c->walk_cap = v->max_depth + 1;
        c->walk = util_xrealloc(c->walk, (size_t)c->walk_cap * sizeof *c->walk);
    }
    int32_t *st = c->walk, allowed = 0;
    st[base] = (int32_t)s;
    const struct trie_node *trie = v->trie;
    const int32_t *tokens = v->trie_tokens;
    for (int32_t i = from; i < to;) {
        const struct trie_node *nd = &trie[i];
        uint32_t next = next_state(g, c, (uint32_t)st[nd->depth - 1], nd->byte);
        if (next == STATE_DEAD) {
            i = nd->end;
            continue;
        }
        st[nd->depth] = (int32_t)next;
        if (next == s && which == WALK_ALL && nd->below >= 0 && nd->end > i + 1) {
            const struct ascii_set *need = &v->below[nd->below], *loops = state_loops(g, c, s);
            if (!(need->w[0] & ~loops->w[0]) && !(need->w[1] & ~loops->w[1])) {
                int32_t lo = nd->tok_begin, hi = trie[nd->end].tok_begin;
                for (int32_t k = lo; k < hi; k++) bits[tokens[k] >> 6] |= 1ull << (tokens[k] & 63);
                allowed += hi - lo;
                i = nd->end;
                continue;
            }
        }
        int32_t lo = nd->tok_begin, hi = trie[i + 1].tok_begin;
        if (which == WALK_PLAIN) hi = nd->tok_sf;
        if (which == WALK_SPACE_FIRST) lo = nd->tok_sf;
        for (int32_t k = lo; k < hi; k++) {
            int32_t t = tokens[k];
            bits[t >> 6] |= 1ull << (t & 63);
        }
        allowed += hi > lo ? hi - lo : 0;
        i++;
    }
    return allowed;
}

/* The mask of state s for the vocabulary, computed on a miss. first: the
 * output's first token, which loses the space of space_first tokens. */
static const uint64_t *state_mask(llm_grammar *g, const llm_grammar_vocab *v, int32_t s, bool first,
                                  int32_t *allowed)
{
    struct llm_grammar_cache *c = g->cache;
    size_t words = ((size_t)v->n_tokens + 63) / 64;
    if (first ? c->first_mask && c->first_vocab == v->id
              : c->states[s].mask && c->states[s].mask_vocab == v->id) {
        g->stats.mask_hits++;
        *allowed = first ? c->first_allowed : c->states[s].mask_allowed;
        return first ? c->first_mask : c->states[s].mask;
    }
    g->stats.mask_misses++;
    uint64_t *bits = util_xcalloc(words, sizeof *bits);
    int32_t n = 0;
    if (s >= STATE_FIRST) {
        if (!first) {
            n = mask_walk(g, v, (uint32_t)s, 0, v->n_trie, 0, WALK_ALL, bits);
        } else {
            n = mask_walk(g, v, (uint32_t)s, 0, v->n_trie, 0, WALK_PLAIN, bits);
            if (v->space_child >= 0) { /* " x" read as "x": the walk starts below the space */
                n += mask_walk(g, v, (uint32_t)s, v->space_child + 1, v->trie[v->space_child].end,
                               1, WALK_SPACE_FIRST, bits);
                /* a lone "▁" reads as nothing: it only uses up the dummy prefix */
                const struct trie_node *sp = &v->trie[v->space_child];
                for (int32_t k = sp->tok_sf; k < v->trie[v->space_child + 1].tok_begin; k++, n++)
                    bits[v->trie_tokens[k] >> 6] |= 1ull << (v->trie_tokens[k] & 63);
            }
        }
        c = g->cache;
        if (c->states[s].accepting && v->eos >= 0) {
            bits[v->eos >> 6] |= 1ull << (v->eos & 63);
            n++;
        }
    }
    if (first) {
        if (!c->first_mask) c->bytes += words * sizeof *bits;
        free(c->first_mask);
        c->first_mask = bits;
        c->first_vocab = v->id;
        c->first_allowed = n;
    } else {
        if (!c->states[s].mask) c->bytes += words * sizeof *bits;
        free(c->states[s].mask);
        c->states[s].mask = bits;
        c->states[s].mask_vocab = v->id;
        c->states[s].mask_allowed = n;
    }
    *allowed = n;
    return bits;
}

/* --------------------------------------------------------------- matchers */

llm_grammar_matcher *llm_grammar_matcher_create(llm_grammar *g, const llm_grammar_vocab *v)
{
    if (!g || !v) return NULL;
    llm_grammar_matcher *m = util_xcalloc(1, sizeof *m);
    m->g = llm_grammar_ref(g);
    m->v = v;
    m->state = g->cache->initial;
    m->next = g->matchers;
    if (g->matchers) g->matchers->prev = m;
    g->matchers = m;
    return m;
}

void llm_grammar_matcher_free(llm_grammar_matcher *m)
{
    if (!m) return;
    if (m->prev)
        m->prev->next = m->next;
    else
        m->g->matchers = m->next;
    if (m->next) m->next->prev = m->prev;
    llm_grammar_unref(m->g);
    free(m);
}

int llm_grammar_matcher_mask_logits(llm_grammar_matcher *m, float *logits)
{
    if (!m || !logits) return -EINVAL;
    const llm_grammar_vocab *v = m->v;
    if (m->ended) {
        for (int32_t i = 0; i < v->n_tokens; i++) logits[i] = -INFINITY;
        return 0;
    }
    cache_check(m->g);
    int32_t allowed;
    const uint64_t *bits = state_mask(m->g, v, m->state, !m->started, &allowed);
    llm_grammar_apply_mask(bits, v->n_tokens, logits);
    return allowed;
}

int llm_grammar_matcher_accept(llm_grammar_matcher *m, int32_t token)
{
    if (!m || m->ended) return -EINVAL;
    const llm_grammar_vocab *v = m->v;
    if (token < 0 || token >= v->n_tokens) return -EINVAL;
    llm_grammar *g = m->g;
    cache_check(g);
    struct llm_grammar_cache *c = g->cache;
    if (token == v->eos) {
        if (!c->states[m->state].accepting) return -EINVAL;
        m->ended = true;
        return 0;
    }
    const uint8_t *text = (const uint8_t *)v->text + v->off[token];
    int32_t len = v->len[token];
    if (len > VOCAB_MAX_TOKEN_LEN) return -EINVAL;
    if (!m->started && v->space_first[token]) {
        text++, len--;
        if (len == 0) { /* a lone "▁" first: no text, the dummy prefix is used up */
            m->started = true;
            return 0;
        }
    }
    if (len <= 0) return -EINVAL;
    uint32_t s = (uint32_t)m->state;
    for (int32_t i = 0; i < len && s != STATE_DEAD; i++) s = next_state(g, g->cache, s, text[i]);
    if (s == STATE_DEAD) return -EINVAL;
    m->state = (int32_t)s;
    m->started = true;
    return 0;
}

bool llm_grammar_matcher_accepting(const llm_grammar_matcher *m)
{
    return m && !m->ended && m->g->cache->states[m->state].accepting;
}

bool llm_grammar_matcher_finished(const llm_grammar_matcher *m)
{
    if (!m || m->ended) return false;
    const struct state *s = &m->g->cache->states[m->state];
    return s->accepting && s->n_tops == 0;
}
