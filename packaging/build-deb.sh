#!/usr/bin/env bash
# Builds the Debian package: target/debian/bccguard_<version>-1_<arch>.deb
#   release binary (stripped; debug info in target/release/bccguard.dwp), man page, shell
#   completions, the systemd unit (Type=notify), /etc/bccguard/bccguard.toml (monitor mode).
# Needs cargo-deb:  cargo install cargo-deb --locked --version 3.8.0
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --locked
mkdir -p target/assets
bin=target/release/bccguard
rm -rf target/assets/man && mkdir -p target/assets/man
"$bin" generate man --dir target/assets/man
gzip -9n target/assets/man/*.1
"$bin" generate completions bash > target/assets/bccguard.bash
"$bin" generate completions zsh > target/assets/_bccguard
"$bin" generate completions fish > target/assets/bccguard.fish
# --no-build: the binary above is the one tested; --no-strip: the profile already stripped it.
cargo deb --no-build --no-strip "$@"
ls -l target/debian/*.deb
