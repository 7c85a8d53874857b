/* Tests for server/pim_json: every bad job body gets an error naming the
 * right parameter; good bodies (nested and base64 tensors, presets and
 * overrides, conv layers) parse to the right structs; presets load from
 * conf/pim; results, failures and devices render. */
#include "server/pim_json.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static char *b64(const void *data, size_t len)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *in = data;
    char *out = util_xmalloc((len + 2) / 3 * 4 + 1), *o = out;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        *o++ = abc[w >> 18 & 63];
        *o++ = abc[w >> 12 & 63];
        *o++ = i + 1 < len ? abc[w >> 6 & 63] : '=';
        *o++ = i + 2 < len ? abc[w & 63] : '=';
    }
    *o = 0;
    return out;
}

struct bad_case {
    const char *body;
    const char *param; /* NULL: no single parameter */
    const char *code;
};

#define VMM_OK   "\"type\":\"vmm\",\"matrix\":[[1,2],[3,4]],\"input\":[1,2]"
#define SOLVE_OK "\"type\":\"solve\",\"matrix\":[[2,1],[1,2]],\"rhs\":[1,2]"
#define KFAC_OK                                                                                    \
    "\"type\":\"kfac_step\",\"activations\":[[1,2],[3,4]],\"output_grads\":[[1],[2]],\"grad\":[["  \
    "1,2]]"
#define ADMM_OK                                                                                    \
    "\"type\":\"admm_compress\",\"matrix\":[[1,2],[3,4]],\"inputs\":[[1,2],[3,4],[5,6]],"          \
    "\"targets\":[[1,2],[3,4],[5,6]]"
#define EVAL_OK "\"type\":\"dataflow_eval\""

