#!/usr/bin/env bash
# The GPU check of issue 22 (bench/device_check.py says what it measures).
#   GPU machine:  bash bench/device_check.sh --pack build/device-pack --out "$OUT"
#   CPU dry run:  bash bench/device_check.sh --dry-run --out build/device-check-dry
# The pack is made on the CPU machine first (`make device-pack`); the dry run packs 6 clips of
# tiny SynthME (1 frame each) itself. The machine's own python3 runs it when no .venv travelled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [[ " $* " == *" --dry-run "* ]]; then
    "$PY" bench/device_pack.py build/device-pack-dry --preset tiny --frames 1 --subjects 3
    exec timeout 300 "$PY" bench/device_check.py --pack build/device-pack-dry "$@"
fi
exec timeout 540 "$PY" bench/device_check.py "$@"
