#!/usr/bin/env bash
# Runs the asyncio reference server: bench/ref/asyncio/run.sh [--config PATH] NAME.
# Installs aiohttp and PyYAML with pip first if this python3 lacks them.
set -euo pipefail
if ! python3 -c 'import aiohttp, yaml' 2>/dev/null; then
    python3 -m pip install --quiet aiohttp pyyaml >&2
fi
exec python3 "$(dirname "$0")/herd_asyncio.py" "$@"
