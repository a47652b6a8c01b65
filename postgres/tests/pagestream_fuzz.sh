#!/usr/bin/env bash
# Builds postgres/tests/pagestream_fuzz.c with quire_smgr's page-protocol
# client (pagestream.c, plain libc) under AddressSanitizer and UBSan and
# runs it: scripted and mutated server conversations over a socketpair
# (see the .c file). Needs only a C compiler, no Postgres.
#
#   postgres/tests/pagestream_fuzz.sh [ITERATIONS [SEED]]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$here/extensions/quire_smgr
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

${CC:-cc} -std=gnu11 -O1 -g -Wall -Wextra -Werror -fsanitize=address,undefined \
    -fno-sanitize-recover=all -fno-omit-frame-pointer -pthread -I"$src" \
    "$here/tests/pagestream_fuzz.c" "$src/pagestream.c" "$src/pagestream_bytes.c" -o "$work/pagestream_fuzz"
"$work/pagestream_fuzz" "$@"
