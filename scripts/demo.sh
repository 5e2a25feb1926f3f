#!/usr/bin/env bash
# The slimdump demo: a real fatal machine check, end to end, three ways.
#   1. The whole 2011 chain, for real: the lab builds Linux 6.1 from Debian's
#      linux-source with kernel/patches (once, about 12 minutes; cached), boots
#      it in QEMU, injects a fatal machine check (bank 2, MCi_STATUS
#      0xb600000000000134, ADDR 0x1234000) through the QEMU monitor; the
#      crashed kernel writes its own NT_NOCOREDUMP note; in the capture kernel,
#      eu-readelf shows the note in /proc/vmcore and slimdump captures
#      /proc/vmcore reading nothing but headers and notes.
#   2. Debian's stock 6.1 kernel, same machine check: no note, so
#      `slimdump capture` reads only the crashed kernel's log buffer, finds
#      the machine-check panic and writes a slimdump; `slimdump inspect`
#      decodes the machine check.
#   3. The note simulated on the stock dump (`slimdump mark`), for kernels
#      without the series.
set -euo pipefail
PY=${1:-python3}
OUT=${DEMO_OUT:-out/demo}
mkdir -p "$OUT"
rm -rf "$OUT"/vmcore.* "$OUT"/capture-kernel
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "# 1. the patched kernel writes NT_NOCOREDUMP itself; slimdump runs in its capture kernel"
step "$PY" -m tests.lab.vmcorelab collect --patched --mode mce --out "$OUT/capture-kernel" -- \
    sh -c 'eu-readelf -n {vmcore} | grep -E "^  [A-Z]"; python -m slimdump capture {vmcore} {out}/vmcore.kernel.slim'
echo "(in the capture kernel, eu-readelf -n /proc/vmcore and slimdump said:)"
cat "$OUT/capture-kernel/collector.stdout" "$OUT/capture-kernel/collector.stderr"
cp "$OUT/capture-kernel/vmcore.kernel.slim" "$OUT/vmcore.kernel.slim"
step "$PY" -m slimdump inspect --no-log "$OUT/vmcore.kernel.slim"

VMCORE=$("$PY" -m tests.lab.vmcorelab path 6.1-mce)
step ls -lsh "$VMCORE"
echo; echo "# 2. Debian's stock kernel: no NT_NOCOREDUMP note, the log tells"
step "$PY" -m slimdump capture "$VMCORE" "$OUT/vmcore.slim"
step "$PY" -m slimdump inspect "$OUT/vmcore.slim"

echo; echo "# 3. the note simulated on the stock dump (slimdump mark)"
step "$PY" -m slimdump mark "$VMCORE" "$OUT/vmcore.marked" \
    --reason PANIC_MCE --message "Fatal local machine check"
step "$PY" -m slimdump capture "$OUT/vmcore.marked" "$OUT/vmcore.note.slim"
step eu-readelf -n "$OUT/vmcore.note.slim" | grep -E '^  [A-Z]'
"$PY" -m slimdump inspect "$OUT/vmcore.note.slim" | head -3
rm -f "$OUT/vmcore.marked"
step ls -l "$OUT"