static const struct bad_case bad_cases[] = {
    {"", NULL, "invalid_json"},
    {"{\"type\":\"vmm\",", NULL, "invalid_json"},
    {"[]", NULL, "invalid_value"},
    {"{}", "type", "missing_parameter"},
    {"{\"type\":\"nope\"}", "type", "unknown_type"},
    {"{\"type\":7}", "type", "unknown_type"},
    {"{\"type\":\"vmm\",\"type\":\"vmm\"}", NULL, "invalid_json"},
    {"{\"type\":\"vmm\"}", "matrix", "missing_parameter"},
    {"{\"type\":\"vmm\",\"matrix\":[[1,2],[3,4]]}", "input", "missing_parameter"},
    {"{\"type\":\"vmm\",\"matrix\":[[1,2],[3]],\"input\":[1,2]}", "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":[[1,2],[3,[4]]],\"input\":[1,2]}", "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":[[1,2],[3,4]],\"input\":[1,2,3]}", "input", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":[[1,\"2\"],[3,4]],\"input\":[1,2]}", "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":[[1,1e39],[3,4]],\"input\":[1,2]}", "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":[[[[[1]]]]],\"input\":[1]}", "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":[],\"input\":[1]}", "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":[[1,2]],\"input\":\"abc\"}", "input", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":[[[1,2]]],\"input\":[1,2]}", "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[1,1],\"dtype\":\"f16\",\"data\":\"AACAPw==\"},"
     "\"input\":[1]}",
     "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[1,1],\"dtype\":\"f32\",\"data\":\"!!!!!!==\"},"
     "\"input\":[1]}",
     "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[1,1],\"dtype\":\"f32\",\"data\":\"AACAPwAAgD8=\"},"
     "\"input\":[1]}",
     "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[1,1],\"dtype\":\"f32\",\"data\":\"AADAfw==\"},"
     "\"input\":[1]}",
     "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[1,1],\"dtype\":\"f32\",\"data\":\"AA=Afw==\"},"
     "\"input\":[1]}",
     "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[0,1],\"dtype\":\"f32\",\"data\":\"\"},\"input\":[1]"
     "}",
     "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[1,1],\"data\":\"AACAPw==\",\"extra\":1},\"input\":["
     "1]}",
     "matrix", "unknown_parameter"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":\"1\",\"data\":\"AACAPw==\"},\"input\":[1]}",
     "matrix", "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[1,1],\"data\":5},\"input\":[1]}", "matrix",
     "invalid_value"},
    {"{\"type\":\"vmm\",\"matrix\":{\"shape\":[100000,100000],\"data\":\"\"},\"input\":[1]}",
     "matrix", "too_large"},
    {"{" VMM_OK ",\"foo\":1}", "foo", "unknown_parameter"},
    {"{" VMM_OK ",\"device\":{\"adc_bits\":99}}", "device.adc_bits", "invalid_value"},
    {"{" VMM_OK ",\"device\":{\"adc_bits\":2.5}}", "device.adc_bits", "invalid_value"},
    {"{" VMM_OK ",\"device\":{\"nope\":1}}", "device.nope", "unknown_parameter"},
    {"{" VMM_OK ",\"device\":\"nonexistent\"}", "device", "unknown_preset"},
    {"{" VMM_OK ",\"device\":{\"preset\":\"nonexistent\"}}", "device.preset", "unknown_preset"},
    {"{" VMM_OK ",\"device\":{\"preset\":3}}", "device.preset", "invalid_value"},
    {"{" VMM_OK ",\"device\":5}", "device", "invalid_value"},
    {"{" VMM_OK ",\"device\":{\"signed_mode\":\"x\"}}", "device.signed_mode", "invalid_value"},
    {"{" VMM_OK ",\"device\":{\"read_noise_model\":1}}", "device.read_noise_model",
     "invalid_value"},
    {"{" VMM_OK ",\"device\":{\"adc_flip\":1}}", "device.adc_flip", "invalid_value"},
    {"{" VMM_OK ",\"device\":{\"prog_noise\":-1}}", "device.prog_noise", "invalid_value"},
    {"{" VMM_OK ",\"device\":{\"dac_bits\":8}}", "device.dac_bits", "invalid_value"},
    {"{" VMM_OK ",\"dataflow\":\"foo\"}", "dataflow", "invalid_value"},
    {"{" VMM_OK ",\"calibrate_adc\":1}", "calibrate_adc", "invalid_value"},
    {"{" VMM_OK ",\"seed\":-1}", "seed", "invalid_value"},
    {"{" VMM_OK ",\"seed\":1.5}", "seed", "invalid_value"},
    {"{\"type\":\"solve\",\"matrix\":[[1,2,3],[4,5,6]],\"rhs\":[1,2]}", "matrix", "invalid_value"},
    {"{\"type\":\"solve\",\"matrix\":[[2,1],[1,2]],\"rhs\":[1,2,3]}", "rhs", "invalid_value"},
    {"{\"type\":\"solve\",\"matrix\":[[2,1],[1,2]]}", "rhs", "missing_parameter"},
    {"{" SOLVE_OK ",\"max_iterations\":-1}", "max_iterations", "invalid_value"},
    {"{" SOLVE_OK ",\"refine\":\"yes\"}", "refine", "invalid_value"},
    {"{" SOLVE_OK ",\"tolerance\":2}", "tolerance", "invalid_value"},
    {"{" SOLVE_OK ",\"residual_bits\":64}", "residual_bits", "invalid_value"},
    {"{\"type\":\"invert\",\"matrix\":[1,2]}", "matrix", "invalid_value"},
    {"{\"type\":\"kfac_step\",\"activations\":[[1,2],[3,4]],\"output_grads\":[[1],[2]]}", "grad",
     "missing_parameter"},
    {"{" KFAC_OK ",\"damping\":0}", "damping", "invalid_value"},
    {"{\"type\":\"kfac_step\",\"activations\":[[1,2],[3,4]],\"output_grads\":[[1],[2],[3]],"
     "\"grad\":[[1,2]]}",
     "output_grads", "invalid_value"},
    {"{\"type\":\"kfac_step\",\"activations\":[[1,2],[3,4]],\"output_grads\":[[1],[2]],\"grad\":[["
     "1,2,3]]}",
     "grad", "invalid_value"},
    {"{\"type\":\"sme_map\",\"matrix\":[[1,2]],\"weight_bits\":40}", "weight_bits",
     "invalid_value"},
    {"{\"type\":\"sme_map\",\"matrix\":[[1,2]],\"input\":[1,2,3]}", "input", "invalid_value"},
    {"{\"type\":\"sme_map\",\"matrix\":[[1,2]],\"max_bits\":-1}", "max_bits", "invalid_value"},
    {"{" ADMM_OK ",\"block\":[1]}", "block", "invalid_value"},
    {"{" ADMM_OK ",\"block\":[1,0]}", "block", "invalid_value"},
    {"{" ADMM_OK ",\"keep_ratio\":2}", "keep_ratio", "invalid_value"},
    {"{" ADMM_OK ",\"levels\":1}", "levels", "invalid_value"},
    {"{" ADMM_OK ",\"rho\":-1}", "rho", "invalid_value"},
    {"{" ADMM_OK ",\"mismatch_sigma\":-0.5}", "mismatch_sigma", "invalid_value"},
    {"{\"type\":\"admm_compress\",\"matrix\":[[1,2],[3,4]],\"inputs\":[[1,2],[3,4],[5,6]],"
     "\"targets\":[[1,2],[3,4]]}",
     "targets", "invalid_value"},
    {"{\"type\":\"admm_compress\",\"matrix\":[[1,2],[3,4]],\"inputs\":[[1,2,3]],\"targets\":[[1,2]]"
     "}",
     "inputs", "invalid_value"},
    {"{" EVAL_OK "}", "layers", "invalid_value"},
    {"{" EVAL_OK ",\"layers\":[]}", "layers", "invalid_value"},
    {"{" EVAL_OK ",\"layers\":[{\"in\":0,\"out\":1}]}", "layers[0].in", "invalid_value"},
    {"{" EVAL_OK ",\"layers\":[{\"in\":4,\"out\":4},{\"in\":1}]}", "layers[1]",
     "missing_parameter"},
    {"{" EVAL_OK ",\"layers\":[{\"in\":2,\"out\":2,\"bogus\":1}]}", "layers[0].bogus",
     "unknown_parameter"},
    {"{" EVAL_OK ",\"layers\":[{\"conv\":{\"in_channels\":3,\"out_channels\":8}}]}",
     "layers[0].conv", "missing_parameter"},
    {"{" EVAL_OK ",\"layers\":[{\"conv\":{\"in_channels\":3,\"out_channels\":8,\"kernel\":[3]}}]}",
     "layers[0].conv.kernel", "invalid_value"},
    {"{" EVAL_OK ",\"layers\":[5]}", "layers[0]", "invalid_value"},
    {"{" EVAL_OK ",\"layers\":[{\"in\":4,\"out\":4}],\"dataflows\":[\"x\"]}", "dataflows",
     "invalid_value"},
    {"{" EVAL_OK ",\"layers\":[{\"in\":4,\"out\":4}],\"dataflows\":[]}", "dataflows",
     "invalid_value"},
};

