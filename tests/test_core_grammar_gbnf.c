/*
 * Tests for core/grammar_gbnf.c and core/grammar_matcher.c: the GBNF parser (every
 * construct, and errors with their line:column) and the matcher on byte
 * strings, with one token per byte so that the mask and accept can be
 * checked byte by byte. Where a grammar is regular, its language is
 * compared with a POSIX extended regular expression over every string of
 * a small alphabet up to a length; the matcher's mask is checked against
 * accept on every step.
 */
#include "core/grammar.h"
#include "core/grammar_internal.h"
#include "tests/grammar_helpers.h"
#include "tests/utf8_valid.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------- helpers */

static struct gh_vocab bytes;

static void setup_bytes(void)
{
    bytes = gh_byte_vocab();
}

static void teardown_bytes(void)
{
    gh_vocab_free(&bytes);
}

static llm_grammar *compile(const char *text)
{
    llm_grammar *g = NULL;
    char err[256];
    int rc = llm_grammar_compile_gbnf(text, strlen(text), &g, err, sizeof err);
    cr_assert_eq(rc, 0, "compiling %s: %s", text, err);
    cr_assert_not_null(g);
    return g;
}

/* Asserts the grammar is refused with a message that starts with want
 * (its "line:column:") and contains also (when not NULL). */
static void compile_fails(const char *text, const char *want, const char *also)
{
    llm_grammar *g = (llm_grammar *)1;
    char err[256];
    int rc = llm_grammar_compile_gbnf(text, strlen(text), &g, err, sizeof err);
    cr_assert_eq(rc, -EINVAL, "%s compiled", text);
    cr_assert_null(g);
    cr_assert(!strncmp(err, want, strlen(want)), "%s: got \"%s\", want \"%s...\"", text, err, want);
    if (also) cr_assert(strstr(err, also), "%s: got \"%s\", want \"%s\" in it", text, err, also);
    cr_assert(!strchr(err, '\n'), "one line: %s", err);
}

/* Feeds s[0..n) byte by byte; at every step the mask must allow exactly
 * the bytes accept takes (checked on a second matcher, which replays the
 * prefix for each candidate byte only when check_all). Returns whether the
 * whole string is a sentence. */
static bool matches_n(llm_grammar *g, const char *s, size_t n)
{
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, bytes.v);
    float logits[257];
    bool ok = true;
    for (size_t i = 0; i <= n && ok; i++) {
        for (int k = 0; k < 257; k++) logits[k] = 1.0f;
        int allowed = llm_grammar_matcher_mask_logits(m, logits);
        int counted = 0;
        for (int k = 0; k < 257; k++) {
            cr_assert(logits[k] == 1.0f || logits[k] == -INFINITY);
            counted += logits[k] == 1.0f;
        }
        cr_assert_eq(allowed, counted);
        cr_assert_eq(logits[GH_BYTE_EOS] == 1.0f, llm_grammar_matcher_accepting(m));
        if (i == n) break;
        uint8_t b = (uint8_t)s[i];
        int rc = llm_grammar_matcher_accept(m, b);
        cr_assert_eq(rc == 0, logits[b] == 1.0f, "byte %zu (0x%02x): accept %d vs mask", i, b, rc);
        ok = rc == 0;
    }
    ok = ok && llm_grammar_matcher_accepting(m);
    if (ok) {
        cr_assert_eq(llm_grammar_matcher_accept(m, GH_BYTE_EOS), 0);
        cr_assert_eq(llm_grammar_matcher_accept(m, 'a'), -EINVAL); /* nothing after EOS */
    }
    llm_grammar_matcher_free(m);
    return ok;
}

static bool matches(llm_grammar *g, const char *s)
{
    return matches_n(g, s, strlen(s));
}

/* Compares the grammar with a regular expression on every string of up
 * to max_len characters of alphabet. */
