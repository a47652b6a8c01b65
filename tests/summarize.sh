#!/usr/bin/env bash
# Prints one closing line for `make test`: the tests cargo ran, summed over
# every test binary, in the plain "N passed, N failed" form.
set -euo pipefail
log=${1:?usage: tests/summarize.sh CARGO_TEST_LOG}
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "make test: %d passed, %d failed\n", passed, failed; exit (failed > 0 || passed == 0) }' "$log"