Test(pim_json, every_bad_body_names_its_parameter)
{
    struct pim_json_limits lim;
    pim_json_limits_default(&lim);
    for (size_t i = 0; i < sizeof bad_cases / sizeof *bad_cases; i++) {
        const struct bad_case *c = &bad_cases[i];
        struct pim_job job;
        struct pim_json_error err = {0};
        int rc = pim_json_parse_job(c->body, strlen(c->body), &lim, NULL, &job, &err);
        cr_assert_lt(rc, 0, "accepted: %s", c->body);
        cr_assert_str_eq(err.param, c->param ? c->param : "", "%s: param '%s' (%s)", c->body,
                         err.param, err.message);
        cr_assert_str_eq(err.code, c->code, "%s: code %s (%s)", c->body, err.code, err.message);
        cr_assert_str_eq(err.type, "invalid_request_error");
        cr_assert_gt(strlen(err.message), 5);
        cr_assert_null(job.matrix.data, "no tensor left behind: %s", c->body);
    }
}

/* An unknown name is answered with the names that are known. */
Test(pim_json, unknown_names_list_the_accepted_ones)
{
    struct pim_json_limits lim;
    pim_json_limits_default(&lim);
    const char *bodies[] = {"{" VMM_OK ",\"dataflow\":\"foo\"}",
                            "{" EVAL_OK ",\"layers\":[{\"in\":4,\"out\":4}],\"dataflows\":[\"x\"]}",
                            "{" VMM_OK ",\"device\":\"nonexistent\"}"};
    const char *want[] = {"isaac, cascade, neural_pim", "isaac, cascade, neural_pim", "isaac"};
    for (int i = 0; i < 3; i++) {
        struct pim_job job;
        struct pim_json_error err = {0};
        cr_assert_lt(pim_json_parse_job(bodies[i], strlen(bodies[i]), &lim, NULL, &job, &err), 0);
        cr_assert(strstr(err.message, want[i]), "%s: %s", bodies[i], err.message);
    }
}