static void same_language(const char *gbnf, const char *regex, const char *alphabet, int max_len)
{
    llm_grammar *g = compile(gbnf);
    regex_t re;
    cr_assert_eq(regcomp(&re, regex, REG_EXTENDED | REG_NOSUB), 0);
    int k = (int)strlen(alphabet);
    char s[32];
    int idx[32];
    int n_yes = 0, n_total = 0;
    for (int len = 0; len <= max_len; len++) {
        memset(idx, 0, sizeof idx);
        for (;;) {
            for (int i = 0; i < len; i++) s[i] = alphabet[idx[i]];
            s[len] = '\0';
            bool want = regexec(&re, s, 0, NULL, 0) == 0;
            bool got = matches(g, s);
            cr_assert_eq(got, want, "%s on \"%s\": grammar %d, regex %d", gbnf, s, got, want);
            n_yes += got;
            n_total++;
            int i = len - 1;
            while (i >= 0 && ++idx[i] == k) idx[i--] = 0;
            if (i < 0) break;
        }
    }
    cr_assert_gt(n_yes, 0, "the language is not empty");
    cr_assert_lt(n_yes, n_total, "nor everything");
    regfree(&re);
    llm_grammar_unref(g);
}

TestSuite(gbnf, .init = setup_bytes, .fini = teardown_bytes);

/* --------------------------------------------------------- constructs */

Test(gbnf, literal_escapes_are_code_points_written_as_utf8)
{
    llm_grammar *g = compile("root ::= \"a\\n\\t\\r\\\\\\\"\\x41\\u00e9\\U0001F600\\[\\]\"");
    cr_assert(matches(g, "a\n\t\r\\\"A\xc3\xa9\xf0\x9f\x98\x80[]"));
    cr_assert(!matches(g, "a\n\t\r\\\"A\xc3\xa9\xf0\x9f\x98\x80["));
    llm_grammar_unref(g);
    g = compile("root ::= \"\\xff\""); /* \xNN is U+00NN, as in llama.cpp */
    cr_assert(matches(g, "\xc3\xbf"));
    cr_assert(!matches(g, "\xff"));
    llm_grammar_unref(g);
}

Test(gbnf, alternatives_groups_and_sequences_match_their_regex)
{
    same_language("root ::= \"ab\" | \"c\" ( \"a\" | \"bc\" ) \"b\"", "^(ab|c(a|bc)b)$", "abc", 5);
    same_language("root ::= (\"ab\" | \"c\")* \"a\"?", "^(ab|c)*a?$", "abc", 7);
}

Test(gbnf, repetition_operators_match_their_regex)
{
    same_language("root ::= \"a\"+ \"b\"*", "^a+b*$", "ab", 7);
    same_language("root ::= (\"ab\"){2,3}", "^(ab){2,3}$", "ab", 8);
    same_language("root ::= \"a\"{3}", "^a{3}$", "ab", 6);
    same_language("root ::= \"a\"{2,} \"b\"", "^a{2,}b$", "ab", 7);
    same_language("root ::= \"a\"{0,2} \"b\"{1,3}", "^a{0,2}b{1,3}$", "ab", 7);
    same_language("root ::= [ab]{1,2}{2}", "^([ab]{1,2}){2}$", "abc", 6);
    same_language("root ::= \"x\"{0} \"a\"", "^a$", "ax", 3);
}

Test(gbnf, character_classes_ranges_and_negation_match_their_regex)
{
    same_language("root ::= [a-c]+ [^a-c]", "^[a-c]+[^a-c]$", "abcdx", 4);
    same_language("root ::= [\\]\\-a]*", "^[]a-]*$", "]-ab", 4);
    same_language("root ::= [-a] [a-]", "^[-a][a-]$", "-ab", 3);
}

Test(gbnf, comments_newlines_and_continuation_lines)
{
    llm_grammar *g = compile("# a comment line\n"
                              "root ::= item (\n"
                              "    \",\" item   # inside a group, newlines are spaces\n"
                              ")*\n"
                              "\n"
                              "item ::= \"x\"\n"
                              "       | \"y\"   # a line that starts with | continues the rule\n"
                              "       | \"z\"\r\n");
    cr_assert(matches(g, "x,y,z"));
    cr_assert(matches(g, "z"));
    cr_assert(!matches(g, "x,"));
    cr_assert(!matches(g, "w"));
    llm_grammar_unref(g);
}

Test(gbnf, rules_may_be_used_before_they_are_defined_and_recurse)
{
    llm_grammar *g = compile("root ::= expr\n"
                              "expr ::= term (\"+\" term)*\n"
                              "term ::= [0-9]+ | \"(\" expr \")\"\n");
    cr_assert(matches(g, "1+2"));
    cr_assert(matches(g, "(1+(22+3))+4"));
    cr_assert(!matches(g, "(1+2"));
    cr_assert(!matches(g, "1+"));
    llm_grammar_unref(g);
}

