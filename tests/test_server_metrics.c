/* Tests for /metrics: histograms, the text format, vLLM's buckets, the
 * server's families, process metrics and the collector hook. */
#include "server/metrics.h"
#include "tests/prometheus_names.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value of the sample line `name` (with labels, exactly as written). */
static double sample(const char *page, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = page; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
    cr_assert_fail("no sample %s", name);
    return NAN;
}

Test(server_metrics, histogram_counts_le_inclusive_and_renders_cumulative)
{
    static const double bounds[] = {0.1, 0.5, 1.0};
    struct srv_histogram h;
    srv_histogram_init(&h, bounds, 3);
    srv_histogram_observe(&h, 0.1); /* on a bound: that bucket */
    srv_histogram_observe(&h, 0.05);
    srv_histogram_observe(&h, 0.7);
    srv_histogram_observe(&h, 3.0); /* +Inf only */
    struct srv_buf out = SRV_BUF_INIT;
    srv_metrics_write_histogram(&out, "x_seconds", "Help text.", &h);
    cr_assert_str_eq(out.data, "# HELP x_seconds Help text.\n"
                               "# TYPE x_seconds histogram\n"
                               "x_seconds_bucket{le=\"0.1\"} 2\n"
                               "x_seconds_bucket{le=\"0.5\"} 2\n"
                               "x_seconds_bucket{le=\"1\"} 3\n"
                               "x_seconds_bucket{le=\"+Inf\"} 4\n"
                               "x_seconds_sum 3.85\n"
                               "x_seconds_count 4\n");
    srv_buf_free(&out);
    srv_histogram_free(&h);
}

Test(server_metrics, one_two_five_buckets_match_vllm)
{
    double b[32];
    int n = srv_buckets_1_2_5(100, b, 32);
    static const double want[] = {1, 2, 5, 10, 20, 50, 100};
    cr_assert_eq(n, 7);
    for (int i = 0; i < n; i++) cr_assert_float_eq(b[i], want[i], 0);
    cr_assert_eq(srv_buckets_1_2_5(2048, b, 32), 11); /* ... 1000, 2000 */
    cr_assert_float_eq(b[10], 2000, 0);
    cr_assert_eq(srv_buckets_1_2_5(1, b, 32), 1);
    cr_assert_eq(srv_buckets_1_2_5(1000000, b, 4), 4, "the cap holds");
}

Test(server_metrics, bucket_bounds_are_vllm_s)
{
    cr_assert_eq(srv_n_buckets_ttft, 22);
    cr_assert_float_eq(srv_buckets_ttft[0], 0.001, 0);
    cr_assert_float_eq(srv_buckets_ttft[8], 0.25, 0);
    cr_assert_float_eq(srv_buckets_ttft[21], 2560.0, 0);
    cr_assert_eq(srv_n_buckets_tpot, 19);
    cr_assert_float_eq(srv_buckets_tpot[0], 0.01, 0);
    cr_assert_float_eq(srv_buckets_tpot[18], 80.0, 0);
    cr_assert_eq(srv_n_buckets_request_latency, 21);
    cr_assert_float_eq(srv_buckets_request_latency[0], 0.3, 0);
    cr_assert_float_eq(srv_buckets_request_latency[20], 7680.0, 0);
}

