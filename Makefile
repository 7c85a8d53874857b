# llmd: build, test, benchmark.
#
#   make            build build/llmd
#   make run        install missing packages, build, serve the default model
#   make test       unit tests, then the same tests under ASan + UBSan, then the web page
#                   in headless Chromium (tests/web/run.sh) and replicas behind nginx
#                   (tests/cluster/run.sh)
#   make cluster    replicas of the default model behind nginx on 127.0.0.1:8080 (conf/nginx/)
#   make bench      build and run the benchmarks in bench/
#   make bench-peer llmd against llama.cpp side by side (bench/peer.sh; not in test or CI)
#   make fuzz       run each libFuzzer target for FUZZ_SECONDS
#   make soak       bench/soak.sh: SOAK_SECONDS of mixed load on 127.0.0.1
#   make deps       install the Debian packages llmd needs (apt-get, as root)
#   make format     clang-format every C file
#
# Every module folder is compiled into one set of objects; files named
# *_avx512.c, *_avxvnni.c and *_amx.c get the ISA flags of their kernels, the rest build
# for x86-64-v3 (AVX2), so the binary runs on any AVX2 machine and picks the
# wider kernels at start-up by cpuid.

BUILD       ?= build
CC          ?= gcc
MODULES     := util core quant attention pim server cli
PKGS        := libmicrohttpd jansson libuv openblas lapacke
DEB_PACKAGES := build-essential pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev \
                libopenblas-dev liblapacke-dev libcriterion-dev clang libclang-rt-14-dev libomp-dev \
                curl wrk libcurl4-openssl-dev python3-jsonschema
MODEL       ?= models/llmd-20m.gguf
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 60

# `make V=1` shows the full commands.
Q := $(if $(V),,@)

ifeq ($(origin CC),default)
CC := gcc
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CRITERION  := $(shell pkg-config --libs criterion 2>/dev/null)
# Tests and benchmarks talk HTTP to the daemon; llmd itself does not link curl.
CURL_LIBS  := $(shell pkg-config --libs libcurl 2>/dev/null)

CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -march=x86-64-v3 -Wall -Wextra -Werror -fopenmp -D_GNU_SOURCE \
            -MMD -MP -I. $(PKG_CFLAGS)
LDLIBS   := $(PKG_LIBS) -lm -lpthread -fopenmp
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx512fp16
AMX_FLAGS    := $(AVX512_FLAGS) -mamx-tile -mamx-int8
AVXVNNI_FLAGS := -mavxvnni
SAN_FLAGS    := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