Test(gbnf, empty_alternatives_and_nullable_repetitions)
{
    same_language("root ::= \"a\" | \n", "^a?$", "ab", 3);
    /* x* of a nullable x loops without reading; it must still terminate */
    same_language("root ::= (\"a\"?)* \"b\"", "^a*b$", "ab", 6);
    same_language("root ::= ( \"\" | \"ab\" )+", "^(ab)*$", "ab", 6);
}

Test(gbnf, names_with_dashes_underscores_and_digits)
{
    llm_grammar *g = compile("root ::= a-1 b_2\na-1 ::= \"a\"\nb_2 ::= \"b\"");
    cr_assert(matches(g, "ab"));
    llm_grammar_unref(g);
}

Test(gbnf, deep_nesting_grows_the_stacks_without_limit)
{
    llm_grammar *g = compile("root ::= \"(\" root \")\" | \"x\"");
    enum { DEPTH = 3000 };
    static char s[2 * DEPTH + 2];
    memset(s, '(', DEPTH);
    s[DEPTH] = 'x';
    memset(s + DEPTH + 1, ')', DEPTH);
    cr_assert(matches_n(g, s, sizeof s - 1));
    cr_assert(!matches_n(g, s, sizeof s - 2));
    llm_grammar_unref(g);
}

/* ------------------------------------------------------------- Unicode */

Test(gbnf, unicode_class_accepts_its_characters_only_whole)
{
    llm_grammar *g = compile("root ::= [α-ω]");
    cr_assert(matches(g, "β"));
    cr_assert(matches(g, "ω"));
    cr_assert(!matches(g, "a"));
    cr_assert(!matches(g, "Α"));            /* capital alpha */
    cr_assert(!matches(g, "\xce"));         /* a lone lead byte */
    cr_assert(!matches(g, "\xce\xb2\xb2")); /* a stray continuation byte after it */
    /* after the lead byte, only the continuation bytes of α..ω are allowed */
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, bytes.v);
    cr_assert_eq(llm_grammar_matcher_accept(m, 0xce), 0);
    cr_assert(!llm_grammar_matcher_accepting(m));
    float logits[257] = {0};
    int n = llm_grammar_matcher_mask_logits(m, logits);
    cr_assert_eq(n, 0xbf - 0xb1 + 1); /* α..ο are CE B1..BF (π..ω are CF 80..89) */
    llm_grammar_matcher_free(m);
    m = llm_grammar_matcher_create(g, bytes.v);
    cr_assert_eq(llm_grammar_matcher_accept(m, 0xcf), 0);
    for (int k = 0; k < 257; k++) logits[k] = 0;
    cr_assert_eq(llm_grammar_matcher_mask_logits(m, logits), 0x89 - 0x80 + 1);
    llm_grammar_matcher_free(m);
    llm_grammar_unref(g);
}

Test(gbnf, negated_and_any_classes_take_every_valid_character_and_nothing_else)
{
    llm_grammar *g = compile("root ::= [^a]");
    llm_grammar *any = compile("root ::= .");
    static const char *const good[] = {"b",
                                       "\x7f",
                                       "\xc2\x80",
                                       "\xdf\xbf",
                                       "\xe0\xa0\x80",
                                       "\xed\x9f\xbf",
                                       "\xee\x80\x80",
                                       "\xef\xbf\xbf",
                                       "\xf0\x90\x80\x80",
                                       "\xf4\x8f\xbf\xbf",
                                       "\x00"};
    static const char *const bad[] = {"\xc0\x80",         /* overlong */
                                      "\xe0\x9f\xbf",     /* overlong */
                                      "\xed\xa0\x80",     /* a surrogate */
                                      "\xf4\x90\x80\x80", /* past U+10FFFF */
                                      "\xf8\x88\x80\x80\x80",
                                      "\x80",
                                      "\xff"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        size_t n = good[i][0] ? strlen(good[i]) : 1;
        cr_assert(matches_n(g, good[i], n), "[^a] on good %zu", i);
        cr_assert(matches_n(any, good[i], n), ". on good %zu", i);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert(!matches(g, bad[i]), "[^a] on bad %zu", i);
        cr_assert(!matches(any, bad[i]), ". on bad %zu", i);
    }
    cr_assert(!matches(g, "a"));
    cr_assert(matches(any, "a"));
    cr_assert(!matches(any, "ab"));
    llm_grammar_unref(g);
    llm_grammar_unref(any);
}

