"""debianlab: crash a whole Debian 12 system in QEMU and let its own
kdump-tools save the dump, with stock makedumpfile or with slimdump.

The image (tests/lab/debianimage.py) is Debian's packages as mmdebstrap
installs them, kdump-tools configured as a user would (``USE_KDUMP=1``,
``crashkernel=`` on the kernel command line: Debian's default
``384M-:128M`` unless told otherwise).  A run boots it under QEMU TCG with
the image's own kernel and initrd, waits until kdump-tools has loaded the
capture kernel, crashes it (``sysrq``: c to /proc/sysrq-trigger; ``mce``: a
fatal machine check injected on the QEMU monitor, as tests/lab/vmcorelab.py
does), and lets the capture kernel run kdump-tools' own save path, which
reboots; QEMU exits then (-no-reboot; tests/lab/debianvm.py).  The results
are read back from the disk image with e2fsck (journal replay only) and
debugfs: no mounts.

Every serial console line is written to console.log with the host's time
since QEMU started, so the time from the crash to the reboot comes from the
host clock; the lab's oracle (the real makedumpfile, run in the capture
kernel before kdump-tools, see debianimage) prints start and end markers and
its time is subtracted.  A lab-only watcher prints each new low of the
capture kernel's MemAvailable: the collector's headroom in the crashkernel
reservation.

Results (``run``): OUTDIR/result.json, console.log, crash/ (/var/crash) and
slimdumplab/ (the oracle's files).  ``ensure_run`` caches them for the tests.

Command line::

    python -m tests.lab.debianlab image
    python -m tests.lab.debianlab run --collector makedumpfile --crash mce
    python -m tests.lab.debianlab run --collector slimdump --crash sysrq [--deb FILE]
    python -m tests.lab.debianlab run ... --crashkernel 256M --out DIR --keep-disk
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab import debianimage, debianvm, debpkg, vmcorelab
from tests.lab.debianimage import MARK
from tests.lab.debianvm import (
    CRASHES,
    DEBIAN_CRASHKERNEL,
    MCE_COMMAND,
    MEM_MIB,
    Console,
    RunSpec,
)
from tests.lab.vmcorelab import LabError, Log, _locked, _run, eprint

PROG = "debianlab"
COLLECTORS = ("slimdump", "makedumpfile")


# --------------------------------------------------------------------------- results


def _read_back(disk: Path, outdir: Path) -> dict[str, Any]:
    """Replay the journal (the capture kernel rebooted without unmounting)
    and copy /var/crash and /var/lib/slimdumplab out with debugfs."""
    fsck = subprocess.run(["e2fsck", "-E", "journal_only", "-y", os.fspath(disk)],
                          capture_output=True, text=True)
    if fsck.returncode not in (0, 1, 2):
        raise LabError(f"e2fsck -E journal_only {disk} failed ({fsck.returncode}): "
                       f"{fsck.stderr.strip()[-200:]}")
    for sub in ("crash", "slimdumplab"):
        shutil.rmtree(outdir / sub, ignore_errors=True)
    for path in ("/var/crash", "/var/lib/slimdumplab"):
        _run(["debugfs", "-R", f"rdump {path} {outdir}", disk])
    files = []
    for f in sorted((outdir / "crash").rglob("*")):
        if f.is_file():
            files.append({"path": "/var/" + os.fspath(f.relative_to(outdir)),
                          "bytes": f.stat().st_size})
    return {"files": files, "e2fsck": fsck.returncode}


def _stamp_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The files kdump-tools wrote in the capture kernel: /var/crash/STAMP/*."""
    return [f for f in files if re.fullmatch(r"/var/crash/\d{12}/[^/]+", f["path"])]


def _phases(console: Console, trigger: float) -> dict[str, float | None]:
    """Host seconds after the crash at which each capture-kernel step showed."""
    def at(needle: str) -> float | None:
        t = console.first(needle, trigger)
        return None if t is None else round(t - trigger, 1)

    return {
        "capture_kernel_boot": at("Linux version"),
        "oracle_start": at(f"{MARK}-ORACLE-START"),
        "oracle_end": at(f"{MARK}-ORACLE-END"),
        "dump_dmesg": at("running makedumpfile --dump-dmesg"),
        "kdump_tools": at("Starting kdump-tools:"),
        "dump": at("running makedumpfile -"),
        "saved_vmcore": at("saved vmcore in"),
    }


def _since(console: Console, needle: str, times: dict[str, Any]) -> float | None:
    """Seconds from the capture kernel's first line with ``needle`` to QEMU's exit."""
    t = console.first(needle, times["trigger"])
    return None if t is None else round(times["exit"] - t, 1)


