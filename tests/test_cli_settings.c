/* Tests for the settings of `llmd serve`: defaults, file < env < flags,
 * errors, --help. Each Criterion test runs in its own process, so setenv
 * does not leak between tests. */
#include "cli/settings.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char err[512];

/* Writes text to a fresh temporary file; returns its path (static). */
static const char *temp_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/llmd-test-config-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* cmd_settings_load over a NULL-terminated flag list (argv[0] = "serve"). */
static int load(struct srv_config *c, const char *const *flags)
{
    char *argv[32] = {"serve"};
    int argc = 1;
    for (; flags && flags[argc - 1]; argc++) argv[argc] = (char *)flags[argc - 1];
    return cmd_settings_load(c, argc, argv, err, sizeof err);
}

Test(cli_settings, conf_file_lists_every_setting_with_the_compiled_default)
{
    struct srv_config defaults, from_file;
    cmd_settings_init(&defaults);
    cmd_settings_init(&from_file);
    json_error_t jerr;
    json_t *file = json_load_file("conf/llmd.json", 0, &jerr);
    cr_assert(file, "conf/llmd.json: %s", jerr.text);
    json_t *want = cmd_settings_to_json(&defaults);
    cr_assert_eq(json_object_size(file), json_object_size(want),
                 "the file has %zu settings, not %zu", json_object_size(file),
                 json_object_size(want));
    const char *key;
    json_t *v;
    json_object_foreach(want, key, v)
        cr_assert(json_object_get(file, key), "conf/llmd.json lacks '%s'", key);
    cr_assert_eq(cmd_settings_apply_file(&from_file, "conf/llmd.json", err, sizeof err), 0, "%s",
                 err);
    json_t *got = cmd_settings_to_json(&from_file);
    json_object_foreach(want, key, v)
    {
        cr_assert(json_equal(json_object_get(got, key), v), "'%s' differs from its default", key);
    }
    json_decref(file);
    json_decref(want);
    json_decref(got);
    cmd_settings_free(&defaults);
    cmd_settings_free(&from_file);
}

Test(cli_settings, defaults_are_the_documented_ones)
{
    struct srv_config c;
    cmd_settings_init(&c);
    cr_assert_str_eq(c.host, "127.0.0.1");
    cr_assert_eq(c.port, 8080);
    cr_assert_str_eq(c.model, "models/llmd-20m.gguf");
    cr_assert_eq(c.n_api_keys, 0);
    cr_assert_eq(c.n_cors_origins, 0);
    cr_assert_not(c.auth_health_metrics);
    cr_assert_eq(cmd_settings_validate(&c, err, sizeof err), 0, "%s", err);
    cmd_settings_free(&c);
}

Test(cli_settings, env_overrides_file_and_flags_override_env)
{
    const char *path = temp_file("{\"port\": 9001, \"log_level\": \"debug\", \"grace_s\": 2.5}");
    struct srv_config c;

    cmd_settings_init(&c);
    cr_assert_eq(load(&c, (const char *[]){"--config", path, NULL}), 0, "%s", err);
    cr_assert_eq(c.port, 9001);
    cr_assert_str_eq(c.log_level, "debug");
    cr_assert_float_eq(c.grace_s, 2.5, 1e-12);
    cr_assert_str_eq(c.config_path, path);
    cmd_settings_free(&c);

    setenv("LLMD_PORT", "9002", 1);
    cmd_settings_init(&c);
    cr_assert_eq(load(&c, (const char *[]){"--config", path, NULL}), 0, "%s", err);
    cr_assert_eq(c.port, 9002);
    cr_assert_str_eq(c.log_level, "debug",
                     "a setting the env does not name keeps the file's value");
    cmd_settings_free(&c);

    cmd_settings_init(&c);
    cr_assert_eq(load(&c, (const char *[]){"--port", "9003", "--config", path, NULL}), 0, "%s",
                 err);
    cr_assert_eq(c.port, 9003, "a flag wins even before --config");
    cmd_settings_free(&c);

    setenv("LLMD_CONFIG", path, 1);
    unsetenv("LLMD_PORT");
    cmd_settings_init(&c);
    cr_assert_eq(load(&c, NULL), 0, "%s", err);
    cr_assert_eq(c.port, 9001, "LLMD_CONFIG names the file");
    cmd_settings_free(&c);
    unlink(path);
}

