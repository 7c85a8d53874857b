/* bench.h: what several benchmark programs share, header-only so that each
 * bench/<name>.c stays one program (the Makefile builds one binary per file). */
#ifndef LLMD_BENCH_H
#define LLMD_BENCH_H

#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* "4096,8192,..." into out[0..max); returns the count. */
static inline int bench_parse_list(const char *s, int *out, int max)
{
    int n = 0;
    for (char *end; *s && n < max; s = *end ? end + 1 : end) out[n++] = (int)strtol(s, &end, 10);
    return n;
}

/* qsort order of doubles. */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v). */
static inline double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Starts `argv` (an `llmd serve --port 0 ...` command line) with stderr to
 * `log_path`, and waits up to `timeout_s` for the line that names its URL,
 * which goes to base. Returns the child's pid, or a negative error. */
static inline pid_t bench_start_server(const char *const *argv, const char *log_path,
                                       double timeout_s, char *base, size_t len)
{
    int out[2];
    if (pipe(out)) return -errno;
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid == 0) {
        dup2(out[1], 1);
        int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (log >= 0) dup2(log, 2);
        close(out[0]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    char line[256];
    size_t n = 0;
    double deadline = util_now() + timeout_s;
    while (util_now() < deadline && n < sizeof line - 1) {
        struct pollfd p = {out[0], POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        if (read(out[0], line + n, 1) != 1) break;
        if (line[n] != '\n') {
            n++;
            continue;
        }
        line[n] = '\0';
        const char *at = strstr(line, "http://");
        if (at) {
            snprintf(base, len, "%s", at);
            close(out[0]);
            return pid;
        }
        n = 0;
    }
    close(out[0]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -ETIMEDOUT;
}

/* SIGTERM, then waits for the exit; returns the exit status (-1 if killed). */
static inline int bench_stop_server(pid_t pid)
{
    int status = 0;
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#endif