def _meminfo(console: Console, field: str) -> int | None:
    """A /proc/meminfo field (kB) of the capture kernel, from the oracle's start line."""
    for _, line in console.lines:
        if f"{MARK}-ORACLE-START" in line and (m := re.search(rf"{field}: (\d+) kB", line)):
            return int(m[1])
    return None


def _min_available(console: Console, after: float | None) -> int | None:
    """The lowest MemAvailable (kB) of the capture kernel's seconds that ended
    after ``after`` (memwatch prints each second's low)."""
    if after is None:
        return None
    lows = [int(m[1]) for t, line in console.lines if t >= after
            and (m := re.search(rf"{MARK}-MEMAVAIL (\d+)", line))]
    return min(lows) if lows else None


def run(spec: RunSpec, outdir: Path, *, deb: Path | None = None, keep_disk: bool = False,
        log: Log = eprint) -> dict[str, Any]:
    """Build (or reuse) the image, crash it as ``spec`` says, read back what
    kdump-tools saved; write OUTDIR/result.json and return it."""
    if spec.collector not in COLLECTORS or spec.crash not in CRASHES:
        raise LabError(f"collector must be one of {COLLECTORS}, crash one of {CRASHES}")
    if spec.collector == "slimdump" and deb is None:
        raise LabError("--collector slimdump needs slimdump's .deb (--deb)")
    if spec.collector == "makedumpfile":
        deb = None
    outdir = outdir.absolute()
    outdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    image = debianimage.image_for(deb, log=log)
    meta = debianimage.image_meta(image)
    disk = outdir / "disk.img"
    log(f"disk for {spec.collector}: base {image.name}")
    installed = debianimage.make_disk(image, disk, deb=deb, log=log)
    console = Console(outdir / "console.log")
    log(f"booting {meta['kernel_release']} (TCG, {spec.mem_mib} MiB, {spec.cpus} CPUs, "
        f"crashkernel={spec.crashkernel}, crash {spec.crash}, collector {spec.collector})")
    try:
        times = debianvm.boot_and_crash(spec, image, disk, console, log)
    finally:
        console.close()
    back = _read_back(disk, outdir)
    if not keep_disk:
        disk.unlink()
    t_oracle0 = console.first(f"{MARK}-ORACLE-START", times["trigger"])
    t_oracle1 = console.first(f"{MARK}-ORACLE-END", times["trigger"])
    oracle = (t_oracle1 - t_oracle0) if t_oracle0 is not None and t_oracle1 is not None else None
    end_line = next((line for _, line in console.lines if f"{MARK}-ORACLE-END" in line), "")
    stamp = _stamp_files(back["files"])
    crash_to_exit = times["exit"] - times["trigger"]
    result: dict[str, Any] = {
        "crash": spec.crash, "collector": spec.collector,
        "crashkernel": spec.crashkernel, "crash_size_line": times.get("loaded_line"),
        "mem_mib": spec.mem_mib, "cpus": spec.cpus,
        "kernel_release": meta["kernel_release"], "image": image.name,
        "image_versions": meta["versions"], "deb": installed["deb"],
        "mce": MCE_COMMAND if spec.crash == "mce" else None,
        "boot_to_loaded_s": round(times.get("loaded", float("nan")), 1),
        "crash_to_exit_s": round(crash_to_exit, 1),
        "oracle_s": None if oracle is None else round(oracle, 1),
        "oracle_rc": end_line.split("rc=", 1)[1].strip() if "rc=" in end_line else None,
        "panic_to_reboot_s": round(crash_to_exit - (oracle or 0.0), 1),
        "kdump_tools_to_exit_s": _since(console, "Starting kdump-tools:", times),
        "phases_s": _phases(console, times["trigger"]),
        "capture_mem_total_kb": _meminfo(console, "MemTotal"),
        "min_mem_available_kb": {
            "capture_kernel": _min_available(console, times["trigger"]),
            "kdump_tools": _min_available(
                console, console.first("Starting kdump-tools:", times["trigger"])),
        },
        "stamp_files": stamp,
        "bytes_written": sum(f["bytes"] for f in stamp),
        "all_var_crash_files": back["files"],
        "saved_vmcore": console.first("saved vmcore in", times["trigger"]) is not None,
        "kdump_tools_lines": [line.strip()[:300] for t, line in console.lines
                              if t >= times["trigger"] and "kdump-tools[" in line][:40],
        "oom_lines": [line.strip() for t, line in console.lines
                      if t >= times["trigger"] and "Out of memory" in line],
        "qemu_exit": times["qemu_exit"], "e2fsck": back["e2fsck"],
        "console_log": os.fspath(console.path), "outdir": os.fspath(outdir),
        "disk_seconds": installed.get("disk_seconds"),
        "wall_s": round(time.monotonic() - started, 1),
        "ran_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    tmp = outdir / ".result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, outdir / "result.json")
    log(f"{spec.collector}/{spec.crash}: crash to reboot {result['panic_to_reboot_s']} s "
        f"(oracle {result['oracle_s']} s subtracted), {result['bytes_written']} bytes in "
        f"/var/crash, saved vmcore: {result['saved_vmcore']}")
    return result


