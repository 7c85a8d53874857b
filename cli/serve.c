/*
 * serve.c: `llmd serve`: loads the settings through the table
 * (cli/settings.c) and hands them, typed, to the daemon (server/).
 */
#include "cli/commands.h"
#include "cli/settings.h"

#include <stdio.h>

static void print_usage(void)
{
    printf("usage: llmd serve [options]\n\n"
           "Serves the model over HTTP: OpenAI-compatible /v1/completions and\n"
           "/v1/chat/completions (SSE with \"stream\": true), /v1/models, /tokenize,\n"
           "/detokenize, /health and Prometheus /metrics; and the simulated ReRAM PIM\n"
           "accelerator pool: /v1/pim/jobs, /v1/pim/jobs/{id}, /v1/pim/devices.\n\n"
           "Settings come from %s (or --config FILE, or LLMD_CONFIG), then\n"
           "LLMD_* environment variables, then these flags:\n\n"
           "  --config FILE                      JSON settings file\n"
           "  --help                             this text\n",
           CMD_SETTINGS_DEFAULT_PATH);
    cmd_settings_print_help(stdout, CMD_SETTINGS_GROUP_ALL);
    printf("\nSIGTERM or SIGINT stops accepting and lets running requests finish for\n"
           "grace_s seconds; a second signal exits at once.\n");
}

int cmd_serve(int argc, char **argv)
{
    struct srv_config cfg;
    cmd_settings_init(&cfg);
    char err[512];
    int rc = cmd_settings_load(&cfg, argc, argv, err, sizeof err);
    if (rc == CMD_SETTINGS_HELP) {
        print_usage();
        cmd_settings_free(&cfg);
        return 0;
    }
    if (rc) {
        fprintf(stderr, "llmd serve: %s\n", err);
        cmd_settings_free(&cfg);
        return 2;
    }
    int exit_code = srv_serve(&cfg);
    cmd_settings_free(&cfg);
    return exit_code;
}