Test(pim_json, limits_are_enforced_with_e2big)
{
    struct pim_json_limits lim;
    pim_json_limits_default(&lim);
    lim.max_tensor_elements = 3;
    struct pim_job job;
    struct pim_json_error err = {0};
    const char *body = "{\"type\":\"vmm\",\"matrix\":[[1,2],[3,4]],\"input\":[1,2]}";
    cr_assert_eq(pim_json_parse_job(body, strlen(body), &lim, NULL, &job, &err), -E2BIG);
    cr_assert_str_eq(err.param, "matrix");
    lim.max_tensor_elements = 4;
    lim.max_total_elements = 5;
    cr_assert_eq(pim_json_parse_job(body, strlen(body), &lim, NULL, &job, &err), -E2BIG);
    cr_assert_str_eq(err.param, "input");
    pim_json_limits_default(&lim);
    lim.max_layers = 1;
    const char *layers =
        "{\"type\":\"dataflow_eval\",\"layers\":[{\"in\":1,\"out\":1},{\"in\":1,\"out\":1}]}";
    cr_assert_eq(pim_json_parse_job(layers, strlen(layers), &lim, NULL, &job, &err), -E2BIG);
    cr_assert_str_eq(err.param, "layers");
}

Test(pim_json, nested_and_base64_tensors_parse_alike)
{
    float m[6] = {1.5f, -2, 3, 4, 5.25f, -6e-3f}, x[3] = {1, 0, -1};
    char *mb = b64(m, sizeof m), *xb = b64(x, sizeof x);
    char body[1024];
    snprintf(body, sizeof body,
             "{\"type\":\"vmm\",\"seed\":7,\"dataflow\":\"cascade\","
             "\"matrix\":{\"shape\":[2,3],\"dtype\":\"f32\",\"data\":\"%s\"},"
             "\"input\":{\"shape\":[1,3],\"data\":\"%s\"}}",
             mb, xb);
    struct pim_job a, b;
    struct pim_json_error err = {0};
    cr_assert_eq(pim_json_parse_job(body, strlen(body), NULL, NULL, &a, &err), 0, "%s",
                 err.message);
    const char *nested =
        "{\"type\":\"vmm\",\"matrix\":[[1.5,-2,3],[4,5.25,-6e-3]],\"input\":[[1,0,-1]]}";
    cr_assert_eq(pim_json_parse_job(nested, strlen(nested), NULL, NULL, &b, &err), 0, "%s",
                 err.message);
    cr_assert_eq(a.matrix.ndim, 2);
    cr_assert_eq(a.matrix.shape[1], 3);
    cr_assert_arr_eq(a.matrix.data, b.matrix.data, sizeof m);
    cr_assert_arr_eq(a.input.data, b.input.data, sizeof x);
    cr_assert_eq(a.input.ndim, 2);
    cr_assert_eq(a.seed, 7);
    cr_assert_eq(a.dataflow, PIM_DF_CASCADE);
    pim_job_free(&a);
    pim_job_free(&b);
    free(mb);
    free(xb);
}

Test(pim_json, presets_load_and_overrides_apply)
{
    struct pim_json_error err = {0};
    pim_presets *presets;
    cr_assert_eq(pim_presets_load_dir("conf/pim", &presets, &err), 0, "%s: %s", err.param,
                 err.message);
    const struct pim_device *isaac = pim_presets_find(presets, "isaac");
    cr_assert_not_null(isaac);
    /* conf/pim/isaac.json is the built-in default, field for field */
    struct pim_device def;
    pim_device_default(&def);
    json_t *a = pim_json_device(isaac), *b = pim_json_device(&def);
    const char *key;
    json_t *v;
    json_object_foreach(b, key, v)
    {
        json_t *w = json_object_get(a, key);
        if (json_is_number(v))
            cr_assert(fabs(json_number_value(v) - json_number_value(w)) <=
                          1e-12 * fabs(json_number_value(v)),
                      "isaac.json %s differs from the built-in default", key);
        else
            cr_assert(json_equal(v, w), "isaac.json %s differs from the built-in default", key);
    }
    json_decref(a);
    json_decref(b);
    const struct pim_device *noisy = pim_presets_find(presets, "rram_noisy");
    cr_assert_not_null(noisy);
    cr_assert_float_eq(noisy->read_noise, 0.01, 1e-12);
    cr_assert_eq(noisy->rows, 128); /* from its base */
    cr_assert_not_null(pim_presets_find(presets, "neural_pim_8bit"));

    const char *body =
        "{\"type\":\"vmm\",\"matrix\":[[1]],\"input\":[1],"
        "\"device\":{\"preset\":\"rram_noisy\",\"adc_bits\":6,\"signed_mode\":\"differential\"}}";
    struct pim_job job;
    cr_assert_eq(pim_json_parse_job(body, strlen(body), NULL, presets, &job, &err), 0, "%s",
                 err.message);
    cr_assert_eq(job.device.adc_bits, 6);
    cr_assert_eq(job.device.signed_mode, PIM_SIGNED_DIFFERENTIAL);
    cr_assert_float_eq(job.device.prog_noise, noisy->prog_noise, 0);
    cr_assert_str_eq(job.device.name, "rram_noisy");
    pim_job_free(&job);
    const char *by_name =
        "{\"type\":\"vmm\",\"matrix\":[[1]],\"input\":[1],\"device\":\"neural_pim_8bit\"}";
    cr_assert_eq(pim_json_parse_job(by_name, strlen(by_name), NULL, presets, &job, &err), 0, "%s",
                 err.message);
    cr_assert_eq(job.device.weight_bits, 8);
    pim_job_free(&job);
    pim_presets_free(presets);
}

