#!/usr/bin/env bash
# Installs the built .deb on this (throw-away CI) machine and checks it like an admin would:
# maintainer scripts without a running systemd, files and owners, `config check` of the default
# config, the man page and completions, one message through the relay as the bccguard user
# (started the way the unit starts it), `audit report`, then purge. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
deb=$(ls -t target/debian/bccguard_*.deb | head -1)
fail() { echo "FAIL: $*" >&2; exit 1; }
# Output is captured before it is searched: `cmd | grep -q` (or `| head`) closes the pipe early, the
# writer may die of SIGPIPE, and pipefail then fails a check that held (seen: 1 run in 30).

echo "==> dpkg -i $deb"
dpkg -i "$deb"
trap 'kill "${relay:-}" "${sink:-}" 2>/dev/null || true; dpkg --purge bccguard >/dev/null 2>&1 || true' EXIT

echo "==> files, owners, modes"
test -x /usr/bin/bccguard || fail "no /usr/bin/bccguard"
getent passwd bccguard >/dev/null || fail "no bccguard user"
[ "$(stat -c %U:%a /var/lib/bccguard)" = "bccguard:750" ] || fail "/var/lib/bccguard: $(stat -c %U:%a /var/lib/bccguard)"
[ "$(stat -c %U:%G:%a /etc/bccguard/bccguard.toml)" = "root:bccguard:640" ] || fail "config owner/mode"
test -f /lib/systemd/system/bccguard.service || test -f /usr/lib/systemd/system/bccguard.service || fail "no unit"
grep -q '^Type=notify' /lib/systemd/system/bccguard.service /usr/lib/systemd/system/bccguard.service 2>/dev/null || fail "unit not Type=notify"
test -f /usr/share/man/man1/bccguard.1.gz || fail "no man page"
man=$(zcat /usr/share/man/man1/bccguard.1.gz)
grep -q 'audit' <<<"$man" || fail "man page lacks the audit command"
test -f /usr/share/man/man1/bccguard-audit-report.1.gz || fail "no man page for audit report"
test -f /usr/share/bash-completion/completions/bccguard || fail "no bash completion"
kind=$(file /usr/bin/bccguard)
if grep -q 'with debug_info' <<<"$kind"; then fail "binary not stripped of debug info"; fi
echo "binary: $(du -h /usr/bin/bccguard | cut -f1)"

echo "==> README deploy steps"
check=$(bccguard config check 2>&1) || fail "default config fails config check: $check"
[[ "${check%%$'\n'*}" == "config OK: /etc/bccguard/bccguard.toml" ]] || fail "default config check says: $check"
runuser -u bccguard -- bccguard config check >/dev/null || fail "config check fails as the service user"
shown=$(bccguard config show)
grep -q '^mode = "monitor"' <<<"$shown" || fail "package does not start in monitor mode"

echo "==> one message through the installed relay (as the unit runs it)"
sinkdir=$(mktemp -d); chmod 777 "$sinkdir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
smtp-sink -u nobody -d "$sinkdir/%M." -c "127.0.0.1:$port" 100 & sink=$!
echo "BCCGUARD__UPSTREAM__ADDRESS=127.0.0.1:$port" > /etc/default/bccguard
# setpriv execs (no helper process in between), so $relay is the relay itself.
(cd /var/lib/bccguard && exec env "BCCGUARD__UPSTREAM__ADDRESS=127.0.0.1:$port" \
    setpriv --reuid=bccguard --regid=bccguard --init-groups \
    bccguard serve --config /etc/bccguard/bccguard.toml) 2>"$sinkdir/relay.log" & relay=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/2525) 2>/dev/null && break; sleep 0.2; done
swaks --server 127.0.0.1:2525 --from me@example.org --to a@partner.example \
      --header "Cc: b@one.example, c@two.example, d@three.example, e@four.example, f@five.example, g@six.example" \
      >/dev/null || { cat "$sinkdir/relay.log"; fail "relay refused the message"; }
for _ in $(seq 50); do ls "$sinkdir"/*.* >/dev/null 2>&1 && break; sleep 0.2; done
grep -q '^Cc: b@one.example' "$sinkdir"/*.* || fail "monitor mode changed the message"
live=$(curl -fsS http://127.0.0.1:9025/livez) || fail "/livez"
grep -q ok <<<"$live" || fail "/livez says: $live"
runuser -u bccguard -- bccguard audit report --since 1h --json | python3 -c '
import json,sys; r=json.load(sys.stdin); assert r["by_mode"]["monitor"]==1, r; print("audit report:", r["by_rule"])'
bccguard audit verify >/dev/null || fail "audit verify"
kill -TERM "$relay"; wait "$relay" || { cat "$sinkdir/relay.log"; fail "relay did not stop cleanly"; }; relay=
grep -q 'policy loaded: Mode: monitor' "$sinkdir/relay.log" || fail "no one-line policy in the log"
kill "$sink" 2>/dev/null; sink=

echo "==> purge"
dpkg --purge bccguard
test ! -e /usr/bin/bccguard || fail "binary left after purge"
test ! -e /var/lib/bccguard || fail "state left after purge"
rm -f /etc/default/bccguard
echo "deb test OK"