def slimdump_deb(log: Log = eprint) -> Path:
    """slimdump's .deb for a run: $SLIMDUMP_DEB, else the package of this
    tree (tests/lab/debpkg.py: built in seconds, cached by its contents)."""
    env = os.environ.get("SLIMDUMP_DEB")
    if env:
        path = Path(env)
        if not path.is_file():
            raise LabError(f"SLIMDUMP_DEB={env}: no such file")
        return path
    try:
        return debpkg.ensure_deb()
    except RuntimeError as exc:
        raise LabError(f"building slimdump's .deb (packaging/deb/build.py): {exc}") from None


def ensure_run(spec: RunSpec, *, deb: Path | None = None, log: Log = eprint) -> dict[str, Any]:
    """A run's result, cached under the image cache's results/ by everything
    that decides it (the spec, the base image's recipe, the .deb's bytes);
    only the newest result of each collector and crash is kept."""
    image = debianimage.image_for(deb, log=log)
    key = hashlib.sha256(json.dumps({
        "spec": dataclasses.asdict(spec), "image": image.name,
        "deb": hashlib.sha256(deb.read_bytes()).hexdigest() if deb else None,
    }, sort_keys=True).encode()).hexdigest()[:16]
    results = debianimage.image_root() / "results"
    name = f"{spec.collector}-{spec.crash}"
    out = results / f"{name}-{key}"
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text())
    results.mkdir(parents=True, exist_ok=True)
    with _locked(results / f".{name}.lock"):
        if (out / "result.json").is_file():
            return json.loads((out / "result.json").read_text())
        for old in results.glob(f"{name}-*"):
            shutil.rmtree(old, ignore_errors=True)
        return run(spec, out, deb=deb, log=log)


# --------------------------------------------------------------------------- CLI


def _cmd_image(a: argparse.Namespace) -> int:
    cached = debianimage.is_built() and not a.force
    t0 = time.monotonic()
    path = debianimage.build_image(force=a.force)
    if a.deb:
        path = debianimage.image_for(Path(a.deb))
    meta = debianimage.image_meta(path)
    how = "cached" if cached else f"built in {time.monotonic() - t0:.0f} s"
    print(f"{path}: {how}, kernel {meta['kernel_release']}, "
          f"{meta['root_tar_bytes'] / 1e6:.0f} MB root.tar")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    spec = RunSpec(a.collector, a.crash, crashkernel=a.crashkernel, mem_mib=a.mem,
                   capture_timeout_s=a.timeout)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) if a.out else (debianimage.image_root() / "runs"
                                     / f"{a.collector}-{a.crash}-{stamp}")
    deb = None
    if a.collector == "slimdump":
        deb = Path(a.deb) if a.deb else slimdump_deb()
    result = run(spec, out, deb=deb, keep_disk=a.keep_disk)
    print(json.dumps({k: result[k] for k in ("crash", "collector", "crashkernel",
                                             "panic_to_reboot_s", "oracle_s", "bytes_written",
                                             "saved_vmcore", "stamp_files", "console_log")},
                     indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.debianlab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    i = sub.add_parser("image", help="build the cached Debian 12 base image (mmdebstrap)")
    i.add_argument("--force", action="store_true", help="rebuild even if cached")
    i.set_defaults(fn=_cmd_image)
    r = sub.add_parser("run", help="crash the image; kdump-tools saves the dump")
    r.add_argument("--collector", required=True, choices=COLLECTORS)
    r.add_argument("--crash", required=True, choices=CRASHES)
    r.add_argument("--crashkernel", default=DEBIAN_CRASHKERNEL,
                   help=f"the kernel's crashkernel= (default Debian's {DEBIAN_CRASHKERNEL})")
    r.add_argument("--mem", type=int, default=MEM_MIB, metavar="MIB")
    r.add_argument("--timeout", type=int, default=debianvm.CAPTURE_TIMEOUT_S, metavar="S",
                   help="give up S seconds after the crash (default %(default)s)")
    r.add_argument("--out", metavar="DIR", help="default: the cache's runs/COLLECTOR-CRASH-TIME")
    r.add_argument("--keep-disk", action="store_true", help="keep OUT/disk.img")
    for p in (i, r):
        p.add_argument("--deb", metavar="FILE",
                       help="slimdump's .deb (default: $SLIMDUMP_DEB, else built from this "
                       "tree); a Depends the base lacks makes another base")
    r.set_defaults(fn=_cmd_run)
    return vmcorelab.dispatch(PROG, ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
