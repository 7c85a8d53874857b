/*
 * commands.h: the subcommands of llmd: `serve` (cli/serve.c) and the offline
 * ones (cli/commands.c).
 * Each takes argv with argv[0] = the subcommand name and returns an exit
 * status.
 */
#ifndef LLMD_CLI_COMMANDS_H
#define LLMD_CLI_COMMANDS_H

int cmd_serve(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_passkey(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_quantize(int argc, char **argv);

#endif
