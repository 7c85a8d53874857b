/*
 * jsonschema_check.h: tests validate JSON texts against their schemas with
 * a real validator (Debian's python3-jsonschema), not by hand.
 */
#ifndef LLMD_TESTS_JSONSCHEMA_CHECK_H
#define LLMD_TESTS_JSONSCHEMA_CHECK_H

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char jsonschema_py[] = "import json, sys\n"
                                   "from jsonschema import Draft202012Validator\n"
                                   "from jsonschema.validators import validator_for\n"
                                   "bad = n = 0\n"
                                   "for line in open(sys.argv[1], encoding='utf-8'):\n"
                                   "    schema, text = json.loads(line)\n"
                                   "    cls = validator_for(schema, default=Draft202012Validator)\n"
                                   "    v = cls(schema, format_checker=cls.FORMAT_CHECKER)\n"
                                   "    errors = list(v.iter_errors(json.loads(text)))\n"
                                   "    n += 1\n"
                                   "    if errors:\n"
                                   "        bad += 1\n"
                                   "        print('INVALID', text, '--', errors[0].message)\n"
                                   "print('checked', n, 'invalid', bad)\n"
                                   "sys.exit(1 if bad else 0)\n";

/* Validates every [schema, text] of batch in one run of python3-jsonschema
 * (a real validator, with format checks), asserting that all are valid. */
static inline void jsonschema_check(json_t *batch)
{
    char data[] = "/tmp/llmd-gram-XXXXXX", script[] = "/tmp/llmd-gram-py-XXXXXX";
    int fd = mkstemp(data), fs = mkstemp(script);
    cr_assert(fd >= 0 && fs >= 0);
    FILE *f = fdopen(fd, "w"), *s = fdopen(fs, "w");
    size_t i;
    json_t *e;
    json_array_foreach(batch, i, e)
    {
        cr_assert_eq(json_dumpf(e, f, JSON_COMPACT), 0);
        fputc('\n', f);
    }
    fputs(jsonschema_py, s);
    fclose(f);
    fclose(s);
    char cmd[256], line[4096], report[8192] = "";
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 2>&1", script, data);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    long checked = -1;
    while (fgets(line, sizeof line, p)) {
        if (!strncmp(line, "checked ", 8)) checked = strtol(line + 8, NULL, 10);
        if (strlen(report) + strlen(line) < sizeof report) strcat(report, line);
    }
    int status = pclose(p);
    unlink(data);
    unlink(script);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "jsonschema says:\n%s", report);
    cr_assert_eq(checked, (long)json_array_size(batch), "%s", report);
}

#endif
