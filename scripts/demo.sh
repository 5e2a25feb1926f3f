#!/usr/bin/env bash
# The slimdump demo: a real fatal machine check, end to end.
#   1. the lab crashed Debian's 6.1 kernel in QEMU with a machine check
#      (bank 2, MCi_STATUS 0xb600000000000134, ADDR 0x1234000) and saved the
#      /proc/vmcore a real kdump capture kernel exposed;
#   2. `slimdump mark` adds the NT_NOCOREDUMP note a kernel with the 2011
#      slimdump patch would have written;
#   3. `slimdump capture` writes the slimdump, reading only headers and notes;
#   4. `slimdump inspect` says why the machine died; eu-readelf agrees.
set -euo pipefail
PY=${1:-python3}
VMCORE=$("$PY" -m tests.lab.vmcorelab path 6.1-mce)
OUT=${DEMO_OUT:-out/demo}
mkdir -p "$OUT"
rm -f "$OUT/vmcore.marked" "$OUT/vmcore.slim"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step ls -lsh "$VMCORE"
step "$PY" -m slimdump mark "$VMCORE" "$OUT/vmcore.marked" \
    --reason PANIC_MCE --message "Fatal local machine check"
step "$PY" -m slimdump capture "$OUT/vmcore.marked" "$OUT/vmcore.slim"
step ls -l "$OUT/vmcore.slim"
step eu-readelf -n "$OUT/vmcore.slim" | grep -E '^  [A-Z]'
step "$PY" -m slimdump inspect "$OUT/vmcore.slim"
