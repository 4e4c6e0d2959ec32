#!/usr/bin/env bash
# Create or update benchmarks/.venv: the benchmark peers pinned in
# benchmarks/requirements.txt plus gosse itself (editable, from this checkout).
# Idempotent: does nothing when the venv already matches requirements.txt and
# setup.cfg (use --force to reinstall anyway).
#
#   bash benchmarks/setup_venv.sh            # then: benchmarks/.venv/bin/python benchmarks/bench_parser.py
#   PYTHON=python3.11 bash benchmarks/setup_venv.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv"; then
        # Debian's system Python ships venv/ensurepip separately.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            rm -rf "$venv"
            apt-get update -qq && apt-get install -y -qq python3-venv
            "$python" -m venv "$venv"
        else
            echo "cannot create $venv: install python3-venv" >&2
            exit 1
        fi
    fi
fi

stamp="$venv/.installed.sha256"
want="$(cat "$here/requirements.txt" "$root/setup.cfg" | sha256sum | cut -d' ' -f1)"
if [ "${1:-}" != "--force" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python" -c "import gosse, sseclient, requests_sse, httpx_sse" 2>/dev/null; then
    echo "benchmarks/.venv is up to date ($venv)"
    exit 0
fi

"$venv/bin/python" -m pip install --disable-pip-version-check -q \
    -r "$here/requirements.txt" -e "$root"
echo "$want" > "$stamp"
echo "benchmarks/.venv ready: $venv/bin/python"
