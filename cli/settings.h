/*
 * settings.h: the one settings table of llmd (cli/settings.c): every
 * setting once, with its JSON key, flag (--key-with-dashes), LLMD_*
 * variable, type, range, default and help line. `llmd serve` and the
 * offline commands read their settings through it, in one order: the
 * defaults, the config file, the LLMD_* variables, the flags. It fills
 * struct srv_config, the typed settings that the daemon (server/) runs with.
 */
#ifndef LLMD_CLI_SETTINGS_H
#define LLMD_CLI_SETTINGS_H

#include "server/server.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>

/* Setting groups for cmd_settings_print_help: the model settings are shared
 * with the other commands that load a model (generate, perplexity, ...). */
enum { CMD_SETTINGS_GROUP_MODEL = 1, CMD_SETTINGS_GROUP_SERVER = 2, CMD_SETTINGS_GROUP_ALL = 3 };

/* The default config file, read when it exists and no other is named. */
#define CMD_SETTINGS_DEFAULT_PATH "conf/llmd.json"

/* Fills every setting with its compiled default. Free with cmd_settings_free. */
void cmd_settings_init(struct srv_config *config);
void cmd_settings_free(struct srv_config *config);

/* Applies a JSON object of settings; `origin` names it in messages.
 * Unknown keys, wrong types and out-of-range values are errors (-EINVAL
 * with a message in err). Values of secret settings never appear in
 * messages. */
int cmd_settings_apply_json(struct srv_config *config, const json_t *object, const char *origin,
                            char *err, size_t err_len);
/* Reads and applies a config file. -ENOENT when it does not exist. */
int cmd_settings_apply_file(struct srv_config *config, const char *path, char *err, size_t err_len);
/* Applies the LLMD_* environment variables that are set. */
int cmd_settings_apply_env(struct srv_config *config, char *err, size_t err_len);

/* Tries argv[*i] as a setting flag (`--port 9000`, `--port=9000`,
 * `--log-json`, `--no-log-json`). Returns 1 and advances *i past what it
 * used, 0 when argv[*i] is not a setting flag (leaving *i), or -EINVAL with
 * a message. For commands that mix these flags with their own. */
int cmd_settings_parse_flag(struct srv_config *config, int argc, char **argv, int *i, char *err,
                            size_t err_len);

/* Checks the settings together (ranges are checked as they are applied).
 * 0 or -EINVAL with a message. */
int cmd_settings_validate(const struct srv_config *config, char *err, size_t err_len);

/* The whole precedence chain for `llmd serve`: defaults, the config file
 * (--config FILE, else LLMD_CONFIG, else conf/llmd.json when it exists),
 * the environment, the flags (argv[0] is the command name), then
 * cmd_settings_validate. Returns 0, CMD_SETTINGS_HELP when --help/-h was given,
 * or -EINVAL/-ENOENT with a message. The config must have been
 * cmd_settings_init'ed. */
#define CMD_SETTINGS_HELP 1
int cmd_settings_load(struct srv_config *config, int argc, char **argv, char *err, size_t err_len);

/* For the offline commands, which mix settings with their own inputs
 * (--prompt, -n, --file ...) in one getopt_long loop, so that a value of
 * theirs is never taken for a flag. Their order: cmd_settings_init, then
 * cmd_settings_apply_file_and_env (the file named by --config in argv, else
 * LLMD_CONFIG, else conf/llmd.json when it exists; then LLMD_*), then the
 * flags as getopt_long returns them, then cmd_settings_validate. */
int cmd_settings_apply_file_and_env(struct srv_config *config, int argc, char **argv, char *err,
                                    size_t err_len);
/* getopt_long's table: `own` (n_own entries) followed by the settings of
 * `groups`, their aliases (--kv, --head-f16, --head-int8) and --config, all
 * with values >= CMD_SETTINGS_OPT_BASE. Free with cmd_settings_free_options. */
#define CMD_SETTINGS_OPT_BASE 0x10000
struct option *cmd_settings_options(const struct option *own, size_t n_own, unsigned groups);
void cmd_settings_free_options(struct option *options);
/* Applies what getopt_long returned for one of those entries: 0, or
 * -EINVAL with a message. */
int cmd_settings_apply_option(struct srv_config *config, int val, const char *arg, char *err,
                              size_t err_len);

/* All settings as a JSON object in the config file's format (new
 * reference), secrets replaced by "<redacted>": for the start-up log, and
 * for checking conf/llmd.json against the compiled defaults. */
json_t *cmd_settings_to_json(const struct srv_config *config);

/* Lists the settings of `groups` as flags, each with its environment
 * variable and default. */
void cmd_settings_print_help(FILE *out, unsigned groups);

#endif