Test(server_metrics, values_format_as_prometheus_reads_them)
{
    static const struct {
        double v;
        const char *want;
    } cases[] = {{0, "0"},
                 {20000, "20000"},
                 {-3, "-3"},
                 {0.1, "0.1"},
                 {0.001, "0.001"},
                 {2.5, "2.5"},
                 {1e20, "1e+20"},
                 {INFINITY, "+Inf"},
                 {-INFINITY, "-Inf"},
                 {NAN, "NaN"},
                 {1.0 / 3, "0.3333333333333333"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[40];
        srv_metrics_format_value(buf, sizeof buf, cases[i].v);
        cr_assert_str_eq(buf, cases[i].want);
    }
}

Test(server_metrics, label_values_are_escaped)
{
    struct srv_buf b = SRV_BUF_INIT;
    srv_metrics_escape_label(&b, "a\"b\\c\nd");
    cr_assert_str_eq(b.data, "a\\\"b\\\\c\\nd");
    srv_buf_free(&b);
}

static void collector(struct srv_buf *out, void *ctx)
{
    srv_metrics_write_counter(out, "llmd_pim_jobs_total", "PIM jobs.", *(double *)ctx);
}

/* Every line is a comment or `name{labels} value` with a parseable value,
 * and every family has one HELP and one TYPE before its samples. */
static void assert_exposition_format(const char *page)
{
    char last_type[128] = "";
    char text[512];
    for (const char *at = page; prom_next_line(&at, text, sizeof text);) {
        if (strncmp(text, "# TYPE ", 7) == 0) {
            char name[128];
            cr_assert_eq(sscanf(text + 7, "%127s", name), 1);
            cr_assert_str_neq(name, last_type, "TYPE %s twice in a row", name);
            snprintf(last_type, sizeof last_type, "%s", name);
        } else if (text[0] != '#') {
            cr_assert(isalpha((unsigned char)text[0]) || text[0] == '_', "bad line: %s", text);
            const char *value = strrchr(text, ' ');
            cr_assert(value, "no value: %s", text);
            char *stop;
            strtod(value + 1, &stop);
            cr_assert(*stop == '\0' || strcmp(value + 1, "+Inf") == 0, "bad value: %s", text);
            cr_assert(strncmp(text, last_type, strlen(last_type)) == 0,
                      "sample %s outside its family %s", text, last_type);
        }
    }
}

Test(server_metrics, page_holds_every_family_and_the_collector)
{
    struct srv_metrics m;
    srv_metrics_init(&m);
    srv_metrics_set_context_length(&m, 256);
    double pim_jobs = 7;
    cr_assert_eq(srv_metrics_add_collector(&m, collector, &pim_jobs), 0);
    struct srv_request_timing t = {LLM_FINISH_LENGTH, 12, 5, 0.002, 0.030, 0.110};
    srv_metrics_observe_request(&m, &t);
    struct srv_request_timing cancelled = {LLM_FINISH_CANCELLED, 3, 0, 0.5, -1, 0.6};
    srv_metrics_observe_request(&m, &cancelled);
    srv_metrics_observe_inter_token(&m, 0.02);
    srv_metrics_count_http(&m, "/v1/completions", 200);
    srv_metrics_count_http(&m, "/v1/completions", 200);
    srv_metrics_count_http(&m, "/health", 503);
    struct srv_engine_gauges g = {true,
                                  {.running = 3,
                                   .waiting = 2,
                                   .kv_pages_used = 10,
                                   .kv_pages_total = 40,
                                   .steps = 99,
                                   .quest_pages_read = 30,
                                   .quest_pages_total = 120}};
    struct srv_buf out = SRV_BUF_INIT;
    srv_metrics_render(&m, &g, &out);
    const char *page = out.data;
    assert_exposition_format(page);
    cr_assert_gt(prom_check_names(page), 10);

    cr_assert_float_eq(sample(page, "llmd_num_requests_running"), 3, 0);
    cr_assert_float_eq(sample(page, "llmd_num_requests_waiting"), 2, 0);
    cr_assert_float_eq(sample(page, "llmd_kv_pages_used"), 10, 0);
    cr_assert_float_eq(sample(page, "llmd_kv_pages_capacity"), 40, 0);
    cr_assert_float_eq(sample(page, "llmd_kv_cache_usage_perc"), 0.25, 0);
    cr_assert_float_eq(sample(page, "llmd_quest_pages_read_fraction"), 0.25, 0);
    cr_assert_float_eq(sample(page, "llmd_prompt_tokens_total"), 15, 0);
    cr_assert_float_eq(sample(page, "llmd_generation_tokens_total"), 5, 0);
    cr_assert_float_eq(sample(page, "llmd_request_finished_total{finished_reason=\"length\"}"), 1,
                       0);
    cr_assert_float_eq(sample(page, "llmd_request_finished_total{finished_reason=\"cancelled\"}"),
                       1, 0);
    cr_assert_float_eq(sample(page, "llmd_request_finished_total{finished_reason=\"stop\"}"), 0, 0);
    cr_assert_float_eq(
        sample(page, "llmd_http_requests_total{path=\"/v1/completions\",status=\"200\"}"), 2, 0);
    cr_assert_float_eq(sample(page, "llmd_http_requests_total{path=\"/health\",status=\"503\"}"), 1,
                       0);
    /* TTFT only for the request that produced a token. */
    cr_assert_float_eq(sample(page, "llmd_time_to_first_token_seconds_count"), 1, 0);
    cr_assert_float_eq(sample(page, "llmd_time_to_first_token_seconds_bucket{le=\"0.02\"}"), 0, 0);
    cr_assert_float_eq(sample(page, "llmd_time_to_first_token_seconds_bucket{le=\"0.04\"}"), 1, 0);
    /* TPOT = (0.110 - 0.030) / 4 = 0.02 */
    cr_assert_float_eq(sample(page, "llmd_time_per_output_token_seconds_sum"), 0.02, 1e-12);
    cr_assert_float_eq(sample(page, "llmd_inter_token_latency_seconds_count"), 1, 0);
    cr_assert_float_eq(sample(page, "llmd_e2e_request_latency_seconds_count"), 2, 0);
    cr_assert_float_eq(sample(page, "llmd_e2e_request_latency_seconds_bucket{le=\"0.3\"}"), 1, 0);
    cr_assert_float_eq(sample(page, "llmd_request_queue_time_seconds_bucket{le=\"0.3\"}"), 1, 0);
    cr_assert_float_eq(sample(page, "llmd_request_queue_time_seconds_bucket{le=\"0.5\"}"), 2, 0);
    cr_assert_float_eq(sample(page, "llmd_request_prompt_tokens_bucket{le=\"10\"}"), 1, 0);
    cr_assert_float_eq(sample(page, "llmd_request_prompt_tokens_bucket{le=\"200\"}"), 2, 0);
    cr_assert_float_eq(sample(page, "llmd_request_generation_tokens_bucket{le=\"5\"}"), 2, 0);
    cr_assert(sample(page, "process_resident_memory_bytes") > 1e5);
    cr_assert(sample(page, "process_open_fds") >= 3);
    cr_assert(sample(page, "process_max_fds") >= sample(page, "process_open_fds"));
    cr_assert(sample(page, "process_cpu_seconds_total") >= 0);
    cr_assert(sample(page, "process_start_time_seconds") > 1.6e9);
    cr_assert_float_eq(sample(page, "llmd_pim_jobs_total"), 7, 0);
    srv_buf_free(&out);
    srv_metrics_free(&m);
}

Test(server_metrics, token_histograms_wait_for_the_context_length)
{
    struct srv_metrics m;
    srv_metrics_init(&m);
    struct srv_engine_gauges g = {0};
    struct srv_buf out = SRV_BUF_INIT;
    srv_metrics_render(&m, &g, &out);
    assert_exposition_format(out.data);
    cr_assert_null(strstr(out.data, "llmd_request_prompt_tokens"));
    cr_assert_float_eq(sample(out.data, "llmd_kv_pages_used"), 0, 0);
    srv_buf_free(&out);
    srv_metrics_free(&m);
}

Test(server_metrics, collectors_are_bounded)
{
    struct srv_metrics m;
    srv_metrics_init(&m);
    double x = 0;
    for (int i = 0; i < SRV_METRICS_MAX_COLLECTORS; i++)
        cr_assert_eq(srv_metrics_add_collector(&m, collector, &x), 0);
    cr_assert_eq(srv_metrics_add_collector(&m, collector, &x), -ENOSPC);
    srv_metrics_free(&m);
}
