#!/usr/bin/env bash
# The slimdump demo: a real fatal machine check, end to end.
#   The lab crashed Debian's 6.1 kernel in QEMU with a machine check (bank 2,
#   MCi_STATUS 0xb600000000000134, ADDR 0x1234000) and saved the /proc/vmcore
#   a real kdump capture kernel exposed.  Then:
#   1. a stock kernel leaves no note: `slimdump capture` reads only the
#      crashed kernel's log buffer, finds the machine-check panic and writes a
#      slimdump; `slimdump inspect` decodes the machine check;
#   2. a kernel with the 2011 NT_NOCOREDUMP patch (simulated by `slimdump
#      mark`) says so itself: capture reads nothing but headers and notes;
#      eu-readelf reads the slimdump too.
set -euo pipefail
PY=${1:-python3}
VMCORE=$("$PY" -m tests.lab.vmcorelab path 6.1-mce)
OUT=${DEMO_OUT:-out/demo}
mkdir -p "$OUT"
rm -f "$OUT"/vmcore.*
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step ls -lsh "$VMCORE"
echo; echo "# 1. stock kernel: no NT_NOCOREDUMP note, the log tells"
step "$PY" -m slimdump capture "$VMCORE" "$OUT/vmcore.slim"
step "$PY" -m slimdump inspect "$OUT/vmcore.slim"

echo; echo "# 2. a kernel with the NT_NOCOREDUMP patch: the note tells"
step "$PY" -m slimdump mark "$VMCORE" "$OUT/vmcore.marked" \
    --reason PANIC_MCE --message "Fatal local machine check"
step "$PY" -m slimdump capture "$OUT/vmcore.marked" "$OUT/vmcore.note.slim"
step eu-readelf -n "$OUT/vmcore.note.slim" | grep -E '^  [A-Z]'
"$PY" -m slimdump inspect "$OUT/vmcore.note.slim" | head -3
step ls -l "$OUT"
