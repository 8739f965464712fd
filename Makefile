# tokmon — one plain GNU Makefile.
#
#   make              build every binary into build/bin
#   make test         sanitizer build (ASan+UBSan), unit tests, integration
#                     tests, a short run of every fuzzer
#   make run          the whole pipeline on this machine (DEMO=1 adds traffic)
#   make fuzz         every fuzzer for FUZZ_SECONDS each (default 300)
#   make bench        every benchmark; make bench-ingest for the collector's,
#                     make bench-aggregator for the aggregator's memory and rate,
#                     make bench-pgwriter for the writer's rate into PostgreSQL
#   make deps         install missing Debian packages (run by the others)
#
# One unit test alone: make unit T=common/cfg_test [ARGS=test_name]

VERSION   := 0.1.0
BUILD     ?= build
CC        ?= cc
PKGS      := libzmq msgpack libsodium inih jansson libxxhash libpq libmicrohttpd libprotobuf-c libcurl zlib snappy
SHELL     := /bin/bash

WARN      := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
             -Wpointer-arith -Wcast-qual -Wformat=2
CFLAGS    ?= -O2 -g
ifeq ($(WERROR),1)
WARN      += -Werror
endif
ifeq ($(SAN),1)
SANFLAGS  := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
CFLAGS    := -O1 -g
endif
ifeq ($(FUZZ),1)
SANFLAGS  := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
CFLAGS    := -O1 -g
CC        := clang
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   = $(shell pkg-config --libs $(PKGS))
CPPFLAGS  += -D_GNU_SOURCE -DTOKMON_VERSION='"$(VERSION)"' -Icommon -Icollectd -Iaggregator -Iwriter -Iexporter -I$(BUILD)/gen/exporter -Ialerter -Itools
ALL_CFLAGS = -std=c11 $(WARN) $(CFLAGS) $(SANFLAGS) -MMD -MP $(PKG_CFLAGS)
LDLIBS     = $(PKG_LIBS) -lm -lpthread

# ---- sources ---------------------------------------------------------------

COMMON_SRC := common/xalloc.c common/log.c common/tmtime.c common/sig.c common/spool.c \
              common/sdnotify.c common/addr.c common/cfg.c common/dec.c \
              common/jtok.c common/mpr.c common/msg.c common/bus.c \
              common/stats.c common/prices.c common/auth.c common/replay.c common/rsub.c \
              common/curve.c common/buscfg.c common/sketch.c common/daemon.c
# the collector's code, also linked into its tests and fuzzers
COLLECTD_LIB := collectd/statsd.c collectd/event.c collectd/ingest.c \
                collectd/batch.c collectd/net.c
# the aggregator's code, also linked into its tests
AGGREGATOR_LIB := aggregator/cal.c aggregator/ktab.c aggregator/win.c aggregator/snap.c \
                  aggregator/quota.c aggregator/budget.c aggregator/rollup.c \
                  aggregator/sflush.c aggregator/agg.c aggregator/query.c
