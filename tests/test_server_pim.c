/* Integration tests of the PIM job endpoints of `llmd serve`: every job type
 * round-trips with numbers checked against float64 references computed
 * here, waits (without blocking the loop), cancel, 429 on a full queue, the
 * bad-job matrix, and the PIM metrics. */
#include "tests/integration/harness.h"

#include <float.h>
#include <stdint.h>

#define TIMEOUT 300

/* ------------------------------------------------------------ numbers */

static uint64_t lcg_state = 12345;

static double uniform(void) /* in [-1, 1) */
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
}

static double *random_matrix(int rows, int cols)
{
    double *a = malloc(sizeof *a * (size_t)rows * (size_t)cols);
    for (int i = 0; i < rows * cols; i++) a[i] = uniform();
    return a;
}

/* B B^T / n + shift I: symmetric positive definite, condition number about
 * (4 + shift) / shift at most. */
static double *spd_matrix(int n, double shift)
{
    double *b = random_matrix(n, n);
    double *a = calloc((size_t)n * (size_t)n, sizeof *a);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += b[i * n + k] * b[j * n + k];
            a[i * n + j] = s / n + (i == j ? shift : 0);
        }
    free(b);
    return a;
}

/* X = A^-1 B (A n x n, B n x k) by Gaussian elimination with partial
 * pivoting, in float64; A and B are overwritten. */
static void solve_ref(double *a, double *b, int n, int k)
{
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int i = c + 1; i < n; i++)
            if (fabs(a[i * n + c]) > fabs(a[p * n + c])) p = i;
        for (int j = 0; j < n; j++) {
            double t = a[c * n + j];
            a[c * n + j] = a[p * n + j];
            a[p * n + j] = t;
        }
        for (int j = 0; j < k; j++) {
            double t = b[c * k + j];
            b[c * k + j] = b[p * k + j];
            b[p * k + j] = t;
        }
        for (int i = c + 1; i < n; i++) {
            double f = a[i * n + c] / a[c * n + c];
            for (int j = c; j < n; j++) a[i * n + j] -= f * a[c * n + j];
            for (int j = 0; j < k; j++) b[i * k + j] -= f * b[c * k + j];
        }
    }
    for (int c = n - 1; c >= 0; c--)
        for (int j = 0; j < k; j++) {
            double s = b[c * k + j];
            for (int i = c + 1; i < n; i++) s -= a[c * n + i] * b[i * k + j];
            b[c * k + j] = s / a[c * n + c];
        }
}

static double *copy(const double *a, int n)
{
    double *c = malloc(sizeof *c * (size_t)n);
    memcpy(c, a, sizeof *c * (size_t)n);
    return c;
}