Test(gbnf, every_string_a_unicode_grammar_takes_is_valid_utf8)
{
    /* all 3-byte strings over bytes that matter for UTF-8 */
    llm_grammar *g = compile("root ::= [^\\x00-\\x1f]{1,3}");
    static const uint8_t probe[] = {0x20, 0x7f, 0x80, 0x8f, 0x90, 0xbf, 0xc0, 0xc2,
                                    0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff};
    int n_yes = 0;
    for (size_t a = 0; a < sizeof probe; a++)
        for (size_t b = 0; b < sizeof probe; b++)
            for (size_t c = 0; c < sizeof probe; c++) {
                char s[3] = {(char)probe[a], (char)probe[b], (char)probe[c]};
                bool yes = matches_n(g, s, 3);
                cr_assert_eq(yes, utf8_valid(s, 3), "%02x %02x %02x", probe[a], probe[b], probe[c]);
                n_yes += yes;
            }
    cr_assert_gt(n_yes, 50);
    llm_grammar_unref(g);
}

/* -------------------------------------------------------------- errors */

Test(gbnf, errors_name_the_line_and_column)
{
    compile_fails("root ::= foo", "1:10: ", "undefined rule 'foo'");
    compile_fails("root ::= a\na ::= \"x\" b\n", "2:11: ", "undefined rule 'b'");
    compile_fails("root ::= \"a\\q\"", "1:12: ", "unknown escape");
    compile_fails("root ::= \"a\\x4\"", "1:14: ", "hex digits");
    compile_fails("root ::= \"\\uD800\"", "1:13: ", "not a Unicode scalar value");
    compile_fails("root ::= \"abc\n", "1:10: ", "unterminated literal");
    compile_fails("\nroot ::= [a-z", "2:10: ", "unterminated character class");
    compile_fails("root ::= [z-a]", "1:11: ", "backwards");
    compile_fails("root ::= [^\\x00-\\U0010FFFF]", "1:10: ", "matches no character");
    compile_fails("root ::= \"a\"{3,2}", "1:13: ", "max below min");
    compile_fails("root ::= \"a\"{", "1:14: ", "expected a number");
    compile_fails("root ::= \"a\"{2", "1:15: ", "expected '}'");
    compile_fails("root ::= \"a\"{99999}", "1:14: ", "over 10000");
    compile_fails("root ::= * \"a\"", "1:10: ", "nothing before it");
    compile_fails("root ::= ( \"a\"", "1:10: ", "unclosed '('");
    compile_fails("root ::= \"a\" )", "1:14: ", "unmatched ')'");
    compile_fails("root ::= \"a\" }", "1:14: ", "unexpected '}'");
    compile_fails("root = \"a\"", "1:6: ", "expected '::='");
    compile_fails("root ::= \"a\"\nroot ::= \"b\"", "2:1: ", "defined twice");
    compile_fails("rot ::= \"a\"", "1:1: ", "no rule named 'root'");
    compile_fails("", "1:1: ", "no rule named 'root'");
    compile_fails("root ::= \"\xc3\"", "1:11: ", "invalid UTF-8");
}

Test(gbnf, left_recursion_is_refused)
{
    compile_fails("root ::= root \"a\" | \"b\"", "1:1: ", "left recursion: rule 'root'");
    compile_fails("root ::= x\nx ::= y \"a\" | \"b\"\ny ::= x \"c\"\n",
                  "2:1: ", "left recursion: rule 'x'");
    /* through a prefix that can be empty */
    compile_fails("root ::= \"a\"? root \"b\" | \"c\"", "1:1: ", "left recursion");
    compile_fails("root ::= (\"x\"? root) \"b\" | \"c\"", "1:", "left recursion");
    /* a rule that reaches itself only in tail position does not grow the stacks */
    llm_grammar *g = compile("root ::= a\na ::= b | \"x\"\nb ::= a | \"y\"");
    cr_assert(matches(g, "x"));
    cr_assert(matches(g, "y"));
    llm_grammar_unref(g);
}

