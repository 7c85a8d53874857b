/* main.c: the llmd command line: one binary, one subcommand per job. */
#include "cli/commands.h"
#include "util/util.h"

#include <stdio.h>
#include <string.h>

struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct subcommand subcommands[] = {
    {"serve", cmd_serve, "serve the model over HTTP (OpenAI-compatible API, /metrics)"},
    {"generate", cmd_generate, "generate text for a prompt"},
    {"perplexity", cmd_perplexity, "perplexity of a text file"},
    {"passkey", cmd_passkey, "passkey retrieval accuracy at a context length"},
    {"quantize", cmd_quantize,
     "write a quantized model (Atom, W8A8, W4A4) that loads without recalibrating"},
    {"tokenize", cmd_tokenize, "token ids of each line on stdin"},
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: llmd COMMAND [options]   (llmd COMMAND --help for its options)\n\nCommands:\n");
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(out, "  %-11s %s\n", subcommands[i].name, subcommands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (strcmp(argv[1], subcommands[i].name) == 0)
            return subcommands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "llmd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
