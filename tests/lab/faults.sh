#!/bin/sh
# Real I/O faults for `slimdump capture`, run in the lab's kdump capture
# kernel (tests/lab/vmcorelab.py run_collector, chrooted into the host's /),
# by tests/test_real_faults.py.  Needs the modules dm_mod, dm_flakey, loop,
# ext4 and crc32c_generic, and the host's losetup, dmsetup, mkfs.ext4,
# dumpe2fs, pgrep.
#
#   faults.sh OUT SRC A_SECTOR A_COUNT B_SECTOR B_COUNT [SCENARIO...]
#
# Scenarios (default: src-eio dst-eio dst-dead-d31 nospc), each in
# OUT/<name>/ (rc: capture's exit status; stdout, stderr; ls: the
# destination directory afterwards):
#   src-eio       SRC (a saved ELF vmcore on the host) through a read-only
#                 loop device and a device-mapper table whose `error` segments
#                 are sectors [A_SECTOR, +A_COUNT) and [B_SECTOR, +B_COUNT);
#                 capture -c -d 31 of /dev/mapper/srcbad into OUT (healthy).
#   dst-eio       an ext4 made on a loop device, mounted through a dm table
#                 that maps every block dumpe2fs lists free (the data area)
#                 to `error`; capture -c -d 0 of /proc/vmcore into it, the
#                 triage slimdump to OUT.
#   dst-dead-dN   capture -c -d N of /proc/vmcore into an ext4 whose whole
#                 device fails every write from after the mount (dm-flakey,
#                 up 0 s, down 1 s, error_writes: always down): the journal
#                 aborts and ext4 goes read-only.  A capture still running
#                 after 150 s is recorded (OUT/<name>/stuck), sent SIGTERM,
#                 then SIGKILL.  dst-dead-d0 is not in the default set: its
#                 dump outgrows the dirty page limit and the 6.1 kernel
#                 blocks the writer for good in balance_dirty_pages.
#   nospc         nospc-fit, a 40 MiB ext4: -c -d 0 of /proc/vmcore does not
#                 fit, -d 31 does; nospc-cut, an 8 MiB ext4: not even -d 31
#                 fits.  Their files are copied to OUT afterwards.
# A setup step that fails exits 99 with "FAULT-SETUP-FAILED <what>" on
# stderr.  "LAB-FAULT: begin|end <name>" lines go to the kernel log (and the
# console, whose level is raised to show the kernel's warnings).

set -u
OUT=$1 SRC=$2 A0=$3 AN=$4 B0=$5 BN=$6
shift 6
SCENARIOS=${*:-src-eio dst-eio dst-dead-d31 nospc}
export DM_DISABLE_UDEV=1          # no udev here: libdevmapper makes the nodes
PY=${PYTHON:-python}

die() { echo "FAULT-SETUP-FAILED $*" >&2; exit 99; }
mark() { echo "LAB-FAULT: $*" > /dev/kmsg; echo "LAB-FAULT: $*"; }
mem() { echo "$1: $(grep MemFree /proc/meminfo)"; }

# warnings (ext4, block layer) on the serial console too, not only errors
echo 8 > /proc/sys/kernel/printk || die "printk level"
mkdir -p /mnt /tmp || die "mkdir"

# the device node of a dm device (libdevmapper makes /dev/mapper/NAME; if not, mknod)
dm_node() {
  if [ ! -b "/dev/mapper/$1" ]; then
    dmsetup mknodes "$1" >/dev/null 2>&1
  fi
  if [ ! -b "/dev/mapper/$1" ]; then
    mkdir -p /dev/mapper
    set -- "$1" "$(dmsetup info -c --noheadings -o major,minor "$1" | tr ':' ' ')"
    # shellcheck disable=SC2086
    mknod "/dev/mapper/$1" b $2 || return 1
  fi
  echo "/dev/mapper/$1"
}

dm_create() {   # NAME [dmsetup options...] < table
  name=$1; shift
  dmsetup create "$name" --noudevsync "$@" || return 1
  dm_node "$name"
}

# capture NAME ARGS...: run slimdump capture, keep rc/stdout/stderr in OUT/NAME
capture() {
  name=$1; shift
  echo "+ slimdump capture $*" > "$OUT/$name/command"
  "$PY" -m slimdump capture --no-progress "$@" >"$OUT/$name/stdout" 2>"$OUT/$name/stderr"
  echo $? > "$OUT/$name/rc"
}