Test(gbnf, rules_that_can_never_complete_are_refused)
{
    compile_fails("root ::= \"a\" | x\nx ::= \"b\" x", "2:1: ", "rule 'x' can never complete");
    /* unreachable ones do not matter */
    llm_grammar *g = compile("root ::= \"a\"\nx ::= \"b\" x");
    cr_assert(matches(g, "a"));
    llm_grammar_unref(g);
}

Test(gbnf, text_with_nul_bytes_and_null_arguments)
{
    llm_grammar *g = (llm_grammar *)1;
    char err[64];
    cr_assert_eq(llm_grammar_compile_gbnf("root ::= \"a\"\0x", 14, &g, err, sizeof err), -EINVAL);
    cr_assert_null(g);
    cr_assert_eq(llm_grammar_compile_gbnf(NULL, 3, &g, err, sizeof err), -EINVAL);
    cr_assert_eq(llm_grammar_compile_gbnf("root ::= \"a\"", 12, NULL, err, sizeof err), -EINVAL);
    /* a short error buffer is cut, not overrun */
    char tiny[8];
    memset(tiny, 'Z', sizeof tiny);
    cr_assert_eq(llm_grammar_compile_gbnf("root ::= foo", 12, &g, tiny, 5), -EINVAL);
    cr_assert_eq(strlen(tiny), 4);
    cr_assert_eq(tiny[5], 'Z');
}

/* ------------------------------------------------------------- matcher */

Test(gbnf, eos_is_allowed_exactly_when_complete_and_finished_when_nothing_may_follow)
{
    llm_grammar *g = compile("root ::= \"ab\" \"c\"?");
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, bytes.v);
    cr_assert(!llm_grammar_matcher_accepting(m));
    cr_assert_eq(llm_grammar_matcher_accept(m, GH_BYTE_EOS), -EINVAL);
    cr_assert_eq(llm_grammar_matcher_accept(m, 'a'), 0);
    cr_assert_eq(llm_grammar_matcher_accept(m, 'b'), 0);
    cr_assert(llm_grammar_matcher_accepting(m));
    cr_assert(!llm_grammar_matcher_finished(m));
    cr_assert_eq(llm_grammar_matcher_accept(m, 'c'), 0);
    cr_assert(llm_grammar_matcher_finished(m));
    float logits[257] = {0};
    cr_assert_eq(llm_grammar_matcher_mask_logits(m, logits), 1);
    cr_assert_eq(logits[GH_BYTE_EOS], 0.0f);
    cr_assert_eq(llm_grammar_matcher_accept(m, GH_BYTE_EOS), 0);
    for (int k = 0; k < 257; k++) logits[k] = 0;
    cr_assert_eq(llm_grammar_matcher_mask_logits(m, logits), 0);
    cr_assert(!llm_grammar_matcher_accepting(m));
    llm_grammar_matcher_free(m);
    llm_grammar_unref(g);
}

Test(gbnf, refused_tokens_leave_the_matcher_unchanged)
{
    llm_grammar *g = compile("root ::= \"ab\"");
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, bytes.v);
    cr_assert_eq(llm_grammar_matcher_accept(m, 'b'), -EINVAL);
    cr_assert_eq(llm_grammar_matcher_accept(m, -1), -EINVAL);
    cr_assert_eq(llm_grammar_matcher_accept(m, 257), -EINVAL);
    cr_assert_eq(llm_grammar_matcher_accept(m, 'a'), 0);
    cr_assert_eq(llm_grammar_matcher_accept(m, 'a'), -EINVAL);
    cr_assert_eq(llm_grammar_matcher_accept(m, 'b'), 0);
    cr_assert(llm_grammar_matcher_finished(m));
    llm_grammar_matcher_free(m);
    llm_grammar_unref(g);
}

/* A vocabulary of multi-byte tokens: the mask must keep exactly the tokens
 * whose whole text the grammar takes next (checked by feeding each token's
 * bytes to a byte-level matcher at the same place). */