# the writer's code, also linked into its tests; its migrations compiled in
WRITER_LIB := writer/pgw.c $(BUILD)/gen/writer/migrations.c
MIGRATIONS := $(sort $(wildcard writer/migrations/*.sql))
# the exporter's code, also linked into its tests (one line per module)
EXPORTER_LIB :=
EXPORTER_LIB += exporter/model.c
EXPORTER_LIB += tools/query_client.c
EXPORTER_LIB += exporter/api.c
# query_client_test includes tools/query_client.c whole: link it without the object
$(BUILD)/test/tools/query_client_test: APP_LIB = $(COLLECTD_LIB) $(AGGREGATOR_LIB) $(WRITER_LIB) \
    $(filter-out tools/query_client.c,$(EXPORTER_LIB))
EXPORTER_LIB += exporter/loki.c
EXPORTER_LIB += exporter/web.c
EXPORTER_LIB += $(BUILD)/gen/exporter/remote.pb-c.c
EXPORTER_LIB += exporter/rw.c
# the alerter's code, also linked into its tests (one line per module)
ALERTER_LIB :=
ALERTER_LIB += alerter/notify.c
ALERTER_LIB += alerter/rules.c
ALERTER_LIB += alerter/engine.c
ALERTER_LIB += alerter/digest.c
# what unit tests and fuzzers link besides libtokmon
APP_LIB := $(COLLECTD_LIB) $(AGGREGATOR_LIB) $(WRITER_LIB) $(EXPORTER_LIB) $(ALERTER_LIB)

BINS := tokmon-collectd tokmon-aggregator tokmon-pgwriter tokmon-exporter tokmon-alerter tokmon-emit tokmon-tap tokmonctl
tokmon-collectd_SRC := collectd/main.c $(COLLECTD_LIB)
tokmon-aggregator_SRC := aggregator/main.c $(AGGREGATOR_LIB)
tokmon-pgwriter_SRC := writer/main.c $(WRITER_LIB)
tokmon-exporter_SRC := exporter/main.c $(EXPORTER_LIB) aggregator/ktab.c aggregator/cal.c
tokmon-alerter_SRC  := alerter/main.c $(ALERTER_LIB) aggregator/ktab.c aggregator/cal.c \
                       aggregator/snap.c
tokmon-emit_SRC     := tools/emit.c tools/demo.c tools/wire.c
tokmon-tap_SRC      := tools/tap.c tools/mp2json.c
tokmonctl_SRC       := tools/ctl.c tools/mp2json.c tools/query_client.c

UNIT_TESTS := common/jtok_test common/dec_test common/cfg_test common/prices_test \
              common/msg_test common/mpr_test common/bus_test common/auth_test \
              common/tmtime_test common/log_test \
              common/spool_test common/replay_test common/rsub_test common/sketch_test \
              collectd/statsd_test collectd/event_test collectd/ingest_test \
              aggregator/cal_test aggregator/sflush_test aggregator/agg_test \
              writer/pgw_test tools/query_client_test exporter/loki_test exporter/model_test \
              exporter/rw_test
UNIT_TESTS += exporter/api_test
UNIT_TESTS += alerter/notify_test
UNIT_TESTS += alerter/engine_test
UNIT_TESTS += alerter/rules_test
FUZZERS := fuzz_statsd fuzz_jtok fuzz_dec fuzz_msgpack fuzz_cfg fuzz_ingest fuzz_sketch \
           fuzz_aggbus fuzz_snapshot fuzz_query fuzz_consumers

# ---- rules -----------------------------------------------------------------

OBJ  = $(BUILD)/obj
LIB  := $(BUILD)/libtokmon.a
DEPS_STAMP := build/.deps-ok

obj = $(patsubst %.c,$(OBJ)/%.o,$(patsubst $(BUILD)/gen/%,%,$(1)))

.PHONY: all deps test unit unit-tests integration fuzz-smoke fuzz bench bench-ingest bench-spool bench-aggregator bench-exporter bench-pgwriter run clean chaos
.DEFAULT_GOAL := all

all: $(addprefix $(BUILD)/bin/,$(BINS))

$(DEPS_STAMP): scripts/deps.sh tests/clients/package-lock.json
	@mkdir -p $(dir $@)
	@scripts/deps.sh check >/dev/null 2>&1 || scripts/deps.sh
	@touch $@

deps:
	scripts/deps.sh
	@mkdir -p $(dir $(DEPS_STAMP)) && touch $(DEPS_STAMP)

$(OBJ)/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/gen/writer/migrations.c: scripts/embed.sh $(MIGRATIONS)
	@mkdir -p $(dir $@)
	scripts/embed.sh $@ pgw_migrations $(MIGRATIONS)

$(OBJ)/writer/migrations.o: $(BUILD)/gen/writer/migrations.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

# remote write's protobuf messages (exporter/remote.proto) through protoc-c;
# one run makes both files (a grouped target, GNU make 4.3), and what
# includes the header waits for it. The generated code casts const away in
# its initialisers, hence -Wno-cast-qual.
$(BUILD)/gen/exporter/remote.pb-c.c $(BUILD)/gen/exporter/remote.pb-c.h &: exporter/remote.proto | $(DEPS_STAMP)
	@mkdir -p $(BUILD)/gen/exporter
	protoc-c --c_out=$(BUILD)/gen/exporter --proto_path=exporter exporter/remote.proto

$(OBJ)/exporter/remote.pb-c.o: $(BUILD)/gen/exporter/remote.pb-c.c $(BUILD)/gen/exporter/remote.pb-c.h | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -Wno-cast-qual -c $< -o $@

$(OBJ)/exporter/rw.o $(BUILD)/test/exporter/rw_test: $(BUILD)/gen/exporter/remote.pb-c.h

$(LIB): $(call obj,$(COMMON_SRC))
	@rm -f $@
	ar rcs $@ $^

define BIN_RULE
$(BUILD)/bin/$(1): $(call obj,$($(1)_SRC)) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ALL_CFLAGS) $$^ $$(LDLIBS) -o $$@
endef
$(foreach b,$(BINS),$(eval $(call BIN_RULE,$(b))))

# unit tests link the module under test, the stages' code and libtokmon
$(BUILD)/test/%: %.c $(call obj,$(APP_LIB)) $(LIB) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $< $(call obj,$(APP_LIB)) $(LIB) $(LDLIBS) -lcmocka -o $@

unit-tests: $(addprefix $(BUILD)/test/,$(UNIT_TESTS))

$(BUILD)/fuzz/%: tests/fuzz/%.c $(call obj,$(APP_LIB)) $(LIB) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -fsanitize=fuzzer $< $(call obj,$(APP_LIB)) $(LIB) $(LDLIBS) -o $@

fuzzers: $(addprefix $(BUILD)/fuzz/,$(FUZZERS))

# ---- test ------------------------------------------------------------------

SAN_BUILD  := build/san
FUZZ_BUILD := build/fuzz
export TOKMON_REPO := $(CURDIR)

test: $(DEPS_STAMP)
	$(MAKE) --no-print-directory BUILD=$(SAN_BUILD) SAN=1 WERROR=1 all unit-tests
	$(MAKE) --no-print-directory BUILD=$(SAN_BUILD) SAN=1 unit
	$(MAKE) --no-print-directory BUILD=$(SAN_BUILD) SAN=1 integration
	$(MAKE) --no-print-directory fuzz-smoke

# runs every unit test (or T=one), each as its own process
unit:
	@set -e; fail=0; for t in $(if $(T),$(T),$(UNIT_TESTS)); do \
	  echo "== $$t"; \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(BUILD)/test/$$t $(ARGS) || fail=1; \
	done; exit $$fail

integration:
	TOKMON_BIN=$(CURDIR)/$(BUILD)/bin /usr/bin/python3 tests/integration/run.py $(ARGS)

FUZZ_SMOKE_SECONDS ?= 5
fuzz-smoke:
	$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) FUZZ=1 fuzzers
	scripts/fuzz.sh $(FUZZ_BUILD)/fuzz $(FUZZ_SMOKE_SECONDS) $(FUZZERS)

# the chaos test of the reliable bus, CHAOS_RUNS times in a row
CHAOS_RUNS ?= 20
CHAOS_RECORDS ?= 40000
chaos: all
	TOKMON_CHAOS_RECORDS=$(CHAOS_RECORDS) TOKMON_BIN=$(CURDIR)/$(BUILD)/bin \
	  /usr/bin/python3 tests/integration/run.py --repeat=$(CHAOS_RUNS) chaos_kill chaos_rolling

FUZZ_SECONDS ?= 300
fuzz: $(DEPS_STAMP)
	$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) FUZZ=1 fuzzers
	scripts/fuzz.sh $(FUZZ_BUILD)/fuzz $(FUZZ_SECONDS) $(FUZZERS)

# ---- bench and run ---------------------------------------------------------

bench: bench-ingest bench-spool bench-aggregator bench-exporter bench-pgwriter

bench-spool: all $(BUILD)/bin/busbench
	bench/spool.sh $(BUILD)/bin

$(BUILD)/bin/busbench: bench/busbench.c $(LIB) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $< $(LIB) $(LDLIBS) -o $@

# one /metrics scrape at 10,000 and 100,000 series (bench/scrapebench.c, bench/scrape_http.py), about a minute
bench-exporter: all $(BUILD)/bin/scrapebench
	bench/exporter.sh $(BUILD)/bin

$(BUILD)/bin/scrapebench: bench/scrapebench.c $(call obj,exporter/model.c aggregator/ktab.c aggregator/cal.c) $(LIB) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $< $(call obj,exporter/model.c aggregator/ktab.c aggregator/cal.c) $(LIB) $(LDLIBS) -o $@

# the aggregator's memory per user and apply rate (bench/aggbench.c), about 4 minutes
bench-aggregator: $(BUILD)/bin/aggbench
	bench/aggregator.sh $(BUILD)/bin

$(BUILD)/bin/aggbench: bench/aggbench.c $(call obj,$(AGGREGATOR_LIB)) $(LIB) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $< $(call obj,$(AGGREGATOR_LIB)) $(LIB) $(LDLIBS) -o $@

# the writer's sustained and catch-up rates into a private PostgreSQL against
# psql's COPY of the same rows (bench/pgwriter.py), about 5 minutes
bench-pgwriter: all
	bench/pgwriter.py $(BUILD)/bin

bench-ingest: all $(BUILD)/bin/udpblast $(BUILD)/bin/udpcount
	bench/ingest.sh $(BUILD)/bin

$(BUILD)/bin/udpblast: bench/udpblast.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $< -lm -o $@
$(BUILD)/bin/udpcount: bench/udpcount.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $< -o $@

run: all
	scripts/run.sh $(BUILD)/bin

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