# watch_capture PID DIR SECONDS: if the capture (the python child of the
# subshell PID) still runs after SECONDS, record where it is (DIR/stuck),
# send it SIGTERM, then after 30 s SIGKILL
watch_capture() {
  waited=0
  while kill -0 "$1" 2>/dev/null && [ "$waited" -lt "$3" ]; do
    sleep 5; waited=$((waited + 5))
  done
  kill -0 "$1" 2>/dev/null || return 0
  py=$(pgrep -P "$1" | head -n 1)
  {
    echo "still running after $3 s: pid $py"
    grep -E '^(State|VmRSS)' "/proc/$py/status"
    grep -E '^(MemFree|Dirty|Writeback):' /proc/meminfo
    echo "wchan: $(cat "/proc/$py/wchan")"
    cat "/proc/$py/stack"
  } > "$2/stuck" 2>&1
  echo w > /proc/sysrq-trigger
  kill -TERM "$py"
  waited=0
  while kill -0 "$py" 2>/dev/null && [ "$waited" -lt 30 ]; do
    sleep 5; waited=$((waited + 5))
  done
  if kill -0 "$py" 2>/dev/null; then
    { echo "still running 30 s after SIGTERM"; cat "/proc/$py/stack"; } >> "$2/stuck" 2>&1
    kill -KILL "$py"
  fi
}

# fresh ext4 on a loop file of SIZE MiB in the tmpfs: prints the loop device
new_ext4() {   # FILE SIZE_MIB
  rm -f "$1"
  truncate -s "$2M" "$1" || return 1
  dev=$(losetup -f --show "$1") || return 1
  mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$dev" >/dev/null \
    || return 1
  echo "$dev"
}

# ---------------------------------------------------------------- src-eio
src_eio() {
  mkdir -p "$OUT/src-eio"
  mark "begin src-eio"
  loop=$(losetup -r -f --show "$SRC") || die "losetup -r $SRC"
  total=$(blockdev --getsz "$loop") || die "blockdev $loop"
  [ "$A0" -ge 0 ] && [ "$((A0 + AN))" -le "$B0" ] && [ "$((B0 + BN))" -le "$total" ] \
    || die "bad ranges $A0+$AN $B0+$BN of $total"
  {
    echo "0 $A0 linear $loop 0"
    echo "$A0 $AN error"
    echo "$((A0 + AN)) $((B0 - A0 - AN)) linear $loop $((A0 + AN))"
    echo "$B0 $BN error"
    echo "$((B0 + BN)) $((total - B0 - BN)) linear $loop $((B0 + BN))"
  } > "$OUT/src-eio/table"
  bad=$(dm_create srcbad -r < "$OUT/src-eio/table") || die "dmsetup create srcbad"
  echo "$bad" > "$OUT/src-eio/device"
  blockdev --getsize64 "$bad" > "$OUT/src-eio/device-size"
  capture src-eio -c -d 31 "$bad" "$OUT/src-eio/dump"
  # the same sectors read by dd: the fault is the device's, not slimdump's
  dd if="$bad" of=/dev/null bs=512 skip="$A0" count=1 2> "$OUT/src-eio/dd-bad"
  echo $? > "$OUT/src-eio/dd-bad.rc"
  dd if="$bad" of=/dev/null bs=512 skip="$((A0 - 8))" count=8 2> "$OUT/src-eio/dd-good"
  echo $? > "$OUT/src-eio/dd-good.rc"
  dmsetup remove srcbad || die "dmsetup remove srcbad"
  losetup -d "$loop" || die "losetup -d $loop"
  mark "end src-eio"
}