static double rel_l2(const double *x, const double *ref, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        num += (x[i] - ref[i]) * (x[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / den);
}

/* ---------------------------------------------------------------- JSON */

static json_t *matrix_json(const double *a, int rows, int cols)
{
    json_t *m = json_array();
    for (int i = 0; i < rows; i++) {
        json_t *row = json_array();
        for (int j = 0; j < cols; j++) json_array_append_new(row, json_real(a[i * cols + j]));
        json_array_append_new(m, row);
    }
    return m;
}

static json_t *vector_json(const double *a, int n)
{
    json_t *v = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(v, json_real(a[i]));
    return v;
}

/* The numbers of a nested array, flattened (n of them expected). */
static double *numbers(json_t *t, int n)
{
    double *out = malloc(sizeof *out * (size_t)n);
    int k = 0;
    json_t *stack[4] = {t};
    size_t idx[4] = {0};
    int depth = 0;
    while (depth >= 0) {
        json_t *cur = stack[depth];
        if (idx[depth] >= json_array_size(cur)) {
            depth--;
            if (depth >= 0) idx[depth]++;
            continue;
        }
        json_t *e = json_array_get(cur, idx[depth]);
        if (json_is_array(e)) {
            cr_assert(depth < 3);
            stack[++depth] = e;
            idx[depth] = 0;
            continue;
        }
        cr_assert(json_is_number(e), "a non-number in an output");
        cr_assert(k < n, "more than %d numbers", n);
        out[k++] = json_number_value(e);
        idx[depth]++;
    }
    cr_assert_eq(k, n, "%d numbers, not %d", k, n);
    return out;
}

static double num(json_t *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = o;
    for (char *save, *key = strtok_r(buf, ".", &save); key; key = strtok_r(NULL, ".", &save))
        cur = json_object_get(cur, key);
    cr_assert(json_is_number(cur), "no number at %s", path);
    return json_number_value(cur);
}

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* POSTs a job (taken) and returns the parsed answer. */
static json_t *post_job(const struct daemon *d, json_t *job, long *status)
{
    char *body = json_dumps(job, JSON_COMPACT);
    json_decref(job);
    json_t *r = http_json(d, "POST", "/v1/pim/jobs", body, status);
    free(body);
    return r;
}

/* A finished job's result; asserts it is done. */
static json_t *done_result(json_t *job)
{
    cr_assert_str_eq(str(job, "status"), "done", "%s", json_dumps(job, 0));
    cr_assert(strncmp(str(job, "id"), "pim-", 4) == 0);
    json_t *res = json_object_get(job, "result");
    cr_assert(json_is_object(res));
    cr_assert(num(res, "cost.energy_j.total") > 0);
    cr_assert(num(res, "cost.latency_s") > 0);
    return res;
}

/* A slow job: the inverse of an n x n SPD matrix. */
static json_t *slow_job(int n)
{
    double *a = spd_matrix(n, 1.0);
    json_t *j = json_pack("{s:s, s:o}", "type", "invert", "matrix", matrix_json(a, n, n));
    free(a);
    return j;
}

static char *slow_body(int n)
{
    json_t *j = slow_job(n);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

#define SLOW_N 320

/* ------------------------------------------------------------ job types */

Test(server_pim, vmm_solve_and_invert_round_trip, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, NULL);
    long status;

    /* vmm: batch of 3 through a 12 x 20 matrix, nested arrays */
    int m = 12, n = 20, b = 3;
    double *w = random_matrix(m, n), *x = random_matrix(b, n);
    double want[3 * 12];
    for (int i = 0; i < b; i++)
        for (int o = 0; o < m; o++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += w[o * n + k] * x[i * n + k];
            want[i * m + o] = s;
        }
    json_t *job = post_job(&d,
                           json_pack("{s:s, s:o, s:o, s:i, s:i}", "type", "vmm", "matrix",
                                     matrix_json(w, m, n), "input", matrix_json(x, b, n), "seed", 7,
                                     "wait", 30),
                           &status);
    cr_assert_eq(status, 200);
    json_t *res = done_result(job);
    double *got = numbers(json_object_get(res, "output"), b * m);
    double err = rel_l2(got, want, b * m);
    double reported = num(res, "error.rel_l2_vs_fp64");
    cr_assert(err < 1e-3, "vmm error %g", err);
    cr_assert(fabs(err - reported) <= 1e-3 * reported + 1e-6, "error %g, reported %g", err,
              reported);
    cr_assert(num(res, "cost.adc_conversions") > 0);
    free(got);
    json_decref(job);

    /* vmm with a base64 input: the same numbers for the first row */
    float xf[20];
    for (int k = 0; k < n; k++) xf[k] = (float)x[k];
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char enc[128] = "";
    const unsigned char *bytes = (const unsigned char *)xf;
    size_t e = 0;
    for (size_t i = 0; i < sizeof xf; i += 3) { /* 80 bytes: the last group has 2 */
        unsigned v = bytes[i] << 16 | (i + 1 < sizeof xf ? bytes[i + 1] << 8 : 0) |
                     (i + 2 < sizeof xf ? bytes[i + 2] : 0);
        enc[e++] = b64[v >> 18 & 63];
        enc[e++] = b64[v >> 12 & 63];
        enc[e++] = i + 1 < sizeof xf ? b64[v >> 6 & 63] : '=';
        enc[e++] = i + 2 < sizeof xf ? b64[v & 63] : '=';
    }
    enc[e] = '\0';
    job = post_job(&d,
                   json_pack("{s:s, s:o, s:{s:[i], s:s, s:s}, s:i}", "type", "vmm", "matrix",
                             matrix_json(w, m, n), "input", "shape", n, "dtype", "f32", "data", enc,
                             "wait", 30),
                   &status);
    cr_assert_eq(status, 200);
    got = numbers(json_object_get(done_result(job), "output"), m);
    cr_assert(rel_l2(got, want, m) < 1e-3);
    free(got);
    json_decref(job);
    free(w);
    free(x);

    /* solve: SPD, condition number <= 1e3, two right-hand sides */
    int ns = 48, k = 2;
    double *a = spd_matrix(ns, 0.01), *rhs = random_matrix(ns, k);
    double *ref = copy(rhs, ns * k), *acopy = copy(a, ns * ns);
    solve_ref(acopy, ref, ns, k);
    free(acopy);
    job = post_job(&d,
                   json_pack("{s:s, s:o, s:o, s:i}", "type", "solve", "matrix",
                             matrix_json(a, ns, ns), "rhs", matrix_json(rhs, ns, k), "wait", 60),
                   &status);
    cr_assert_eq(status, 200);
    res = done_result(job);
    got = numbers(json_object_get(res, "output"), ns * k);
    err = rel_l2(got, ref, ns * k);
    cr_assert(err <= ldexp(1, -16), "refined solve error %g > 2^-16", err);
    cr_assert(num(res, "error.rel_l2_vs_fp64") <= ldexp(1, -16));
    cr_assert(num(res, "error.plain_rel_l2_vs_fp64") > ldexp(1, -12),
              "the plain INV solve should stay near 8 bits");
    cr_assert(num(res, "iterations") >= 1 && num(res, "iterations") <= 10);
    free(got);
    json_decref(job);

    /* invert: A^-1 against the float64 inverse */
    int ni = 24;
    double *ai = spd_matrix(ni, 0.1);
    double *inv = calloc((size_t)ni * ni, sizeof *inv);
    for (int i = 0; i < ni; i++) inv[i * ni + i] = 1;
    acopy = copy(ai, ni * ni);
    solve_ref(acopy, inv, ni, ni);
    free(acopy);
    job = post_job(&d,
                   json_pack("{s:s, s:o, s:i}", "type", "invert", "matrix", matrix_json(ai, ni, ni),
                             "wait", 60),
                   &status);
    cr_assert_eq(status, 200);
    got = numbers(json_object_get(done_result(job), "output"), ni * ni);
    cr_assert(rel_l2(got, inv, ni * ni) <= ldexp(1, -16));
    free(got);
    json_decref(job);
    free(a);
    free(rhs);
    free(ref);
    free(ai);
    free(inv);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_pim, kfac_sme_admm_and_dataflow_round_trip, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, NULL);
    long status;

    /* kfac_step: G^-1 grad A^-1 with A = a^T a / B + sqrt(l) I, G likewise */
    int batch = 16, din = 6, dout = 4;
    double damping = 0.01;
    double *act = random_matrix(batch, din), *og = random_matrix(batch, dout);
    double *grad = random_matrix(dout, din);
    double fa[36], fg[16];
    for (int i = 0; i < din; i++)
        for (int j = 0; j < din; j++) {
            double s = 0;
            for (int t = 0; t < batch; t++) s += act[t * din + i] * act[t * din + j];
            fa[i * din + j] = s / batch + (i == j ? sqrt(damping) : 0);
        }
    for (int i = 0; i < dout; i++)
        for (int j = 0; j < dout; j++) {
            double s = 0;
            for (int t = 0; t < batch; t++) s += og[t * dout + i] * og[t * dout + j];
            fg[i * dout + j] = s / batch + (i == j ? sqrt(damping) : 0);
        }
    /* P = G^-1 grad, then P A^-1 = (A^-1 P^T)^T (A symmetric) */
    double *p = copy(grad, dout * din);
    solve_ref(fg, p, dout, din);
    double pt[24];
    for (int i = 0; i < dout; i++)
        for (int j = 0; j < din; j++) pt[j * dout + i] = p[i * din + j];
    solve_ref(fa, pt, din, dout);
    double want[24];
    for (int i = 0; i < dout; i++)
        for (int j = 0; j < din; j++) want[i * din + j] = pt[j * dout + i];
    json_t *job = post_job(&d,
                           json_pack("{s:s, s:o, s:o, s:o, s:f, s:i}", "type", "kfac_step",
                                     "activations", matrix_json(act, batch, din), "output_grads",
                                     matrix_json(og, batch, dout), "grad",
                                     matrix_json(grad, dout, din), "damping", damping, "wait", 60),
                           &status);
    cr_assert_eq(status, 200);
    json_t *res = done_result(job);
    double *got = numbers(json_object_get(res, "output"), dout * din);
    double err = rel_l2(got, want, dout * din);
    cr_assert(err < 1e-4, "kfac error %g", err);
    cr_assert(num(res, "digital_cost.energy_j.total") > 0);
    free(got);
    free(p);
    json_decref(job);
    free(act);
    free(og);
    free(grad);

    /* sme_map: sparse 8-bit weights; the output is W x of the quantized W */
    int m = 32, n = 64;
    double *w = random_matrix(m, n), *x = random_matrix(1, n);
    for (int i = 0; i < m * n; i++)
        if (i % 3) w[i] = 0; /* two thirds zero: columns of zero bits to squeeze */
    job = post_job(&d,
                   json_pack("{s:s, s:o, s:o, s:i, s:i}", "type", "sme_map", "matrix",
                             matrix_json(w, m, n), "input", vector_json(x, n), "weight_bits", 8,
                             "wait", 60),
                   &status);
    cr_assert_eq(status, 200);
    res = done_result(job);
    double sme = num(res, "crossbars.sme"), base = num(res, "crossbars.baseline");
    cr_assert(sme > 0 && sme <= base, "sme %g baseline %g", sme, base);
    double wx[32];
    for (int o = 0; o < m; o++) {
        wx[o] = 0;
        for (int k = 0; k < n; k++) wx[o] += w[o * n + k] * x[k];
    }
    got = numbers(json_object_get(res, "output"), m);
    /* 8-bit weights: per-weight error at most half a step of max|w| / 127 */
    err = rel_l2(got, wx, m);
    cr_assert(err < 0.02, "sme output error %g", err);
    cr_assert(fabs(err - num(res, "error.rel_l2_vs_fp64")) < 1e-3);
    free(got);
    json_decref(job);
    free(w);
    free(x);

    /* admm_compress: least squares Y = X W^T, half the 4x4 blocks kept */
    int rows = 8, cols = 16, samples = 64;
    w = random_matrix(rows, cols);
    x = random_matrix(samples, cols);
    double *y = calloc((size_t)samples * rows, sizeof *y);
    for (int s = 0; s < samples; s++)
        for (int o = 0; o < rows; o++)
            for (int k = 0; k < cols; k++) y[s * rows + o] += x[s * cols + k] * w[o * cols + k];
    job =
        post_job(&d,
                 json_pack("{s:s, s:o, s:o, s:o, s:[i,i], s:f, s:i, s:i}", "type", "admm_compress",
                           "matrix", matrix_json(w, rows, cols), "inputs",
                           matrix_json(x, samples, cols), "targets", matrix_json(y, samples, rows),
                           "block", 4, 4, "keep_ratio", 0.5, "levels", 16, "wait", 60),
                 &status);
    cr_assert_eq(status, 200);
    res = done_result(job);
    got = numbers(json_object_get(res, "output"), rows * cols);
    int kept_blocks = 0;
    for (int bi = 0; bi < rows / 4; bi++)
        for (int bj = 0; bj < cols / 4; bj++) {
            bool nz = false;
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) nz |= got[(bi * 4 + i) * cols + bj * 4 + j] != 0;
            kept_blocks += nz;
        }
    cr_assert(kept_blocks <= 4, "%d of 8 blocks non-zero with keep_ratio 0.5", kept_blocks);
    cr_assert_eq(num(res, "blocks.total"), 8);
    cr_assert(num(res, "compression_ratio") >= 2 - 1e-9);
    cr_assert(num(res, "error.after") <= num(res, "error.pruned") + 1e-9,
              "masked retraining should not make it worse");
    cr_assert(num(res, "crossbars.freed") >= 0);
    free(got);
    json_decref(job);
    free(w);
    free(x);
    free(y);

    /* dataflow_eval: Neural-PIM converts far less than ISAAC */
    job = post_job(&d,
                   json_pack("{s:s, s:[{s:i,s:i,s:i}, {s:i,s:i,s:i}], s:[s,s,s], s:i}", "type",
                             "dataflow_eval", "layers", "in", 256, "out", 512, "count", 16, "in",
                             512, "out", 256, "count", 16, "dataflows", "isaac", "cascade",
                             "neural_pim", "wait", 30),
                   &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(str(job, "status"), "done");
    json_t *reports = json_object_get(json_object_get(job, "result"), "reports");
    cr_assert_eq(json_array_size(reports), 3);
    double adc[3];
    for (int i = 0; i < 3; i++) adc[i] = num(json_array_get(reports, i), "cost.adc_conversions");
    cr_assert_str_eq(str(json_array_get(reports, 0), "dataflow"), "isaac");
    cr_assert_str_eq(str(json_array_get(reports, 2), "dataflow"), "neural_pim");
    cr_assert(adc[2] < adc[0] && adc[1] < adc[0], "adc %g %g %g", adc[0], adc[1], adc[2]);
    cr_assert(fabs(num(json_array_get(reports, 2), "adc_ratio_vs_isaac") - adc[0] / adc[2]) <
              1e-6 * adc[0] / adc[2]);
    json_decref(job);

    /* the device listing */
    json_t *devs = http_json(&d, "GET", "/v1/pim/devices", NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert_eq(json_array_size(json_object_get(devs, "data")), 2);
    cr_assert_str_eq(str(devs, "default_preset"), "isaac");
    cr_assert(json_array_size(json_object_get(devs, "presets")) >= 2);
    cr_assert_eq(num(devs, "queue.capacity"), 64);
    json_decref(devs);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ---------------------------------------------------------------- waits */

struct probe {
    const struct daemon *d;
    double health_s; /* how long /health took while the wait was held */
    bool probed;
    double start;
};

static bool probe_health(int running, void *ctx)
{
    struct probe *p = ctx;
    if (p->probed || running == 0 || now_s() - p->start < 0.2) return true;
    double t0 = now_s();
    struct http_response r = {0};
    http_request(p->d, "GET", "/health", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    http_response_free(&r);
    p->health_s = now_s() - t0;
    p->probed = true;
    return false;
}

Test(server_pim, waits_hold_the_request_not_the_loop, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--pim-devices", "1", "--max-body-bytes", "8388608", NULL});
    long status;
    json_t *job = post_job(&d, slow_job(SLOW_N), &status);
    cr_assert_eq(status, 202, "no wait: 202 with the queued job");
    char id[32], path[96];
    snprintf(id, sizeof id, "%s", str(job, "id"));
    cr_assert(!strcmp(str(job, "status"), "queued") || !strcmp(str(job, "status"), "running"));
    json_decref(job);

    /* a short wait answers at its deadline with the job still going */
    snprintf(path, sizeof path, "/v1/pim/jobs/%s?wait=0.3", id);
    double t0 = now_s();
    job = http_json(&d, "GET", path, NULL, &status);
    double took = now_s() - t0;
    cr_assert_eq(status, 200);
    cr_assert_str_eq(str(job, "status"), "running", "the slow job finished within 0.3 s?");
    cr_assert(took >= 0.25 && took < 5, "a 0.3 s wait took %g s", took);
    json_decref(job);

    /* a long wait ends with the job; meanwhile the loop answers /health */
    snprintf(path, sizeof path, "/v1/pim/jobs/%s?wait=120", id);
    struct http_job waits[1] = {{.method = "GET", .path = path}};
    struct probe pr = {.d = &d, .start = now_s()};
    http_run_jobs(&d, waits, 1, probe_health, &pr);
    cr_assert_eq(waits[0].resp.status, 200);
    cr_assert(pr.probed, "the job ended before /health could be probed");
    cr_assert(pr.health_s < 1.0, "/health took %g s while a wait was held", pr.health_s);
    json_t *done = json_loadb(waits[0].resp.body.data, waits[0].resp.body.len, 0, NULL);
    cr_assert(done);
    done_result(done);
    cr_assert(num(json_object_get(done, "result"), "error.rel_l2_vs_fp64") <= ldexp(1, -16));
    json_decref(done);
    http_response_free(&waits[0].resp);

    /* a finished job answers at once, wait or not; "wait" in the body too */
    t0 = now_s();
    job = http_json(&d, "GET", path, NULL, &status);
    cr_assert(now_s() - t0 < 1.0);
    cr_assert_str_eq(str(job, "status"), "done");
    json_decref(job);
    json_t *body = slow_job(32);
    json_object_set_new(body, "wait", json_integer(60));
    job = post_job(&d, body, &status);
    cr_assert_eq(status, 200);
    done_result(job);
    json_decref(job);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* --------------------------------------------------- cancel and a full queue */

Test(server_pim, cancel_and_429_on_a_full_queue, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--pim-devices", "1", "--pim-queue", "1", "--max-body-bytes",
                                      "8388608", NULL});
    char *slow = slow_body(SLOW_N);
    long status;
    json_t *a = http_json(&d, "POST", "/v1/pim/jobs", slow, &status);
    cr_assert_eq(status, 202);
    char path[64], id_a[32], id_b[32];
    snprintf(id_a, sizeof id_a, "%s", str(a, "id"));
    json_decref(a);
    /* the first job leaves the queue for the device: then one more fits */
    snprintf(path, sizeof path, "/v1/pim/jobs/%s", id_a);
    double deadline = now_s() + 30;
    for (;;) {
        a = http_json(&d, "GET", path, NULL, &status);
        bool running = !strcmp(str(a, "status"), "running");
        json_decref(a);
        if (running) break;
        cr_assert(now_s() < deadline, "the first job never ran");
        sleep_s(0.01);
    }
    json_t *b = http_json(&d, "POST", "/v1/pim/jobs", slow, &status);
    cr_assert_eq(status, 202);
    cr_assert_str_eq(str(b, "status"), "queued");
    snprintf(id_b, sizeof id_b, "%s", str(b, "id"));
    json_decref(b);

    struct http_response r = {0};
    http_request(&d, "POST", "/v1/pim/jobs", slow, NULL, &r);
    cr_assert_eq(r.status, 429);
    cr_assert(http_header(&r, "Retry-After"), "429 without Retry-After");
    json_t *err = json_loadb(r.body.data, r.body.len, 0, NULL);
    cr_assert_str_eq(str(json_object_get(err, "error"), "code"), "queue_full");
    json_decref(err);
    http_response_free(&r);
    cr_assert_eq(metric(&d, "llmd_pim_jobs_rejected_total"), 1);
    cr_assert_eq(metric(&d, "llmd_pim_queue_length"), 1);
    cr_assert_eq(metric(&d, "llmd_pim_busy_devices"), 1);

    /* the queued one is dropped at once, the running one at a check point */
    snprintf(path, sizeof path, "/v1/pim/jobs/%s", id_b);
    json_t *c = http_json(&d, "DELETE", path, NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(str(c, "status"), "cancelled");
    json_decref(c);
    snprintf(path, sizeof path, "/v1/pim/jobs/%s", id_a);
    c = http_json(&d, "DELETE", path, NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(str(c, "status"), "cancelled");
    json_decref(c);
    c = http_json(&d, "DELETE", path, NULL, &status);
    cr_assert_eq(status, 409);
    cr_assert_str_eq(str(json_object_get(c, "error"), "code"), "job_finished");
    json_decref(c);
    c = http_json(&d, "GET", path, NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(str(c, "status"), "cancelled");
    json_decref(c);
    c = http_json(&d, "DELETE", "/v1/pim/jobs/pim-999", NULL, &status);
    cr_assert_eq(status, 404);
    json_decref(c);
    cr_assert(wait_metric(&d, "llmd_pim_jobs_total{type=\"invert\",status=\"cancelled\"}", 2, 10));
    cr_assert_eq(metric(&d, "llmd_pim_queue_length"), 0);
    cr_assert(wait_metric(&d, "llmd_pim_busy_devices", 0, 10));
    free(slow);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ---------------------------------------------------------------- bad jobs */

struct bad_case {
    const char *method, *path, *body;
    long status;
    const char *param; /* NULL: null */
    const char *code;
};

Test(server_pim, bad_jobs_get_4xx_with_the_param, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--pim-max-tensor-elements", "64", NULL});
    static const struct bad_case cases[] = {
        {"POST", "/v1/pim/jobs", "{\"type\": \"vmm\",", 400, NULL, "invalid_json"},
        {"POST", "/v1/pim/jobs", "[1, 2]", 400, NULL, NULL},
        {"POST", "/v1/pim/jobs", "{\"matrix\": [[1]]}", 400, "type", "missing_parameter"},
        {"POST", "/v1/pim/jobs", "{\"type\": \"fft\"}", 400, "type", NULL},
        {"POST", "/v1/pim/jobs", "{\"type\": \"vmm\", \"input\": [1]}", 400, "matrix", NULL},
        {"POST", "/v1/pim/jobs", "{\"type\": \"vmm\", \"matrix\": [[1, 2]], \"input\": [1, 2, 3]}",
         400, "input", NULL},
        {"POST", "/v1/pim/jobs", "{\"type\": \"vmm\", \"matrix\": [[1, 2], [3]], \"input\": [1]}",
         400, "matrix", NULL},
        {"POST", "/v1/pim/jobs", "{\"type\": \"vmm\", \"matrix\": [[1, 1e39]], \"input\": [1, 1]}",
         400, "matrix", "invalid_value"},
        {"POST", "/v1/pim/jobs", "{\"type\": \"vmm\", \"matrix\": [[1, \"a\"]], \"input\": [1, 1]}",
         400, "matrix", NULL},
        {"POST", "/v1/pim/jobs",
         "{\"type\": \"vmm\", \"matrix\": {\"shape\": [2], \"dtype\": \"f32\", \"data\": \"AAA\"}, "
         "\"input\": [1]}",
         400, "matrix", NULL},
        {"POST", "/v1/pim/jobs", "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1], \"x\": 1}",
         400, "x", "unknown_parameter"},
        {"POST", "/v1/pim/jobs",
         "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1], \"device\": \"nope\"}", 400,
         "device", NULL},
        {"POST", "/v1/pim/jobs",
         "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1], \"device\": {\"adc_bits\": 99}}",
         400, "device.adc_bits", NULL},
        {"POST", "/v1/pim/jobs",
         "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1], \"wait\": -1}", 400, "wait", NULL},
        {"POST", "/v1/pim/jobs?wait=abc", "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1]}",
         400, "wait", NULL},
        {"POST", "/v1/pim/jobs",
         "{\"type\": \"solve\", \"matrix\": [[1, 2], [3, 4], [5, 6]], \"rhs\": [1, 2, 3]}", 400,
         "matrix", NULL},
        {"POST", "/v1/pim/jobs",
         "{\"type\": \"dataflow_eval\", \"layers\": [{\"in\": 0, \"out\": 4}]}", 400, NULL, NULL},
        {"GET", "/v1/pim/jobs/pim-424242", NULL, 404, "id", "job_not_found"},
        {"GET", "/v1/pim/jobs/banana", NULL, 404, "id", "job_not_found"},
        {"GET", "/v1/pim/jobs/pim-1?wait=1e9", NULL, 400, "wait", NULL},
        {"PUT", "/v1/pim/jobs/pim-1", NULL, 405, NULL, "method_not_allowed"},
        {"GET", "/v1/pim/jobs", NULL, 405, NULL, "method_not_allowed"},
        {"DELETE", "/v1/pim/devices", NULL, 405, NULL, "method_not_allowed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct bad_case *c = &cases[i];
        long status;
        json_t *j = http_json(&d, c->method, c->path, c->body, &status);
        cr_assert_eq(status, c->status, "%s %s %s -> %ld: %s", c->method, c->path,
                     c->body ? c->body : "", status, json_dumps(j, 0));
        json_t *e = json_object_get(j, "error");
        cr_assert(json_is_string(json_object_get(e, "message")), "%s", c->body);
        cr_assert(json_is_string(json_object_get(e, "type")));
        json_t *param = json_object_get(e, "param");
        if (c->param) {
            cr_assert(json_is_string(param), "%s: param null", c->body ? c->body : c->path);
            /* the offending element may be named below the parameter */
            cr_assert(strncmp(json_string_value(param), c->param, strlen(c->param)) == 0,
                      "%s: param %s, not %s", c->body ? c->body : c->path, json_string_value(param),
                      c->param);
        }
        if (c->code) cr_assert_str_eq(str(e, "code"), c->code, "%s", c->body ? c->body : c->path);
        json_decref(j);
    }
    /* over the tensor limit (64 elements): a 9 x 9 matrix */
    double *big = random_matrix(9, 9);
    long status;
    json_t *j = post_job(&d,
                         json_pack("{s:s, s:o, s:o}", "type", "vmm", "matrix",
                                   matrix_json(big, 9, 9), "input", vector_json(big, 9)),
                         &status);
    cr_assert_eq(status, 413, "%ld", status);
    cr_assert_str_eq(str(json_object_get(j, "error"), "param"), "matrix");
    json_decref(j);
    free(big);
    /* a singular system fails as a job, not as a request */
    j = http_json(&d, "POST", "/v1/pim/jobs",
                  "{\"type\": \"solve\", \"matrix\": [[0, 0], [0, 0]], \"rhs\": [1, 1], "
                  "\"wait\": 30}",
                  &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(str(j, "status"), "failed", "%s", json_dumps(j, 0));
    cr_assert(json_is_string(json_object_get(json_object_get(j, "error"), "message")));
    json_decref(j);
    /* Singular to working precision, though regular once quantised to 8
     * bits: failed with the reason, never "converged" garbage. */
    static const struct {
        const char *body, *param;
    } singular[] = {
        {"{\"type\": \"solve\", \"matrix\": [[1, 2], [2, 4]], \"rhs\": [1, 1], \"wait\": 30}",
         "matrix"},
        {"{\"type\": \"invert\", \"matrix\": [[1, 2], [2, 4]], \"wait\": 30}", "matrix"},
        {"{\"type\": \"kfac_step\", \"activations\": [[1, 1], [1, 1]], \"output_grads\": [[1], "
         "[2]], \"grad\": [[1, 1]], \"damping\": 1e-300, \"wait\": 30}",
         "damping"},
    };
    for (size_t i = 0; i < sizeof singular / sizeof singular[0]; i++) {
        j = http_json(&d, "POST", "/v1/pim/jobs", singular[i].body, &status);
        cr_assert_eq(status, 200, "%s -> %ld", singular[i].body, status);
        cr_assert_str_eq(str(j, "status"), "failed", "%s", json_dumps(j, 0));
        cr_assert_null(json_object_get(j, "result"));
        json_t *e = json_object_get(j, "error");
        cr_assert_str_eq(str(e, "code"), "singular_matrix", "%s", json_dumps(j, 0));
        cr_assert_str_eq(str(e, "param"), singular[i].param, "%s", json_dumps(j, 0));
        cr_assert(strstr(str(e, "message"), "singular to working precision"), "%s",
                  str(e, "message"));
        json_decref(j);
    }
    /* still serving */
    j = http_json(&d, "POST", "/v1/pim/jobs",
                  "{\"type\": \"vmm\", \"matrix\": [[1, 2]], \"input\": [3, 4], \"wait\": 30}",
                  &status);
    cr_assert_eq(status, 200);
    double *out = numbers(json_object_get(done_result(j), "output"), 1);
    cr_assert(fabs(out[0] - 11) < 1e-2);
    free(out);
    json_decref(j);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_pim, auth_guards_the_pim_routes_and_bad_pim_settings_exit_2, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--api-keys", "sk-pim", NULL});
    long status;
    json_t *j = http_json(&d, "GET", "/v1/pim/devices", NULL, &status);
    cr_assert_eq(status, 401);
    json_decref(j);
    struct http_response r = {0};
    http_request(&d, "GET", "/v1/pim/devices", NULL,
                 (const char *[]){"Authorization: Bearer sk-pim", NULL}, &r);
    cr_assert_eq(r.status, 200);
    http_response_free(&r);
    cr_assert_eq(daemon_stop(&d), 0);

    cr_assert(daemon_spawn(&d, TEST_MODEL, (const char *[]){"--pim-preset", "nope", NULL}) ==
              false);
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S));
    cr_assert_eq(d.status, 2, "exit %d; log:\n%s", d.status, daemon_log_tail(&d));
    cr_assert(daemon_spawn(&d, TEST_MODEL, (const char *[]){"--pim-devices", "0", NULL}) == false);
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S));
    cr_assert_eq(d.status, 2);
}

/* ---------------------------------------------------------------- metrics */

Test(server_pim, metrics_count_jobs_energy_and_conversions, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, NULL);
    cr_assert_eq(metric(&d, "llmd_pim_devices"), 2);
    cr_assert_eq(metric(&d, "llmd_pim_jobs_total{type=\"vmm\",status=\"done\"}"), 0);
    double adc = 0, energy = 0;
    for (int i = 0; i < 3; i++) {
        long status;
        json_t *j = http_json(&d, "POST", "/v1/pim/jobs",
                              "{\"type\": \"vmm\", \"matrix\": [[1, 2], [3, 4]], \"input\": [1, "
                              "-1], \"wait\": 30}",
                              &status);
        json_t *res = done_result(j);
        adc += num(res, "cost.adc_conversions");
        energy += num(res, "cost.energy_j.total");
        json_decref(j);
    }
    long status;
    json_t *j =
        http_json(&d, "POST", "/v1/pim/jobs",
                  "{\"type\": \"invert\", \"matrix\": [[0, 0], [0, 0]], \"wait\": 30}", &status);
    cr_assert_str_eq(str(j, "status"), "failed");
    json_decref(j);
    /* the completions reach the metrics through the loop: poll briefly */
    cr_assert(wait_metric(&d, "llmd_pim_jobs_total{type=\"vmm\",status=\"done\"}", 3, 10));
    cr_assert(wait_metric(&d, "llmd_pim_jobs_total{type=\"invert\",status=\"failed\"}", 1, 10));
    cr_assert_eq(metric(&d, "llmd_pim_jobs_submitted_total{type=\"vmm\"}"), 3);
    cr_assert_eq(metric(&d, "llmd_pim_adc_conversions_total"), adc);
    double e = metric(&d, "llmd_pim_energy_joules_total");
    cr_assert(fabs(e - energy) <= 1e-6 * energy, "energy %g, jobs said %g", e, energy);
    cr_assert_eq(metric(&d, "llmd_pim_job_latency_seconds_count"), 4);
    cr_assert_eq(metric(&d, "llmd_pim_busy_devices"), 0);
    cr_assert_eq(metric(&d, "llmd_pim_queue_length"), 0);
    cr_assert_eq(metric(&d, "llmd_http_requests_total{path=\"/v1/pim/jobs\",status=\"200\"}"), 4);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ------------------------------------------------------------- shutdown */

struct stopper {
    struct daemon *d;
    double start;
    bool sent;
};

static bool send_sigterm(int running, void *ctx)
{
    struct stopper *s = ctx;
    if (!s->sent && running > 0 && now_s() - s->start > 0.3) {
        kill(s->d->pid, SIGTERM);
        s->sent = true;
        return false;
    }
    return true;
}

Test(server_pim, sigterm_answers_the_waiters_at_once, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--pim-devices", "1", "--max-body-bytes", "8388608", NULL});
    long status;
    json_t *job = post_job(&d, slow_job(SLOW_N), &status);
    cr_assert_eq(status, 202);
    char path[96];
    snprintf(path, sizeof path, "/v1/pim/jobs/%s?wait=120", str(job, "id"));
    json_decref(job);
    struct http_job waits[1] = {{.method = "GET", .path = path}};
    struct stopper s = {.d = &d, .start = now_s()};
    http_run_jobs(&d, waits, 1, send_sigterm, &s);
    double took = now_s() - s.start;
    cr_assert(s.sent);
    cr_assert_eq(waits[0].resp.status, 200);
    json_t *j = json_loadb(waits[0].resp.body.data, waits[0].resp.body.len, 0, NULL);
    cr_assert(j);
    cr_assert_str_neq(str(j, "status"), "done", "the slow job finished within 0.3 s?");
    json_decref(j);
    http_response_free(&waits[0].resp);
    cr_assert(took < 3.0, "the waiter was answered after %g s", took);
    /* one SIGTERM was sent: the daemon stops on its own (a second would
     * make it exit at once with 1) */
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S));
    cr_assert_eq(d.status, 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* Behind a load balancer: a replica's job ids name it, it answers only its
 * own, and /v1/pim/devices and /metrics say which replica this is. */
Test(server_pim, a_replica_names_its_jobs_and_itself)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--replica-id", "r7", NULL});
    long status;
    json_t *j = http_json(&d, "POST", "/v1/pim/jobs",
                          "{\"type\": \"vmm\", \"matrix\": [[1, 2]], \"input\": [3, 4], \"wait\": 10}",
                          &status);
    cr_assert_eq(status, 200);
    const char *id = json_string_value(json_object_get(j, "id"));
    cr_assert(id && strncmp(id, "pim-r7-", 7) == 0, "id %s", id ? id : "(none)");
    char path[128];
    snprintf(path, sizeof path, "/v1/pim/jobs/%s", id);
    json_t *again = http_json(&d, "GET", path, NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(json_string_value(json_object_get(again, "status")), "done");
    json_decref(again);
    /* the same number without the replica, or under another, is not this job */
    snprintf(path, sizeof path, "/v1/pim/jobs/pim-%s", id + 7);
    json_decref(http_json(&d, "GET", path, NULL, &status));
    cr_assert_eq(status, 404);
    snprintf(path, sizeof path, "/v1/pim/jobs/pim-r8-%s", id + 7);
    json_decref(http_json(&d, "GET", path, NULL, &status));
    cr_assert_eq(status, 404);
    json_decref(j);
    json_t *devices = http_json(&d, "GET", "/v1/pim/devices", NULL, &status);
    cr_assert_str_eq(json_string_value(json_object_get(devices, "replica_id")), "r7");
    json_decref(devices);
    cr_assert_eq(metric(&d, "llmd_build_info{replica_id=\"r7\"}"), 1.0);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}