Test(pim_json, conv_and_llama_layers_parse)
{
    const char *body =
        "{\"type\":\"dataflow_eval\",\"dataflows\":[\"isaac\",\"neural_pim\"],\"layers\":["
        "{\"name\":\"q_proj\",\"in\":4096,\"out\":4096,\"count\":128},"
        "{\"conv\":{\"in_channels\":64,\"out_channels\":128,\"kernel\":[3,3],\"out_h\":56,\"out_"
        "w\":56},\"count\":2}]}";
    struct pim_job job;
    struct pim_json_error err = {0};
    cr_assert_eq(pim_json_parse_job(body, strlen(body), NULL, NULL, &job, &err), 0, "%s",
                 err.message);
    cr_assert_eq(job.n_layers, 2);
    cr_assert_eq(job.layers[0].in, 4096);
    cr_assert_eq(job.layers[0].count, 128);
    cr_assert_eq(job.layers[1].in, 64 * 9);
    cr_assert_eq(job.layers[1].out, 128);
    cr_assert_eq(job.layers[1].count, 2 * 56 * 56);
    cr_assert_eq(job.dataflows, (1u << PIM_DF_ISAAC) | (1u << PIM_DF_NEURAL_PIM));
    pim_job_free(&job);
}

Test(pim_json, job_ids_round_trip_and_reject_junk)
{
    char buf[PIM_JOB_ID_MAX];
    uint64_t id;
    pim_json_format_job_id(NULL, 12345, buf);
    cr_assert_str_eq(buf, "pim-12345");
    cr_assert_eq(pim_json_parse_job_id("", buf, &id), 0);
    cr_assert_eq(id, 12345);
    const char *junk[] = {"",       "pim-",   "pim-0",  "pim-01", "pim-1x", "job-1",
                          "pim-99999999999999999999", "pim--1", "pim-r1-5"};
    for (size_t i = 0; i < sizeof junk / sizeof *junk; i++)
        cr_assert_eq(pim_json_parse_job_id(NULL, junk[i], &id), -EINVAL, "%s", junk[i]);
    /* A replica's ids name it, and it takes only its own. */
    pim_json_format_job_id("r2", 7, buf);
    cr_assert_str_eq(buf, "pim-r2-7");
    cr_assert_eq(pim_json_parse_job_id("r2", buf, &id), 0);
    cr_assert_eq(id, 7);
    const char *others[] = {"pim-7", "pim-r1-7", "pim-r22-7", "pim-r-7", "pim-r2-", "pim-r2-07",
                            "pim-r27"};
    for (size_t i = 0; i < sizeof others / sizeof *others; i++)
        cr_assert_eq(pim_json_parse_job_id("r2", others[i], &id), -EINVAL, "%s", others[i]);
}