# ---------------------------------------------------------------- dst-eio
dst_eio() {
  mkdir -p "$OUT/dst-eio" /mnt/dst-eio
  mark "begin dst-eio"
  img=/tmp/dst-eio.img
  loop=$(new_ext4 "$img" 64) || die "ext4 on $img"
  bs=$(dumpe2fs -h "$loop" 2>/dev/null | sed -n 's/^Block size: *//p')
  total=$(blockdev --getsz "$loop")
  dumpe2fs "$loop" > "$OUT/dst-eio/dumpe2fs" 2>/dev/null || die "dumpe2fs"
  # every free block (the per-group "  Free blocks: a-b, c, ..." lines) -> error
  awk -v total="$total" -v bs="$bs" -v dev="$loop" '
    /^  +Free blocks: / {
      sub(/^  +Free blocks: */, "")
      n = split($0, r, /, */)
      for (i = 1; i <= n; i++) {
        if (r[i] == "") continue
        m = split(r[i], ab, "-")
        k++; s[k] = ab[1] * bs / 512; e[k] = (ab[m] + 1) * bs / 512
      }
    }
    END {
      pos = 0
      for (i = 1; i <= k; i++) {
        if (s[i] > pos) print pos, s[i] - pos, "linear", dev, pos
        print s[i], e[i] - s[i], "error"
        pos = e[i]
      }
      if (pos < total) print pos, total - pos, "linear", dev, pos
    }' "$OUT/dst-eio/dumpe2fs" > "$OUT/dst-eio/table"
  grep -q error "$OUT/dst-eio/table" || die "no free blocks in $OUT/dst-eio/dumpe2fs"
  dev=$(dm_create dsteio < "$OUT/dst-eio/table") || die "dmsetup create dsteio"
  mount -t ext4 "$dev" /mnt/dst-eio || die "mount $dev"
  capture dst-eio -c -d 0 --triage "$OUT/dst-eio/dump.triage" /proc/vmcore /mnt/dst-eio/dump
  ls -la /mnt/dst-eio > "$OUT/dst-eio/ls" 2>&1
  umount /mnt/dst-eio > "$OUT/dst-eio/umount" 2>&1
  dmsetup remove dsteio > "$OUT/dst-eio/dmsetup-remove" 2>&1
  losetup -d "$loop"; rm -f "$img"
  mark "end dst-eio"
}

# ---------------------------------------------------------------- dst-dead
dst_dead() {   # LEVEL
  name=dst-dead-d$1
  mkdir -p "$OUT/$name" "/mnt/$name"
  mark "begin $name"
  img=/tmp/$name.img
  loop=$(new_ext4 "$img" 64) || die "ext4 on $img"
  total=$(blockdev --getsz "$loop")
  dev=$(echo "0 $total linear $loop 0" | dm_create "$name") || die "dmsetup create $name"
  mount -t ext4 "$dev" "/mnt/$name" || die "mount $dev"
  echo "0 $total flakey $loop 0 0 1 1 error_writes" > "$OUT/$name/table"
  dmsetup suspend --nolockfs "$name" || die "dmsetup suspend $name"
  dmsetup reload "$name" < "$OUT/$name/table" || die "dmsetup reload $name"
  dmsetup resume "$name" || die "dmsetup resume $name"
  # the capture may block in the kernel: watched, then SIGTERM, then SIGKILL
  capture "$name" -c -d "$1" --triage "$OUT/$name/dump.triage" /proc/vmcore \
    "/mnt/$name/dump" &
  watch_capture $! "$OUT/$name" 150
  wait
  ls -la "/mnt/$name" > "$OUT/$name/ls" 2>&1
  umount "/mnt/$name" > "$OUT/$name/umount" 2>&1
  dmsetup remove "$name" > "$OUT/$name/dmsetup-remove" 2>&1
  losetup -d "$loop"; rm -f "$img"
  mark "end $name"
}

# ---------------------------------------------------------------- nospc
nospc() {
  for spec in nospc-fit:40 nospc-cut:8; do
    name=${spec%%:*} size=${spec#*:}
    mkdir -p "$OUT/$name" "/mnt/$name"
    mark "begin $name"
    img=/tmp/$name.img
    loop=$(new_ext4 "$img" "$size") || die "ext4 on $img"
    mount -t ext4 "$loop" "/mnt/$name" || die "mount $loop"
    df -B1 "/mnt/$name" > "$OUT/$name/df-before"
    capture "$name" -c -d 0 /proc/vmcore "/mnt/$name/dump"
    ls -la "/mnt/$name" > "$OUT/$name/ls" 2>&1
    df -B1 "/mnt/$name" > "$OUT/$name/df-after"
    for f in "/mnt/$name"/dump*; do
      [ -e "$f" ] && cp "$f" "$OUT/$name/"
    done
    umount "/mnt/$name" || die "umount /mnt/$name"
    losetup -d "$loop"; rm -f "$img"
    mark "end $name"
  done
}

mem start
for scenario in $SCENARIOS; do
  case $scenario in
    src-eio) src_eio ;;
    dst-eio) dst_eio ;;
    dst-dead-d*) dst_dead "${scenario#dst-dead-d}" ;;
    nospc) nospc ;;
    *) die "unknown scenario $scenario" ;;
  esac
  mem "$scenario"
done
dmesg > "$OUT/dmesg.txt" 2>&1
exit 0
