#!/usr/bin/env bash
# Builds herd (release) and the tokio reference, then runs the conformance smoke test
# against herd and both references. Exit status 0 only if all three pass.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build --release --quiet --bin herd || exit 1
cargo build --release --quiet --manifest-path bench/ref/tokio/Cargo.toml || exit 1
failed=0
for server in target/release/herd bench/ref/asyncio/run.sh bench/ref/tokio/target/release/herd-tokio; do
    echo "== $server"
    python3 bench/ref/conformance.py "$server" || failed=1
done
exit $failed
