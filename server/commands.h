/*
 * commands.h: the offline subcommands of llmd (everything but `serve`).
 * Each takes argv with argv[0] = the subcommand name and returns an exit
 * status.
 */
#ifndef LLMD_SERVER_COMMANDS_H
#define LLMD_SERVER_COMMANDS_H

int cmd_generate(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_passkey(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_quantize(int argc, char **argv);

#endif