Test(pim_json, results_render_with_cost_and_type_fields)
{
    const char *body =
        "{\"type\":\"sme_map\",\"matrix\":[[0.5,-0.25,0],[0.125,1,-1]],\"input\":[1,2,3]}";
    struct pim_job job;
    struct pim_json_error err = {0};
    cr_assert_eq(pim_json_parse_job(body, strlen(body), NULL, NULL, &job, &err), 0, "%s",
                 err.message);
    struct pim_result res;
    struct pim_error perr = {0};
    cr_assert_eq(pim_job_run(&job, NULL, &res, &perr), 0, "%s", perr.message);
    struct pim_job_view view = {.id = 9,
                                .type = job.type,
                                .status = PIM_STATUS_DONE,
                                .device = 1,
                                .submitted = 1,
                                .started = 2,
                                .finished = 3,
                                .result = &res};
    json_t *o = pim_json_job(&view, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(o, "id")), "pim-9");
    cr_assert_str_eq(json_string_value(json_object_get(o, "status")), "done");
    json_t *r = json_object_get(o, "result");
    json_t *out = json_object_get(r, "output");
    cr_assert_eq(json_array_size(out), 2);
    cr_assert(fabs(json_number_value(json_array_get(out, 1)) - (0.125 + 2 - 3)) < 0.02);
    cr_assert(json_is_number(json_object_get(json_object_get(r, "error"), "rel_l2_vs_fp64")));
    json_t *cost = json_object_get(r, "cost");
    cr_assert(json_is_integer(json_object_get(cost, "adc_conversions")));
    cr_assert(json_is_number(json_object_get(json_object_get(cost, "energy_j"), "adc")));
    cr_assert(json_is_number(json_object_get(cost, "latency_s")));
    json_t *xb = json_object_get(r, "crossbars");
    cr_assert_leq(json_integer_value(json_object_get(xb, "sme")),
                  json_integer_value(json_object_get(xb, "baseline")));
    char *text = json_dumps(o, 0);
    cr_assert_not_null(text);
    free(text);
    json_decref(o);

    /* large outputs as base64 */
    struct pim_json_limits lim;
    pim_json_limits_default(&lim);
    lim.max_output_elements_nested = 1;
    o = pim_json_job(&view, &lim);
    json_t *enc = json_object_get(json_object_get(o, "result"), "output");
    cr_assert_str_eq(json_string_value(json_object_get(enc, "dtype")), "f32");
    cr_assert_eq(json_string_length(json_object_get(enc, "data")), 12); /* 8 bytes */
    json_decref(o);
    pim_result_free(&res);
    pim_job_free(&job);

    struct pim_error why = {.param = "matrix", .message = "the matrix is singular"};
    struct pim_job_view failed = {.id = 3,
                                  .type = PIM_JOB_SOLVE,
                                  .status = PIM_STATUS_FAILED,
                                  .device = 0,
                                  .error_code = -EDOM,
                                  .error = &why};
    o = pim_json_job(&failed, NULL);
    json_t *e = json_object_get(o, "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "param")), "matrix");
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), "singular_matrix");
    cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "invalid_request_error");
    cr_assert_null(json_object_get(o, "result"));
    json_decref(o);
}

Test(pim_json, devices_and_errors_render)
{
    struct pim_device_info d[2] = {
        {.index = 0, .name = "isaac", .busy = true, .current_job = 4, .jobs_done = 2},
        {.index = 1, .name = "isaac"}};
    struct pim_pool_stats st = {
        .queue_length = 3, .queue_capacity = 64, .busy_devices = 1, .n_devices = 2};
    st.submitted[PIM_JOB_VMM] = 5;
    st.finished[PIM_JOB_VMM][PIM_STATUS_DONE] = 2;
    struct pim_device cfg;
    pim_device_default(&cfg);
    json_t *o = pim_json_devices(d, 2, &cfg, &st, "r1");
    cr_assert_str_eq(json_string_value(json_object_get(o, "replica_id")), "r1");
    json_t *data = json_object_get(o, "data");
    cr_assert_eq(json_array_size(data), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(data, 0), "current_job")),
                     "pim-r1-4");
    cr_assert(json_is_null(json_object_get(json_array_get(data, 1), "current_job")));
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(o, "queue"), "length")), 3);
    cr_assert_eq(json_integer_value(
                     json_object_get(json_object_get(json_object_get(o, "jobs"), "vmm"), "done")),
                 2);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(o, "config"), "adc_bits")), 8);
    json_decref(o);

    struct pim_json_error err = {.message = "bad", .param = ""};
    o = pim_json_error_body(&err);
    cr_assert(json_is_null(json_object_get(json_object_get(o, "error"), "param")));
    json_decref(o);
}