Test(gbnf, multi_byte_tokens_are_allowed_exactly_when_all_their_bytes_are)
{
    static const char *const pieces[] = {"a", "b",    "ab",   "abc", "ba", "c",  "cc", " a",
                                         "α", "\xce", "\xb1", "aα",  "}",  "\"", "",   "abcabc"};
    enum { N = sizeof pieces / sizeof *pieces, EOS = N };
    struct llm_grammar_token t[N + 1];
    for (int i = 0; i < N; i++)
        t[i] = (struct llm_grammar_token){pieces[i], (int)strlen(pieces[i]), false};
    t[N] = (struct llm_grammar_token){NULL, 0, false};
    llm_grammar_vocab *v = llm_grammar_vocab_create(t, N + 1, EOS);
    llm_grammar *g = compile("root ::= ( \"a\" | \"b\" | \"c\" | \" \" | [α-β] )* \"}\"");
    struct util_rng rng;
    util_rng_seed(&rng, 7);
    for (int walk = 0; walk < 50; walk++) {
        llm_grammar_matcher *m = llm_grammar_matcher_create(g, v);
        char text[256];
        size_t len = 0;
        for (int step = 0; step < 12; step++) {
            float logits[N + 1] = {0};
            int n = llm_grammar_matcher_mask_logits(m, logits);
            int allowed[N + 1], k = 0;
            for (int i = 0; i <= N; i++) {
                /* reference: the byte matcher on text + the token */
                bool want;
                if (i == EOS) {
                    want = llm_grammar_matcher_accepting(m);
                } else {
                    llm_grammar_matcher *r = llm_grammar_matcher_create(g, bytes.v);
                    bool ok = t[i].len > 0;
                    for (size_t j = 0; j < len && ok; j++)
                        ok = !llm_grammar_matcher_accept(r, (uint8_t)text[j]);
                    cr_assert(ok || t[i].len == 0);
                    for (int j = 0; j < t[i].len && ok; j++)
                        ok = !llm_grammar_matcher_accept(r, (uint8_t)t[i].text[j]);
                    llm_grammar_matcher_free(r);
                    want = ok;
                }
                cr_assert_eq(logits[i] == 0.0f, want, "token %d after \"%.*s\"", i, (int)len, text);
                if (want) allowed[k++] = i;
            }
            cr_assert_eq(n, k);
            cr_assert_gt(k, 0);
            int pick = allowed[util_rng_next(&rng) % (uint64_t)k];
            cr_assert_eq(llm_grammar_matcher_accept(m, pick), 0);
            if (pick == EOS) break;
            memcpy(text + len, t[pick].text, (size_t)t[pick].len);
            len += (size_t)t[pick].len;
        }
        llm_grammar_matcher_free(m);
    }
    llm_grammar_unref(g);
    llm_grammar_vocab_free(v);
}

Test(gbnf, the_first_token_loses_the_space_of_space_first_pieces)
{
    static const struct llm_grammar_token t[] = {{" {", 2, true}, {"{", 1, false}, {" }", 2, true},
                                          {"}", 1, false}, {" ", 1, true},  {" ", 1, false},
                                          {NULL, 0, false}};
    llm_grammar_vocab *v = llm_grammar_vocab_create(t, 7, 6);
    llm_grammar *g = compile("root ::= \"{\" \" \"? \"}\"");
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, v);
    float logits[7] = {0};
    /* first token: " {" reads "{"; the lone space-first " " reads "" (it
     * only uses up the dummy prefix); the plain " " is a space */
    cr_assert_eq(llm_grammar_matcher_mask_logits(m, logits), 3);
    cr_assert_eq(logits[0], 0.0f);
    cr_assert_eq(logits[1], 0.0f);
    cr_assert_eq(logits[4], 0.0f);
    cr_assert_eq(logits[5], -INFINITY);
    cr_assert_eq(llm_grammar_matcher_accept(m, 4), 0);
    /* after it the space counts: " {" is refused, "{" taken */
    for (int i = 0; i < 7; i++) logits[i] = 0;
    cr_assert_eq(llm_grammar_matcher_mask_logits(m, logits), 1);
    cr_assert_eq(logits[1], 0.0f);
    cr_assert_eq(llm_grammar_matcher_accept(m, 0), -EINVAL);
    llm_grammar_matcher_free(m);
    m = llm_grammar_matcher_create(g, v);
    cr_assert_eq(llm_grammar_matcher_accept(m, 0), 0);
    /* later tokens keep their space: " }" is "{ }", allowed; " " too */
    for (int i = 0; i < 7; i++) logits[i] = 0;
    cr_assert_eq(llm_grammar_matcher_mask_logits(m, logits), 4);
    cr_assert_eq(logits[2], 0.0f);
    cr_assert_eq(logits[3], 0.0f);
    cr_assert_eq(logits[4], 0.0f);
    cr_assert_eq(logits[5], 0.0f);
    cr_assert_eq(llm_grammar_matcher_accept(m, 2), 0);
    cr_assert(llm_grammar_matcher_finished(m));
    llm_grammar_matcher_free(m);
    /* a grammar that starts with a space needs the space kept */
    llm_grammar *sp = compile("root ::= \" {\"");
    m = llm_grammar_matcher_create(sp, v);
    for (int i = 0; i < 7; i++) logits[i] = 0;
    cr_assert_eq(llm_grammar_matcher_mask_logits(m, logits), 2);
    cr_assert_eq(logits[4], 0.0f); /* "▁", then " {" */
    cr_assert_eq(logits[5], 0.0f); /* the plain space */
    cr_assert_eq(llm_grammar_matcher_accept(m, 0), -EINVAL);
    llm_grammar_matcher_free(m);
    llm_grammar_unref(sp);
    llm_grammar_unref(g);
    llm_grammar_vocab_free(v);
}

