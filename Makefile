# Quire's two commands for a fresh machine:
#   make demo   run the most complete end-to-end path that exists
#   make test   build everything (Postgres too, if the cache lacks it) and run every test
#
# The patched Postgres (the release pinned in postgres/source.pin) is built
# once per (source, patch hash) into QUIRE_PG_HOME (default ~/.cache/quire) by
# postgres/build.sh; postgres/extensions.sh installs our C extensions into a
# copy of that build keyed by their sources and prints its prefix, which every
# target below asks it for.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
PG_PREFIX = $$(postgres/extensions.sh --prefix)

.PHONY: test demo postgres extensions s3-server check-postgres check-build-scripts lint cargo-test fuzz

test: extensions check-postgres check-build-scripts lint cargo-test fuzz
	@tests/summarize.sh target/cargo-test.log

demo: extensions
	QUIRE_PG_PREFIX=$(PG_PREFIX) $(CARGO) run --release --locked -p quire -- demo

# Builds the patched Postgres if the cache lacks it.
postgres:
	postgres/build.sh --prefix >/dev/null

# Our C extensions, built with PGXS and installed into a copy of the patched
# build keyed by their sources (never into the shared build itself).
extensions: postgres
	postgres/extensions.sh --prefix >/dev/null

# Postgres' own regression suite on the patched build, once per build.
check-postgres: postgres
	postgres/regress.sh

# The source pin and the build scripts' own checks (no download needed),
# and quire_smgr's page-protocol client under sanitizers (needs only cc).
check-build-scripts: postgres
	postgres/tests/source_pin.sh
	postgres/tests/pagestream_fuzz.sh 20000

# rustfmt and clippy are rustup components a minimal toolchain may lack.
lint:
	$(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1 || \
		rustup component add rustfmt clippy
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@# ARCHITECTURE.md: only io names the runtime, so a swap touches io alone.
	@if git grep -n glommio -- '*.rs' ':!io/'; then echo "lint: glommio named outside io/" >&2; exit 1; fi

# moto, the S3-compatible server the object-storage tests start on loopback,
# installed into the cache once per version (a test also installs it when
# run alone: quire_cluster::S3Server runs the same script).
s3-server:
	cluster/moto.sh >/dev/null

# Unit, property and full-stack tests (doc-tests and benchmarks excluded);
# the log feeds the summary line `make test` ends with.
cargo-test: extensions s3-server
	mkdir -p target
	QUIRE_PG_PREFIX=$(PG_PREFIX) $(CARGO) test --workspace --locked --lib --bins --tests 2>&1 | tee target/cargo-test.log

# Every fuzz target for a bounded time (FUZZ_SECONDS each, 11 targets), seeded from fuzz/seeds/
FUZZ_SECONDS ?= 30
fuzz:
	fuzz/run.sh $(FUZZ_SECONDS)
