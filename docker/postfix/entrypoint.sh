#!/bin/sh
# Postfix entrypoint for docker/compose.yaml: applies the environment, then runs Postfix in the
# foreground as PID 1 so `docker stop` stops it cleanly.
#   MYHOSTNAME  name in the greeting and Received: (default postfix.localhost)
#   MYNETWORKS  who may relay: bccguard's address (default 127.0.0.0/8 only)
#   RELAYHOST   e.g. [smtp.example.org]:587 (default: deliver directly by MX)
set -eu

postconf -e "myhostname=${MYHOSTNAME:-postfix.localhost}"
postconf -e "mynetworks=127.0.0.0/8 ${MYNETWORKS:-}"
postconf -e "relayhost=${RELAYHOST:-}"

# Fails loudly on a bad setting or wrong ownership instead of starting half-configured.
postfix check
exec postfix start-fg