Test(gbnf, matchers_of_one_grammar_share_its_caches_and_keep_it_alive)
{
    llm_grammar *g = compile("root ::= [a-z]+ \".\"");
    llm_grammar_matcher *a = llm_grammar_matcher_create(g, bytes.v), *b = llm_grammar_matcher_create(g, bytes.v);
    llm_grammar_unref(g); /* the matchers hold their own references */
    float logits[257] = {0};
    cr_assert_eq(llm_grammar_matcher_mask_logits(a, logits), 26);
    for (int k = 0; k < 257; k++) logits[k] = 0;
    cr_assert_eq(llm_grammar_matcher_mask_logits(b, logits), 26);
    struct llm_grammar_stats st;
    llm_grammar_stats(g, &st);
    cr_assert_eq(st.mask_misses, 1);
    cr_assert_eq(st.mask_hits, 1);
    /* a character inside the repetition comes back to the same state */
    cr_assert_eq(llm_grammar_matcher_accept(a, 'x'), 0);
    cr_assert_eq(llm_grammar_matcher_accept(a, 'y'), 0);
    for (int k = 0; k < 257; k++) logits[k] = 0;
    cr_assert_eq(llm_grammar_matcher_mask_logits(a, logits), 27);
    cr_assert_eq(llm_grammar_matcher_accept(a, 'z'), 0);
    for (int k = 0; k < 257; k++) logits[k] = 0;
    cr_assert_eq(llm_grammar_matcher_mask_logits(a, logits), 27);
    llm_grammar_stats(g, &st);
    cr_assert_eq(st.mask_misses, 2, "after [a-z] the state repeats");
    llm_grammar_matcher_free(a);
    llm_grammar_matcher_free(b);
}

/* The caches are rebuilt when over their limit, keeping live matchers
 * where they were: walks give the same texts as with a roomy cache. */
Test(gbnf, cache_resets_keep_every_matcher_where_it_was)
{
    const char *text = "root ::= item+\nitem ::= \"(\" [a-c]{0,5} item* \")\"";
    llm_grammar *big = compile(text), *small = compile(text);
    llm_grammar_set_cache_limit(small, 1); /* rebuild before every step */
    enum { WALKERS = 3 };
    llm_grammar_matcher *mb[WALKERS], *ms[WALKERS];
    struct util_rng rb[WALKERS], rs[WALKERS];
    for (int i = 0; i < WALKERS; i++) {
        mb[i] = llm_grammar_matcher_create(big, bytes.v);
        ms[i] = llm_grammar_matcher_create(small, bytes.v);
        util_rng_seed(&rb[i], 100 + (uint64_t)i);
        util_rng_seed(&rs[i], 100 + (uint64_t)i);
    }
    for (int step = 0; step < 200; step++)
        for (int i = 0; i < WALKERS; i++) {
            float lb[257] = {0}, ls[257] = {0};
            int nb = llm_grammar_matcher_mask_logits(mb[i], lb), ns = llm_grammar_matcher_mask_logits(ms[i], ls);
            cr_assert_eq(nb, ns);
            cr_assert_eq(memcmp(lb, ls, sizeof lb), 0);
            if (nb == 0) continue;
            int allowed[257], k = 0;
            for (int t = 0; t < 257; t++)
                if (lb[t] == 0.0f && t != GH_BYTE_EOS) allowed[k++] = t;
            if (k == 0) continue;
            int pick = allowed[util_rng_next(&rb[i]) % (uint64_t)k];
            util_rng_next(&rs[i]);
            cr_assert_eq(llm_grammar_matcher_accept(mb[i], pick), 0);
            cr_assert_eq(llm_grammar_matcher_accept(ms[i], pick), 0);
            cr_assert_eq(llm_grammar_matcher_accepting(mb[i]), llm_grammar_matcher_accepting(ms[i]));
        }
    struct llm_grammar_stats st;
    llm_grammar_stats(small, &st);
    cr_assert_gt(st.cache_resets, 100);
    llm_grammar_stats(big, &st);
    cr_assert_eq(st.cache_resets, 0);
    for (int i = 0; i < WALKERS; i++) {
        llm_grammar_matcher_free(mb[i]);
        llm_grammar_matcher_free(ms[i]);
    }
    llm_grammar_unref(big);
    llm_grammar_unref(small);
}