Test(cli_settings, flag_forms_equals_booleans_negation_and_lists)
{
    struct srv_config c;
    cmd_settings_init(&c);
    int rc =
        load(&c, (const char *[]){"--config", "conf/llmd.json", "--port=0", "--log-json",
                                  "--no-access-log", "--api-keys", "k1, k2,,k3", "--cors-origins=*",
                                  "--request-timeout-s", "1.5", "--precision", "fp32", NULL});
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(c.port, 0);
    cr_assert(c.log_json);
    cr_assert_not(c.access_log);
    cr_assert_eq(c.n_api_keys, 3);
    cr_assert_str_eq(c.api_keys[0], "k1");
    cr_assert_str_eq(c.api_keys[1], "k2");
    cr_assert_str_eq(c.api_keys[2], "k3");
    cr_assert_eq(c.n_cors_origins, 1);
    cr_assert_str_eq(c.cors_origins[0], "*");
    cr_assert_float_eq(c.request_timeout_s, 1.5, 1e-12);
    cr_assert_str_eq(c.precision, "fp32");
    cmd_settings_free(&c);
}

Test(cli_settings, old_spellings_are_aliases_of_the_table_settings)
{
    struct srv_config c;
    cmd_settings_init(&c);
    cr_assert_eq(load(&c, (const char *[]){"--kv", "f16", "--head-int8", "--sparse-mode=window",
                                           "--dense-layers", "3", NULL}),
                 0, "%s", err);
    cr_assert_str_eq(c.kv_type, "f16");
    cr_assert_str_eq(c.head, "int8");
    cr_assert_str_eq(c.sparse_mode, "window");
    cr_assert_eq(c.dense_layers, 3);
    struct llm_model_options o;
    srv_config_model_options(&c, &o);
    cr_assert_eq(o.kv_type, ATTN_KV_F16);
    cr_assert_eq(o.head, LLM_HEAD_INT8);
    cr_assert_eq(o.sparse_mode, ATTN_WINDOW);
    cr_assert_eq(o.dense_layers, 3);
    cr_assert_eq(load(&c, (const char *[]){"--head-f16=yes", NULL}), -EINVAL);
    cr_assert(strstr(err, "--head-f16 takes no value"), "%s", err);
    cr_assert_eq(load(&c, (const char *[]){"--kv", "int3", NULL}), -EINVAL);
    cr_assert(strstr(err, "kv_type (--kv): 'int3' is not one of"), "%s", err);
    cmd_settings_free(&c);
}

/* The offline commands read the same table through getopt_long, so that a
 * value of their own (a prompt "--kv f16") is never taken for a flag. */
Test(cli_settings, getopt_entries_apply_like_flags)
{
    static const struct option own[] = {{"prompt", required_argument, 0, 'p'}};
    struct option *options = cmd_settings_options(own, 1, CMD_SETTINGS_GROUP_MODEL);
    char *argv[] = {"generate",    "--prompt",   "--kv f16", "--kv",   "int8", "--no-gptq",
                    "--threads=3", "--head-f16", "--config", "x.json", NULL};
    int argc = (int)(sizeof argv / sizeof argv[0]) - 1;
    struct srv_config c;
    cmd_settings_init(&c);
    int opt, seen_port = 0;
    const char *prompt = NULL;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == 'p')
            prompt = optarg;
        else
            cr_assert_eq(cmd_settings_apply_option(&c, opt, optarg, err, sizeof err), 0, "%s", err);
    }
    cr_assert_str_eq(prompt, "--kv f16");
    cr_assert_str_eq(c.kv_type, "int8");
    cr_assert_not(c.gptq);
    cr_assert_eq(c.threads, 3);
    cr_assert_str_eq(c.head, "f16");
    /* only the model group: a server setting is not an option of a command */
    for (struct option *o = options; o->name; o++) seen_port += strcmp(o->name, "port") == 0;
    cr_assert_eq(seen_port, 0);
    cmd_settings_free_options(options);
    cmd_settings_free(&c);
}

