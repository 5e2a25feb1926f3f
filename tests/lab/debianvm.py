"""debianvm: the QEMU half of tests/lab/debianlab.py: boot the Debian image
with its own kernel and initrd, read the serial console line by line with
the host's time, crash the guest once kdump-tools has loaded the capture
kernel, and wait for QEMU to exit when the capture kernel reboots.

``sysrq``: the image's trigger unit prints a marker and writes c to
/proc/sysrq-trigger.  ``mce``: it prints a marker and the host injects a fatal
machine check on the QEMU monitor (QMP), the command tests/lab/vmcorelab.py
uses.  The crash's host time is the marker's (sysrq) or the monitor
command's (mce); every later step is timed from it.
"""

from __future__ import annotations

import dataclasses
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from tests.lab import vmcorelab
from tests.lab.debianimage import MARK
from tests.lab.vmcorelab import LabError, Log, _monitor

CRASHES = ("mce", "sysrq")
DEBIAN_CRASHKERNEL = "384M-:128M"  # kdump-tools' etc/default/grub.d/kdump-tools.cfg
MEM_MIB = 1536
CPUS = 2
BOOT_TIMEOUT_S = 600  # QEMU start to the crash (20-50 s seen, longer on a busy host)
CAPTURE_TIMEOUT_S = 600  # crash to QEMU's exit (45-160 s seen)
MCE_BANK, MCE_STATUS, MCE_ADDR = vmcorelab.MCE_BANK, vmcorelab.MCE_STATUS, vmcorelab.MCE_ADDR
MCE_COMMAND = (f"mce 0 {MCE_BANK} {MCE_STATUS:#x} {vmcorelab.MCE_MCG_STATUS:#x} {MCE_ADDR:#x} "
               f"{vmcorelab.MCE_MISC:#x}")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One crash of the Debian image."""

    collector: str  # "slimdump" or "makedumpfile" (stock)
    crash: str  # "mce" or "sysrq"
    crashkernel: str = DEBIAN_CRASHKERNEL
    mem_mib: int = MEM_MIB
    cpus: int = CPUS
    boot_timeout_s: int = BOOT_TIMEOUT_S
    capture_timeout_s: int = CAPTURE_TIMEOUT_S


class Console:
    """The serial console, line by line, each with the host's seconds since
    QEMU started; kept in memory for the markers and written to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._partial = b""
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def feed(self, chunk: bytes) -> list[str]:
        """Add QEMU's output; return the complete new lines."""
        self._partial += chunk
        *done, self._partial = self._partial.split(b"\n")
        new = []
        for raw in done:
            line = raw.decode("utf-8", "replace").replace("\r", "")
            self.note(line)
            new.append(line)
        return new

    def note(self, line: str, t: float | None = None) -> None:
        t = self.now() if t is None else t
        self.lines.append((t, line))
        self._file.write(f"[{t:9.3f}] {line}\n")
        self._file.flush()

    def close(self) -> None:
        if self._partial:
            self.feed(b"\n")
        self._file.close()

    def first(self, needle: str, after: float = 0.0) -> float | None:
        """Host time of the first line at or after ``after`` containing ``needle``."""
        return next((t for t, line in self.lines if t >= after and needle in line), None)

    def tail(self, n: int = 3) -> str:
        """The last ``n`` lines, the lab's memory watcher's left out."""
        said = [line.strip() for _, line in self.lines
                if line.strip() and f"{MARK}-MEMAVAIL" not in line]
        return " | ".join(said[-n:])


def _qemu_cmd(spec: RunSpec, image: Path, disk: Path, qmp: Path) -> list[str]:
    append = (f"root=/dev/vda rw console=ttyS0 crashkernel={spec.crashkernel} "
              f"slimdumplab.crash={spec.crash}")
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", str(spec.cpus),
        "-m", str(spec.mem_mib), "-kernel", os.fspath(image / "vmlinuz"),
        "-initrd", os.fspath(image / "initrd.img"), "-append", append,
        "-drive", f"file={disk},if=virtio,format=raw,discard=unmap,detect-zeroes=unmap",
        "-nic", "none", "-display", "none", "-monitor", "none", "-serial", "stdio",
        "-no-reboot", "-qmp", f"unix:{qmp},server=on,wait=off",
    ]


def boot_and_crash(spec: RunSpec, image: Path, disk: Path, console: Console,
                    log: Log) -> dict[str, Any]:
    """Run QEMU until it exits; returns the host times of the crash and of QEMU's exit."""
    times: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="debianlab-") as tmp:
        qmp = Path(tmp) / "qmp.sock"
        proc = subprocess.Popen(_qemu_cmd(spec, image, disk, qmp), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            failure = _watch(spec, proc, proc.stdout, console, qmp, times, log)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    times["qemu_exit"] = proc.returncode
    if failure:
        raise LabError(f"{failure}; console: {console.tail()}", console.path)
    return times


def _watch(spec: RunSpec, proc: subprocess.Popen[bytes], out: BinaryIO, console: Console,
           qmp: Path, times: dict[str, Any], log: Log) -> str | None:
    """Read the console until QEMU exits; crash the guest when it is ready.
    Returns a one-line failure, or None."""
    panics = 0
    while True:
        now = console.now()
        trigger = times.get("trigger")
        if trigger is None and now > spec.boot_timeout_s:
            return f"no crash within {spec.boot_timeout_s} s of boot"
        if trigger is not None and now - trigger > spec.capture_timeout_s:
            return f"QEMU still running {spec.capture_timeout_s} s after the crash"
        ready, _, _ = select.select([out], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(out.fileno(), 1 << 16)
        if not chunk:
            break
        for line in console.feed(chunk):
            if f"{MARK}-NOT-LOADED" in line:
                return "kdump-tools did not load the capture kernel"
            if f"{MARK}-LOADED" in line and "loaded" not in times:
                times["loaded"] = console.now()
                times["loaded_line"] = line[line.index(MARK):]
                log(f"capture kernel loaded {times['loaded']:.0f} s after boot "
                    f"({times['loaded_line']})")
            if f"{MARK}-CRASH sysrq" in line and trigger is None:
                times["trigger"] = trigger = console.now()
                log("sysrq crash")
            if f"{MARK}-READY-FOR-MONITOR" in line and trigger is None:
                time.sleep(1)
                try:
                    reply = _monitor(qmp, MCE_COMMAND)
                except (OSError, ValueError, LabError) as exc:
                    return f"QEMU monitor {MCE_COMMAND!r}: {exc}"
                times["trigger"] = trigger = console.now()
                console.note(f"[host] monitor: {MCE_COMMAND}", trigger)
                log(f"monitor: {MCE_COMMAND}")
                if reply:
                    return f"QEMU monitor {MCE_COMMAND!r} answered {reply!r}"
            if "Kernel panic - not syncing" in line:
                panics += 1
                if panics > 1:
                    return f"the capture kernel panicked too: {line.strip()}"
            if f"{MARK}-ORACLE-START" in line:
                log("capture kernel: oracle running")
            if "saved vmcore in" in line:
                log("capture kernel: kdump-tools saved the vmcore")
    times["exit"] = console.now()
    if "trigger" not in times:
        return f"QEMU exited (status {proc.poll()}) before the crash"
    return None