LIB_SRC   := $(filter-out cli/main.c,$(wildcard $(addsuffix /*.c,$(MODULES))))
TEST_SRC  := $(wildcard tests/test_*.c)
BENCH_SRC := $(wildcard bench/*.c)
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)

# Objects of one build flavour: $(call objs,DIR,SOURCES)
objs = $(patsubst %.c,$(1)/obj/%.o,$(2))

LIB_OBJ      := $(call objs,$(BUILD),$(LIB_SRC))
ASAN_LIB_OBJ := $(call objs,$(BUILD)/asan,$(LIB_SRC))
TESTS        := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
ASAN_TESTS   := $(patsubst tests/%.c,$(BUILD)/asan/tests/%,$(TEST_SRC))
BENCHES      := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
FUZZ_REPLAY  := $(patsubst tests/fuzz/%.c,$(BUILD)/asan/fuzz-replay/%,$(FUZZ_SRC))
FUZZERS      := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))

.SECONDARY:
.PHONY: all deps run test test-build unit-tests isa-tests asan-tests fuzz-replay web-test cluster-test cluster bench fuzz soak format clean
.DEFAULT_GOAL := all

all: $(BUILD)/llmd

# ------------------------------------------------------------ dependencies
# Installs what is missing; prints the command instead when not root.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# ---------------------------------------------------------------- building
# One set of pattern rules per flavour: $(call flavour,DIR,COMPILER,FLAGS)
define flavour
$(1)/obj/%.o: %.c
	@mkdir -p $$(@D)
	@echo "  CC    $$@"
	$(Q)$(2) $$(CFLAGS) $(3) -c $$< -o $$@
$(1)/obj/%_avx512.o: %_avx512.c
	@mkdir -p $$(@D)
	@echo "  CC    $$@"
	$(Q)$(2) $$(CFLAGS) $(3) $$(AVX512_FLAGS) -c $$< -o $$@
$(1)/obj/%_amx.o: %_amx.c
	@mkdir -p $$(@D)
	@echo "  CC    $$@"
	$(Q)$(2) $$(CFLAGS) $(3) $$(AMX_FLAGS) -c $$< -o $$@
$(1)/obj/%_avxvnni.o: %_avxvnni.c
	@mkdir -p $$(@D)
	@echo "  CC    $$@"
	$(Q)$(2) $$(CFLAGS) $(3) $$(AVXVNNI_FLAGS) -c $$< -o $$@
endef

# libFuzzer builds use clang with LLVM's OpenMP runtime (libomp-dev).
FUZZ_FLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
              -Wno-pass-failed -Wno-unused-command-line-argument
$(eval $(call flavour,$(BUILD),$(CC),))
$(eval $(call flavour,$(BUILD)/asan,$(CC),$(SAN_FLAGS)))
$(eval $(call flavour,$(BUILD)/fuzz,clang,$(FUZZ_FLAGS)))

# The web page's files are assembled into web.o (.incbin): rebuild it when they change.
WEB_FILES := $(wildcard server/web/*)
$(BUILD)/obj/server/web.o $(BUILD)/asan/obj/server/web.o $(BUILD)/fuzz/obj/server/web.o: $(WEB_FILES)

$(BUILD)/llmd: $(LIB_OBJ) $(BUILD)/obj/cli/main.o
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/asan/llmd: $(ASAN_LIB_OBJ) $(BUILD)/asan/obj/cli/main.o
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) $(SAN_FLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(LIB_OBJ)
	@mkdir -p $(@D)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(CRITERION) $(CURL_LIBS) $(LDLIBS)

$(BUILD)/asan/tests/%: $(BUILD)/asan/obj/tests/%.o $(ASAN_LIB_OBJ)
	@mkdir -p $(@D)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) $(SAN_FLAGS) $^ -o $@ $(CRITERION) $(CURL_LIBS) $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB_OBJ)
	@mkdir -p $(@D)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(CURL_LIBS) $(LDLIBS)

# Fuzz targets are built twice: as plain ASan programs that replay their
# corpus (make test), and as libFuzzer binaries (make fuzz).
$(BUILD)/asan/fuzz-replay/%: $(BUILD)/asan/obj/tests/fuzz/%.o $(BUILD)/asan/obj/tests/fuzz/replay_main.o $(ASAN_LIB_OBJ)
	@mkdir -p $(@D)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) $(SAN_FLAGS) $^ -o $@ $(LDLIBS)

FUZZ_LIB_OBJ := $(call objs,$(BUILD)/fuzz,$(LIB_SRC))
$(BUILD)/fuzz/%: $(BUILD)/fuzz/obj/tests/fuzz/%.o $(FUZZ_LIB_OBJ)
	@mkdir -p $(@D)
	@echo "  LINK  $@"
	$(Q)clang -fsanitize=fuzzer,address,undefined -fopenmp $^ -o $@ $(PKG_LIBS) -lm -lpthread

# ----------------------------------------------------------------- running
run: deps
	@$(MAKE) --no-print-directory $(BUILD)/llmd
	$(BUILD)/llmd serve --model $(MODEL)

test: deps
	@$(MAKE) --no-print-directory test-build
	@$(MAKE) --no-print-directory unit-tests isa-tests asan-tests fuzz-replay web-test cluster-test

test-build: $(BUILD)/llmd $(BUILD)/asan/llmd $(TESTS) $(ASAN_TESTS) $(FUZZ_REPLAY)

unit-tests: $(TESTS) $(BUILD)/llmd
	@set -e; for t in $(TESTS); do echo "== $$t"; $$t --jobs 2; done

# The model-side tests again with the instruction set capped below this
# CPU's best (LLMD_ISA, util/cpu.c), so that an AVX-512 or AMX machine also
# runs the paths an AVX2-only CPU takes (and an AMX one the AVX-512 ones).
ISA_TESTS := $(filter $(BUILD)/tests/test_core_% $(BUILD)/tests/test_quant_% \
                      $(BUILD)/tests/test_attention_%,$(TESTS))
isa-tests: $(ISA_TESTS)
	@set -e; flags=$$(grep -m1 '^flags' /proc/cpuinfo); levels=""; \
	case "$$flags" in *avx512f*|*avx_vnni*) levels="avx2";; esac; \
	case "$$flags" in *amx_int8*) levels="$$levels avx512";; esac; \
	if [ -z "$$levels" ]; then echo "== isa-tests skipped: this CPU's best is AVX2, tested above"; fi; \
	for isa in $$levels; do for t in $(ISA_TESTS); do \
	  echo "== $$t (LLMD_ISA=$$isa)"; LLMD_ISA=$$isa $$t --jobs 2; done; done

# The server's integration tests run build/asan/llmd here.
asan-tests: $(ASAN_TESTS) $(BUILD)/asan/llmd
	@set -e; for t in $(ASAN_TESTS); do echo "== $$t (asan+ubsan)"; \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $$t --jobs 2; done

# The web page in headless Chromium (skips with a message where it cannot run).
web-test: $(BUILD)/llmd
	@tests/web/run.sh $(BUILD)/llmd

# Three replicas behind nginx, one killed, one stopped (skips without nginx).
cluster-test: $(BUILD)/llmd
	@tests/cluster/run.sh $(BUILD)/llmd

# N replicas (CLUSTER_REPLICAS, default 3) of the default model behind nginx on
# 127.0.0.1:8080, in the foreground; Ctrl-C stops them all (conf/nginx/cluster.sh).
CLUSTER_REPLICAS ?= 3
cluster: $(BUILD)/llmd
	@command -v nginx >/dev/null || $(MAKE) --no-print-directory deps DEB_PACKAGES=nginx-light
	LLMD=$(BUILD)/llmd MODEL=$(MODEL) conf/nginx/cluster.sh run $(CLUSTER_REPLICAS)

fuzz-replay: $(FUZZ_REPLAY)
	@set -e; for f in $(FUZZ_REPLAY); do n=$$(basename $$f); echo "== $$n corpus replay"; \
	  $$f tests/fuzz/corpus/$${n#fuzz_}; done

bench: $(BENCHES) $(BUILD)/llmd
	@set -e; for b in $(BENCHES); do echo "== $$b"; $$b; done

# Fetches and builds llama.cpp once (~/.cache/llmd-peer), then measures both.
.PHONY: bench-peer
bench-peer: $(BUILD)/llmd $(BUILD)/bench/peer_model $(BUILD)/bench/peer_llmd $(BUILD)/bench/loadgen
	bench/peer.sh

fuzz: $(FUZZERS)
	@set -e; for f in $(FUZZERS); do n=$$(basename $$f); d=tests/fuzz/corpus/$${n#fuzz_}; \
	  mkdir -p $(BUILD)/fuzz/new-$$n; echo "== $$n for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 $(BUILD)/fuzz/new-$$n $$d; done

soak: $(BUILD)/llmd $(BUILD)/bench/loadgen
	bench/soak.sh $(SOAK_SECONDS) $(MODEL)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