Test(cli_settings, env_lists_and_booleans_parse)
{
    setenv("LLMD_API_KEYS", "alpha,beta", 1);
    setenv("LLMD_LOG_JSON", "yes", 1);
    setenv("LLMD_AUTH_HEALTH_METRICS", "1", 1);
    struct srv_config c;
    cmd_settings_init(&c);
    cr_assert_eq(cmd_settings_apply_env(&c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.n_api_keys, 2);
    cr_assert_str_eq(c.api_keys[1], "beta");
    cr_assert(c.log_json);
    cr_assert(c.auth_health_metrics);
    cmd_settings_free(&c);
}

/* One bad input and a word its message must contain. */
struct bad_case {
    const char *file; /* config file text, or NULL */
    const char *flags[4];
    const char *env_name, *env_value;
    const char *message_has;
};

Test(cli_settings, bad_settings_are_refused_with_a_clear_message)
{
    static const struct bad_case cases[] = {
        {"{\"prot\": 1}", {0}, NULL, NULL, "unknown setting 'prot'"},
        {"{\"port\": \"80\"}", {0}, NULL, NULL, "must be an integer"},
        {"{\"port\": 70000}", {0}, NULL, NULL, "out of range"},
        {"{\"grace_s\": true}", {0}, NULL, NULL, "must be a number"},
        {"{\"log_json\": 1}", {0}, NULL, NULL, "true or false"},
        {"{\"precision\": \"int3\"}", {0}, NULL, NULL, "fp32|w8a8|w4a4-rtn|atom"},
        {"{\"api_keys\": \"abc\"}", {0}, NULL, NULL, "array of strings"},
        {"{\"api_keys\": [\"\"]}", {0}, NULL, NULL, "non-empty string"},
        {"[1, 2]", {0}, NULL, NULL, "JSON object"},
        {"{\"port\": 1,}", {0}, NULL, NULL, "llmd-test-config"},
        {NULL, {"--port", "x"}, NULL, NULL, "not an integer"},
        {NULL, {"--port"}, NULL, NULL, "needs a value"},
        {NULL, {"--bogus"}, NULL, NULL, "unknown argument '--bogus'"},
        {NULL, {"stray"}, NULL, NULL, "unknown argument 'stray'"},
        {NULL, {"--no-port"}, NULL, NULL, "unknown argument"},
        {NULL, {"--kv-type", "f8"}, NULL, NULL, "f32|f16|int8|int4"},
        {NULL, {"--max-running", "0"}, NULL, NULL, "out of range"},
        {NULL, {"--group-size", "100"}, NULL, NULL, "group_size (100) must be a multiple of 16"},
        {NULL, {"--outliers", "8"}, NULL, NULL, "outliers (8) must be a multiple of 16"},
        {NULL, {"--act-clip", "1.5"}, NULL, NULL, "out of range"},
        {NULL,
         {"--prefill-chunk", "1024", "--max-step-tokens", "512"},
         NULL,
         NULL,
         "must not exceed"},
        {NULL, {"--cors-origins", "example.com"}, NULL, NULL, "not an origin"},
        {NULL, {0}, "LLMD_IDLE_TIMEOUT_S", "soon", "LLMD_IDLE_TIMEOUT_S"},
        {NULL, {0}, "LLMD_LOG_LEVEL", "loud", "error|warn|info|debug"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct bad_case *t = &cases[i];
        const char *path = t->file ? temp_file(t->file) : "/nonexistent/llmd.json";
        const char *flags[8] = {"--config", path};
        int n = 2;
        if (!t->file) n = 0; /* no file named: the default one, if any */
        for (int k = 0; k < 4 && t->flags[k]; k++) flags[n++] = t->flags[k];
        flags[n] = NULL;
        if (t->env_name) setenv(t->env_name, t->env_value, 1);
        struct srv_config c;
        cmd_settings_init(&c);
        err[0] = '\0';
        int rc = load(&c, flags);
        cr_assert_eq(rc, -EINVAL, "case %zu: rc %d (%s)", i, rc, err);
        cr_assert(strstr(err, t->message_has), "case %zu: '%s' lacks '%s'", i, err, t->message_has);
        cmd_settings_free(&c);
        if (t->env_name) unsetenv(t->env_name);
        if (t->file) unlink(path);
    }
}

Test(cli_settings, a_named_config_file_must_exist_but_the_default_need_not)
{
    struct srv_config c;
    cmd_settings_init(&c);
    cr_assert_eq(load(&c, (const char *[]){"--config", "/nonexistent/llmd.json", NULL}), -ENOENT);
    cmd_settings_free(&c);
    cr_assert_eq(chdir("/tmp"), 0); /* no conf/llmd.json here */
    cmd_settings_init(&c);
    cr_assert_eq(load(&c, NULL), 0, "%s", err);
    cr_assert_null(c.config_path);
    cmd_settings_free(&c);
}

Test(cli_settings, help_is_detected_before_anything_else)
{
    struct srv_config c;
    cmd_settings_init(&c);
    cr_assert_eq(load(&c, (const char *[]){"--bogus", "--help", NULL}), CMD_SETTINGS_HELP);
    cmd_settings_free(&c);
}

Test(cli_settings, api_keys_never_appear_in_the_dump)
{
    struct srv_config c;
    cmd_settings_init(&c);
    cr_assert_eq(load(&c, (const char *[]){"--api-keys", "sekret-1,sekret-2", NULL}), 0, "%s", err);
    json_t *j = cmd_settings_to_json(&c);
    char *text = json_dumps(j, 0);
    cr_assert_null(strstr(text, "sekret"), "%s", text);
    cr_assert_eq(json_array_size(json_object_get(j, "api_keys")), 2);
    free(text);
    json_decref(j);
    cmd_settings_free(&c);
}

Test(cli_settings, help_lists_every_setting_with_flag_env_and_default)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cmd_settings_print_help(f, CMD_SETTINGS_GROUP_ALL);
    fclose(f);
    struct srv_config c;
    cmd_settings_init(&c);
    json_t *all = cmd_settings_to_json(&c);
    const char *key;
    json_t *v;
    json_object_foreach(all, key, v)
    {
        char flag[64], env[64];
        snprintf(flag, sizeof flag, "%s ", key); /* after "--" or "--[no-]" */
        for (char *p = flag; *p; p++)
            if (*p == '_') *p = '-';
        snprintf(env, sizeof env, "env LLMD_%s\n", key);
        for (char *p = env + 9; *p; p++) *p = (char)toupper((unsigned char)*p);
        cr_assert(strstr(text, flag), "--help lacks %s", flag);
        cr_assert(strstr(text, env), "--help lacks %s", env);
    }
    cr_assert(strstr(text, "default: 8080; env LLMD_PORT"), "port default");
    cr_assert(strstr(text, "default: \"127.0.0.1\"; env LLMD_HOST"), "host default");
    json_decref(all);
    cmd_settings_free(&c);
    free(text);
}

Test(cli_settings, model_group_is_a_subset_for_other_commands)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cmd_settings_print_help(f, CMD_SETTINGS_GROUP_MODEL);
    fclose(f);
    cr_assert(strstr(text, "--model PATH"));
    cr_assert(strstr(text, "--precision"));
    cr_assert_null(strstr(text, "--port"));
    free(text);

    struct srv_config c;
    cmd_settings_init(&c);
    char *argv[] = {"generate", "--precision", "w8a8", "--prompt", "hi"};
    int i = 1;
    cr_assert_eq(cmd_settings_parse_flag(&c, 5, argv, &i, err, sizeof err), 1);
    cr_assert_eq(i, 3);
    cr_assert_str_eq(c.precision, "w8a8");
    cr_assert_eq(cmd_settings_parse_flag(&c, 5, argv, &i, err, sizeof err), 0,
                 "--prompt is not ours");
    cr_assert_eq(i, 3);
    cmd_settings_free(&c);
}
