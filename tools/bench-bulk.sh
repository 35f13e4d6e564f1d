#!/bin/sh
# Time and peak memory of a bulk `bccguard check` over a generated mbox (README figures).
#   tools/bench-bulk.sh [MESSAGES] [BODY_KB] [DIR]
# Defaults: 10000 messages of 2 KiB bodies in /var/tmp. Needs a release build and GNU time.
# The mbox is deleted afterwards (a 1 GB run: tools/bench-bulk.sh 10000 100).
set -eu
messages=${1:-10000}
body_kb=${2:-2}
dir=${3:-/var/tmp}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/bccguard
mbox=$(mktemp "$dir/bccguard-bench.XXXXXX")
trap 'rm -f "$mbox" "$mbox.time"' EXIT INT TERM
python3 "$root/tools/gen-mbox.py" "$mbox" --messages "$messages" --body-kb "$body_kb"
ls -l "$mbox"
run() {
    /usr/bin/time -v "$bin" check "$@" --config "$root/tests/fixtures/check/base.toml" "$mbox" \
        2>"$mbox.time"
    grep -E "Elapsed|Maximum resident" "$mbox.time" >&2
    rm -f "$mbox.time"
}
echo "== text" >&2
run | tail -n 14
echo "== json (summary line)" >&2
run --json | tail -n 1