Test(gbnf, a_step_too_ambiguous_to_follow_is_refused_and_others_still_work)
{
    /* after n a's there are 2^n ways to continue: past LLM_GRAMMAR_MAX_STACKS the
     * step is refused rather than followed */
    llm_grammar *g = compile("root ::= s\ns ::= \"a\" s \"b\" | \"a\" s \"c\" | \"\"");
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, bytes.v);
    int step = 0;
    float logits[257];
    for (; step < 40; step++) {
        for (int k = 0; k < 257; k++) logits[k] = 0;
        cr_assert_gt(llm_grammar_matcher_mask_logits(m, logits), 0);
        if (logits['a'] != 0.0f) break;
        cr_assert_eq(llm_grammar_matcher_accept(m, 'a'), 0);
    }
    cr_assert_lt(step, 20);
    cr_assert_gt(step, 8);
    cr_assert_eq(llm_grammar_matcher_accept(m, 'a'), -EINVAL);
    cr_assert_eq(logits['b'], 0.0f);
    cr_assert_eq(llm_grammar_matcher_accept(m, 'b'), 0, "other steps still work");
    struct llm_grammar_stats st;
    llm_grammar_stats(g, &st);
    cr_assert_gt(st.stack_overflows, 0);
    llm_grammar_matcher_free(m);
    llm_grammar_unref(g);
}

/* ---------------------------------------------------------- mask kernel */

Test(gbnf, the_avx2_mask_kernel_matches_the_scalar_reference)
{
    if (!util_cpu()->avx2) {
        cr_skip_test("this CPU has no AVX2");
        return;
    }
    static const int32_t sizes[] = {1, 7, 8, 31, 63, 64, 65, 127, 129, 1023, 8000, 32001};
    static const double densities[] = {0.0, 0.01, 0.5, 0.99, 1.0};
    struct util_rng rng;
    util_rng_seed(&rng, 11);
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (size_t d = 0; d < sizeof densities / sizeof *densities; d++) {
            int32_t n = sizes[s];
            size_t words = ((size_t)n + 63) / 64;
            uint64_t *bits = util_xcalloc(words, sizeof *bits);
            float *a = util_xmalloc((size_t)n * sizeof *a), *b = util_xmalloc((size_t)n * sizeof *b);
            for (int32_t i = 0; i < n; i++) {
                if (util_rng_uniform(&rng) < densities[d]) bits[i >> 6] |= 1ull << (i & 63);
                a[i] = b[i] = (float)util_rng_normal(&rng);
            }
            /* bits past n are never read as tokens: set them to catch a kernel that does */
            if (n % 64) bits[words - 1] |= ~0ull << (n % 64);
            llm_grammar_apply_mask_scalar(bits, n, a);
            llm_grammar_apply_mask_avx2(bits, n, b);
            cr_assert_eq(memcmp(a, b, (size_t)n * sizeof *a), 0, "n %d density %g", n, densities[d]);
            for (int32_t i = 0; i < n; i++)
                cr_assert_eq(a[i] == -INFINITY, !(bits[i >> 6] >> (i & 63) & 1));
            free(bits);
            free(a);
            free(b);
        }
}
