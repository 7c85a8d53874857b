/* cpu.c: CPU feature detection by cpuid, and the AMX permission request. */
#include "util.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA  18

static struct util_cpu cpu;
static char flags_string[256];
static char model_name[128] = "unknown";
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

/* The OS must save the wider register state too, or the instructions fault. */
static unsigned long long read_xcr0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void read_model_name(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *colon = strchr(line, ':');
        if (!colon) break;
        snprintf(model_name, sizeof model_name, "%s", colon + 2);
        model_name[strcspn(model_name, "\n")] = 0;
        break;
    }
    fclose(f);
}

static void detect(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    bool osxsave = c & bit_OSXSAVE;
    unsigned long long xcr0 = osxsave ? read_xcr0() : 0;
    bool ymm_os = (xcr0 & 0x6) == 0x6;
    bool zmm_os = (xcr0 & 0xe6) == 0xe6;
    cpu.fma = ymm_os && (c & bit_FMA);
    cpu.f16c = ymm_os && (c & bit_F16C);
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        cpu.avx2 = ymm_os && (b & bit_AVX2);
        cpu.avx512f = zmm_os && (b & bit_AVX512F);
        cpu.avx512bw = zmm_os && (b & bit_AVX512BW);
        cpu.avx512vl = zmm_os && (b & bit_AVX512VL);
        cpu.avx512dq = zmm_os && (b & bit_AVX512DQ);
        cpu.avx512vnni = zmm_os && (c & bit_AVX512VNNI);
        cpu.avx512fp16 = zmm_os && (d & (1u << 23));
        cpu.amx_tile = d & (1u << 24);
        cpu.amx_int8 = d & (1u << 25);
    }
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
        cpu.avxvnni = ymm_os && (a & (1u << 4));
        cpu.avx512bf16 = zmm_os && (a & (1u << 5));
    }

    const char *cap = getenv("LLMD_ISA");
    if (cap && strcmp(cap, "avx2") == 0) {
        cpu.avxvnni = false;
        cpu.avx512f = cpu.avx512bw = cpu.avx512vl = cpu.avx512dq = false;
        cpu.avx512vnni = cpu.avx512bf16 = cpu.avx512fp16 = false;
        cpu.amx_tile = cpu.amx_int8 = false;
    } else if (cap && strcmp(cap, "avx512") == 0) {
        cpu.amx_tile = cpu.amx_int8 = false;
    }
    if (cpu.amx_tile && cpu.amx_int8)
        cpu.amx_usable = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;

    struct {
        bool on;
        const char *name;
    } names[] = {{cpu.avx2, "avx2"},
                 {cpu.fma, "fma"},
                 {cpu.avxvnni, "avxvnni"},
                 {cpu.f16c, "f16c"},
                 {cpu.avx512f, "avx512f"},
                 {cpu.avx512bw, "avx512bw"},
                 {cpu.avx512vl, "avx512vl"},
                 {cpu.avx512dq, "avx512dq"},
                 {cpu.avx512vnni, "avx512vnni"},
                 {cpu.avx512bf16, "avx512bf16"},
                 {cpu.avx512fp16, "avx512fp16"},
                 {cpu.amx_usable, "amx-int8"}};
    size_t used = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].on && used < sizeof flags_string)
            used += (size_t)snprintf(flags_string + used, sizeof flags_string - used, "%s%s",
                                     used ? " " : "", names[i].name);
    read_model_name();
}

const struct util_cpu *util_cpu(void)
{
    pthread_once(&cpu_once, detect);
    return &cpu;
}

bool util_cpu_has_avx512(void)
{
    const struct util_cpu *c = util_cpu();
    return c->avx512f && c->avx512bw && c->avx512vl && c->avx512dq;
}

const char *util_cpu_flags_string(void)
{
    util_cpu();
    return flags_string;
}

const char *util_cpu_model_name(void)
{
    util_cpu();
    return model_name;
}
