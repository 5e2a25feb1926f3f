"""vmcorelab: real Linux crash dumps (/proc/vmcore) for slimdump's tests.

A real Debian kernel is booted in QEMU (TCG, no KVM needed) from a tiny busybox
initramfs.  It loads a capture kernel with ``kexec -p`` and is then crashed in
one of four ways:

  sysrq  ``echo c > /proc/sysrq-trigger``
  mce    QEMU monitor ``mce <cpu> 2 0xb600000000000134 0x4 <addr> 0x86``: a fatal
         machine check (VAL|UC|EN|ADDRV|PCC, memory read error, bank 2)
  nmi    QEMU monitor ``nmi`` with ``unknown_nmi_panic=1``
  oom    ``vm.panic_on_oom=1``, then a tmpfs is filled

The capture kernel copies /proc/vmcore onto a raw virtio disk and powers off;
the host cuts the disk back to the ELF's size and keeps it sparse.

The ``6.1p-*`` fixtures crash instead the kernel/patches series' kernel, built
once from Debian's linux-source by tests/lab/kbuild.py (about 12 minutes); it
has everything the guest needs built in, so its initramfs loads no module.

Cache: $SLIMDUMP_LAB_CACHE, default ~/.cache/slimdump-lab.
  kernels/<package>/                unpacked linux-image-*-amd64-unsigned packages
  kernels/patched-<series>-<key>/   the patched kernel's bzImage, config, System.map
  vmcores/<fixture>.vmcore          the dump (sparse)
  vmcores/<fixture>.vmcore.json     how it was made, the panic line to expect
  vmcores/<fixture>.vmcore.console.log   both kernels' serial console
A fixture in the cache is never rebuilt unless --force is given.

Time (two host cores, TCG): 20-30 s per 768 MiB dump, about 80-120 s for the
4 GiB one, plus a one-off kernel download.  A 768 MiB vmcore is about 650 MB
apparent, 110-180 MB on disk; the 4 GiB one 4.1 GB apparent, 220 MB on disk.
The 12 GiB 6.1-sysrq-12g (``bench_only``: bench/scaling.py's; never built by
``build`` without names nor by CI) takes about 6 minutes: 12.7 GB apparent,
370 MB on disk, a 12 GiB QEMU guest (about 1 GB resident on the host).

Host needs: qemu-system-x86, busybox-static, kexec-tools, cpio (see ``setup``),
apt-get and dpkg-deb, and a reachable Debian mirror for the first download of
each kernel package.

Python use (tests, demo, benchmarks)::

    from tests.lab import vmcorelab
    path = vmcorelab.ensure("6.1-mce")      # builds on first use
    meta = vmcorelab.metadata("6.1-mce")
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import gzip
import json
import lzma
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

PROG = "vmcorelab"

#: host tool -> Debian package providing it (None: part of the base system)
TOOLS: dict[str, str | None] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "kexec": "kexec-tools",
    "cpio": "cpio",
    "apt-get": None,
    "dpkg-deb": None,
}

#: MCE injected by the ``mce`` mode (QEMU monitor: mce cpu bank status mcg_status addr misc)
MCE_BANK = 2
MCE_STATUS = 0xB600000000000134  # VAL|UC|EN|ADDRV|PCC, memory read error
MCE_MCG_STATUS = 0x4  # MCIP
MCE_MISC = 0x86
MCE_ADDR = 0x1234000

DEFAULT_MEM_MIB = 768
DEFAULT_CPUS = 2
DEFAULT_CRASHKERNEL_MIB = 192
DEFAULT_TIMEOUT_S = 600


class LabError(Exception):
    """A lab step failed; ``console_log`` names the serial log, when there is one."""

    def __init__(self, message: str, console_log: Path | None = None) -> None:
        super().__init__(message)
        self.console_log = console_log

    def __str__(self) -> str:
        text = super().__str__()
        if self.console_log is not None:
            text += f" (console log: {self.console_log})"
        return text


@dataclasses.dataclass(frozen=True)
class Mode:
    """How a crash mode crashes the first kernel, and the panic line it leaves."""

    trigger: str  # shell run by the first kernel's /init once the capture kernel is loaded
    panic_contains: str  # substring of the first kernel's "Kernel panic - not syncing:" line
    monitor: str | None = None  # QEMU monitor command sent once the guest is ready
    append: str = ""  # extra first-kernel command line


_WAIT_FOR_MONITOR = "echo LAB-READY-FOR-MONITOR; sleep 120"

MODES: dict[str, Mode] = {
    "sysrq": Mode("echo c > /proc/sysrq-trigger", "sysrq triggered crash"),
    "mce": Mode(
        _WAIT_FOR_MONITOR,
        "Fatal local machine check",
        monitor=(f"mce {{cpu}} {MCE_BANK} {MCE_STATUS:#x} {MCE_MCG_STATUS:#x} {{addr}} "
                 f"{MCE_MISC:#x}"),
    ),
    "nmi": Mode(_WAIT_FOR_MONITOR, "NMI: Not continuing", monitor="nmi",
                append="unknown_nmi_panic=1"),
    "oom": Mode(
        "echo 1 > /proc/sys/vm/panic_on_oom; mount -t tmpfs -o size=100% none /mnt; "
        "dd if=/dev/zero of=/mnt/fill bs=1M",
        "Out of memory",
    ),
}


@dataclasses.dataclass(frozen=True)
class FixtureSpec:
    """What to crash: Debian kernel series, crash mode and guest shape."""

    series: str  # "6.1" or "6.12"
    mode: str  # a key of MODES
    mem_mib: int = DEFAULT_MEM_MIB
    cpus: int = DEFAULT_CPUS
    crashkernel_mib: int = DEFAULT_CRASHKERNEL_MIB
    timeout_s: int = DEFAULT_TIMEOUT_S
    mce_cpu: int = 0  # mce mode only
    mce_addr: int = MCE_ADDR  # mce mode only
    patched: bool = False  # the series' kernel built by tests/lab/kbuild.py, not Debian's
    kexec: str = "-p"  # how the first kernel loads the capture kernel ("-s -p": kexec_file_load)
    append: str = ""  # extra first-kernel command line
    bench_only: bool = False  # for benchmarks: never built by ``make test``/CI nor by default


FIXTURES: dict[str, FixtureSpec] = {
    "6.1-sysrq": FixtureSpec("6.1", "sysrq"),
    "6.1-mce": FixtureSpec("6.1", "mce"),
    "6.12-sysrq": FixtureSpec("6.12", "sysrq"),
    "6.12-mce": FixtureSpec("6.12", "mce"),
    "6.1-nmi": FixtureSpec("6.1", "nmi"),
    "6.1-oom": FixtureSpec("6.1", "oom"),
    "6.12-nmi": FixtureSpec("6.12", "nmi"),
    "6.12-oom": FixtureSpec("6.12", "oom"),
    "6.1-mce-4g": FixtureSpec("6.1", "mce", mem_mib=4096, crashkernel_mib=256, timeout_s=1800),
    "6.1-sysrq-4g": FixtureSpec("6.1", "sysrq", mem_mib=4096, crashkernel_mib=256,
                                timeout_s=1800),
    # bench/scaling.py's largest guest (12 GiB apparent; build it by name)
    "6.1-sysrq-12g": FixtureSpec("6.1", "sysrq", mem_mib=12288, crashkernel_mib=256,
                                 timeout_s=3600, bench_only=True),
    # the kernel/patches series, built from Debian's linux-source (tests/lab/kbuild.py)
    "6.1p-mce": FixtureSpec("6.1", "mce", patched=True),
    "6.1p-mce-kexec-file": FixtureSpec("6.1", "mce", patched=True, kexec="-s -p"),
    "6.1p-nmi": FixtureSpec("6.1", "nmi", patched=True),
    "6.1p-sysrq": FixtureSpec("6.1", "sysrq", patched=True),
    "6.1p-mce-nocoredump-off": FixtureSpec("6.1", "mce", patched=True,
                                           append="nocoredump=off"),
}

DEFAULT_FIXTURES: tuple[str, ...] = (
    "6.1-sysrq",
    "6.1-mce",
    "6.12-sysrq",
    "6.12-mce",
    "6.1-nmi",
    "6.1-oom",
)

#: the fixtures on the patched kernel (its first build takes about 12 minutes)
PATCHED_FIXTURES: tuple[str, ...] = tuple(n for n, s in FIXTURES.items() if s.patched)

#: the fixtures only benchmarks use (built on demand, never by the test suite)
BENCH_FIXTURES: tuple[str, ...] = tuple(n for n, s in FIXTURES.items() if s.bench_only)

Log = Callable[[str], None]


def eprint(message: str) -> None:
    """Default progress logger: one line to stderr."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """The lab cache: $SLIMDUMP_LAB_CACHE, default ~/.cache/slimdump-lab."""
    env = os.environ.get("SLIMDUMP_LAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slimdump-lab"


def _spec(name: str) -> FixtureSpec:
    try:
        return FIXTURES[name]
    except KeyError:
        raise LabError(f"unknown fixture {name!r}; known: {', '.join(FIXTURES)}") from None


def fixture_path(name: str) -> Path:
    """Where fixture ``name``'s vmcore is (or would be) in the cache; builds nothing."""
    _spec(name)
    return cache_dir() / "vmcores" / f"{name}.vmcore"


def _sidecar(vmcore: Path, suffix: str) -> Path:
    return vmcore.with_name(vmcore.name + suffix)


def is_built(name: str) -> bool:
    """True if fixture ``name`` is complete in the cache (vmcore and its JSON).

    A patched-kernel fixture also needs to come from the kernel the current
    patches and lab.config build (tests/lab/kbuild.py's cache key): after a
    change to the series it is stale, and rebuilt."""
    path = fixture_path(name)
    if not (path.is_file() and _sidecar(path, ".json").is_file()):
        return False
    spec = _spec(name)
    if not spec.patched:
        return True
    from tests.lab import kbuild  # it imports this module

    recorded = json.loads(_sidecar(path, ".json").read_text()).get("kernel_build")
    return recorded == kbuild.current_build_name(spec.series)


def metadata(name: str) -> dict[str, Any]:
    """The JSON written next to fixture ``name``'s vmcore (raises LabError if not built)."""
    meta = _sidecar(fixture_path(name), ".json")
    if not meta.is_file():
        raise LabError(f"fixture {name} is not built (python -m tests.lab.vmcorelab build {name})")
    return json.loads(meta.read_text())


# --------------------------------------------------------------------------- host tools


def _which(tool: str) -> str | None:
    """shutil.which, also looking in the sbin directories a non-root PATH may lack."""
    extra = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(tool) or shutil.which(tool, path=extra)


def have_tools() -> list[str]:
    """Host tools the lab needs that are missing (empty list: all present)."""
    return [tool for tool in TOOLS if _which(tool) is None]


def _run(cmd: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.CompletedProcess[Any]:
    """Run a command; on failure raise LabError quoting the end of its stderr."""
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run([os.fspath(c) for c in cmd], check=True, **kw)
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]} not found (python -m tests.lab.vmcorelab setup)") from exc
    except subprocess.CalledProcessError as exc:
        err = exc.stderr or b""
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise LabError(f"{' '.join(map(str, exc.cmd))} failed ({exc.returncode}): {tail}") from exc


def _root_prefix() -> list[str]:
    return [] if os.geteuid() == 0 or not shutil.which("sudo") else ["sudo"]


def setup(log: Log = eprint) -> None:
    """Install the missing Debian packages; ``apt-get update`` only if apt lacks them.

    The patched kernel's source and build tools (tests/lab/kbuild.py) included."""
    from tests.lab import kbuild  # it imports this module

    packages = sorted({p for t, p in TOOLS.items() if p} | set(kbuild.BUILD_PACKAGES)
                      | {kbuild.source_package("6.1")})
    missing = []
    for pkg in packages:
        q = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                           text=True)
        if q.returncode or "install ok installed" not in q.stdout:
            missing.append(pkg)
    need_update = not _kernel_candidates("6.1")
    for pkg in missing:
        policy = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True)
        if "Candidate:" not in policy.stdout or "Candidate: (none)" in policy.stdout:
            need_update = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if need_update:
        log("apt-get update")
        _run([*_root_prefix(), "apt-get", "update", "-qq"], env=env)
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        _run([*_root_prefix(), "apt-get", "install", "-y", "-qq", "--no-install-recommends",
              *missing], env=env)
    else:
        log(f"packages already installed: {' '.join(packages)}")
    still = have_tools()
    if still:
        raise LabError(f"still missing: {', '.join(still)}")


# --------------------------------------------------------------------------- kernels


@dataclasses.dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel package, or the lab's patched build (tests/lab/kbuild.py)."""

    package: str
    root: Path
    vmlinuz: Path
    release: str  # uname -r, e.g. 6.1.0-56-amd64
    modular: bool = True  # False: everything the lab needs is built in, load no module


def _kernel_regex(series: str) -> re.Pattern[str]:
    # The ABI part is dot/plus-joined version pieces separated by "-<digit>..."
    # segments: "6.1.0-56", "6.12.117+deb12".  A "-cloud" or "-rt" flavour
    # starts with a letter, so it cannot match.
    return re.compile(
        rf"^linux-image-(?P<abi>{re.escape(series)}\.\d[\w.+~]*(?:-\d[\w.+~]*)*)"
        r"-amd64-unsigned$"
    )


def _version_key(abi: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", abi))


def _kernel_candidates(series: str) -> list[str]:
    out = subprocess.run(
        ["apt-cache", "search", "--names-only", rf"^linux-image-{re.escape(series)}\..*-unsigned$"],
        capture_output=True, text=True,
    ).stdout
    rx = _kernel_regex(series)
    return [n for n in (line.split(" ", 1)[0] for line in out.splitlines()) if rx.match(n)]


def kernel_package(series: str) -> str:
    """Newest ``linux-image-<series>.*-amd64-unsigned`` package (no cloud/rt flavours)."""
    names = _kernel_candidates(series)
    if not names:
        raise LabError(
            f"apt-cache finds no linux-image-{series}.*-amd64-unsigned package; "
            "run 'apt-get update' (or 'python -m tests.lab.vmcorelab setup')"
        )
    rx = _kernel_regex(series)
    return max(names, key=lambda n: _version_key(rx.match(n)["abi"]))  # type: ignore[index]


def fetch_kernel(series: str, log: Log = eprint) -> Kernel:
    """Download and unpack (once) the newest kernel package of ``series``."""
    pkg = kernel_package(series)
    kdir = cache_dir() / "kernels"
    root = kdir / pkg
    if not (root / "boot").is_dir():
        kdir.mkdir(parents=True, exist_ok=True)
        log(f"downloading {pkg}")
        with tempfile.TemporaryDirectory(dir=kdir, prefix=f".{pkg}.tmp-") as tmp:
            _run(["apt-get", "download", "-q", pkg], cwd=tmp)
            debs = sorted(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise LabError(f"apt-get download {pkg} left {len(debs)} .deb files")
            tree = Path(tmp) / "tree"
            _run(["dpkg-deb", "-x", debs[0], tree])
            try:
                tree.rename(root)
            except OSError:
                if not (root / "boot").is_dir():  # else: unpacked by another process
                    raise
        log(f"unpacked {pkg} into {root}")
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if len(vmlinuz) != 1:
        raise LabError(f"expected one boot/vmlinuz-* in {root}, found {len(vmlinuz)}")
    release = vmlinuz[0].name.removeprefix("vmlinuz-")
    return Kernel(pkg, root, vmlinuz[0], release)


def kernel_for(spec: FixtureSpec, log: Log = eprint) -> Kernel:
    """Debian's kernel of the spec's series, or the patched build of it."""
    if spec.patched:
        from tests.lab import kbuild  # it imports this module

        return kbuild.build_patched_kernel(spec.series, log)
    return fetch_kernel(spec.series, log)


# --------------------------------------------------------------------------- initramfs

#: modules the lab loads (with their dependencies) unless built in
MODULES = ("virtio_pci", "virtio_blk")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t debugfs none /sys/kernel/debug 2>/dev/null
mkdir -p /mnt
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || echo "LAB-INSMOD-FAILED $m"
done
sleep 1
if grep -q lab_capture /proc/cmdline; then
  if [ ! -e /proc/vmcore ]; then echo LAB-CAPTURE-NO-VMCORE; poweroff -f; fi
  if [ ! -b /dev/vda ]; then echo LAB-CAPTURE-NO-DISK; poweroff -f; fi
  echo "LAB-CAPTURE: vmcore $(stat -c %s /proc/vmcore) bytes"
  cat /proc/vmcore > /dev/vda || echo LAB-CAPTURE-COPY-FAILED
  sync; echo LAB-CAPTURE-DONE; poweroff -f
fi
kexec @KEXEC@ /capture/vmlinuz --initrd=/capture/initrd.img \
  --append="console=ttyS0 irqpoll nr_cpus=1 reset_devices panic=1 quiet lab_capture" \
  || echo LAB-KEXEC-FAILED
echo "LAB-KEXEC-LOADED $(cat /sys/kernel/kexec_crash_loaded)"
echo "LAB-CRASH-NOTES-SIZE $(cat /sys/devices/system/cpu/cpu0/crash_notes_size)"
echo "lab marker: first kernel, mode @MODE@" > /dev/kmsg
@TRIGGER@
sleep 60
echo LAB-NO-CRASH; poweroff -f
"""


def _module_plan(kernel: Kernel, modules: Sequence[str] = MODULES) -> list[tuple[str, bytes]]:
    """(name, plain .ko bytes) of MODULES and their dependencies, in load order.

    Debian's package ships no modules.dep (depmod runs at install time), so
    dependencies come from each module's own ``.modinfo`` ``depends=`` field.
    Modules built into the kernel (modules.builtin) are skipped; a kernel
    built with everything in (``modular=False``) gets none.
    """
    if not kernel.modular:
        return []
    mdir = kernel.root / "lib" / "modules" / kernel.release

    def name(path: str) -> str:
        return re.sub(r"\.ko(\.\w+)?$", "", path.rsplit("/", 1)[-1]).replace("-", "_")

    files = {name(os.fspath(p)): p for p in (mdir / "kernel").rglob("*.ko*")}
    builtin_file = mdir / "modules.builtin"
    builtin = ({name(x) for x in builtin_file.read_text().split()}
               if builtin_file.is_file() else set())
    plan: dict[str, bytes] = {}

    def visit(mod: str, wanted_by: str) -> None:
        if mod in plan or mod in builtin:
            return
        if mod not in files:
            raise LabError(f"{kernel.package}: no module {mod} (wanted by {wanted_by}), "
                           "nor is it built in")
        blob = _read_module(files[mod])
        m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", blob)
        for dep in (m[1].decode().split(",") if m and m[1] else []):
            visit(dep.replace("-", "_"), mod)
        plan[mod] = blob

    for mod in modules:
        visit(mod, "the lab")
    return list(plan.items())


def _read_module(path: Path) -> bytes:
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zst":
        return _run(["zstd", "-dc", path]).stdout
    return path.read_bytes()


def _copy_program(tool: str, tree: Path) -> None:
    """Copy a host program into the initramfs, with the shared libraries ldd lists."""
    exe = _which(tool)
    if exe is None:
        raise LabError(f"{tool} not found (python -m tests.lab.vmcorelab setup)")
    dst = tree / ("bin" if tool == "busybox" else "sbin") / tool
    shutil.copy(exe, dst)
    ldd = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
    for lib in re.findall(r"(/\S+\.so[.\d]*)", ldd):
        target = tree / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, target)


def _cpio(tree: Path, out: Path) -> None:
    files = _run(["find", "."], cwd=tree).stdout
    data = _run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=tree,
                input=files).stdout
    with gzip.open(out, "wb", compresslevel=1) as f:
        f.write(data)


def build_initramfs(kernel: Kernel, mode: str, work: Path, *,
                    modules: Sequence[str] = MODULES, init_text: str = INIT,
                    extra_files: dict[str, str] | None = None, kexec: str = "-p") -> Path:
    """Write work/initrd.img (first kernel) holding work/capture.img (capture kernel).

    ``modules``, ``init_text`` and ``extra_files`` (path in the tree -> text,
    made executable) are for run_collector; the fixtures use the defaults.
    ``kexec``: the options loading the capture kernel (``-s -p``: kexec_file_load).
    """
    tree = work / "root"
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "mnt", "lib/modules", "capture"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    _copy_program("busybox", tree)
    _copy_program("kexec", tree)
    plan = _module_plan(kernel, modules)
    for name, blob in plan:
        (tree / "lib" / "modules" / f"{name}.ko").write_bytes(blob)
    (tree / "lib" / "modules" / "order").write_text("".join(f"{n}\n" for n, _ in plan))
    init = tree / "init"
    init.write_text(init_text.replace("@MODE@", mode).replace("@TRIGGER@", MODES[mode].trigger)
                    .replace("@KEXEC@", kexec))
    init.chmod(0o755)
    for rel, text in (extra_files or {}).items():
        extra = tree / rel
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(text)
        extra.chmod(0o755)
    capture = work / "capture.img"
    _cpio(tree, capture)  # the capture kernel's tree: no nested capture files
    shutil.copy(capture, tree / "capture" / "initrd.img")
    shutil.copy(kernel.vmlinuz, tree / "capture" / "vmlinuz")
    initrd = work / "initrd.img"
    _cpio(tree, initrd)
    return initrd


# --------------------------------------------------------------------------- QEMU


def _monitor(sock_path: Path, command: str, timeout: float = 10.0) -> str:
    """Run one human-monitor command through QEMU's QMP socket; return its output."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(sock_path))
        stream = s.makefile("rwb")

        def reply() -> dict[str, Any]:
            while True:
                line = stream.readline()
                if not line:
                    raise LabError("QMP socket closed")
                msg = json.loads(line)
                if "event" in msg:
                    continue
                if "error" in msg:
                    raise LabError(f"QMP error: {msg['error'].get('desc', msg['error'])}")
                return msg

        def execute(cmd: str, **arguments: Any) -> Any:
            stream.write(json.dumps({"execute": cmd, "arguments": arguments}).encode() + b"\n")
            stream.flush()
            return reply()["return"]

        reply()  # the greeting
        execute("qmp_capabilities")
        return str(execute("human-monitor-command", **{"command-line": command})).strip()


_FAIL_MARKERS = {
    b"LAB-KEXEC-FAILED": "kexec -p failed in the first kernel",
    b"LAB-KEXEC-LOADED 0": "the capture kernel was not loaded",
    b"LAB-NO-CRASH": "the first kernel did not crash",
    b"LAB-CAPTURE-NO-VMCORE": "the capture kernel has no /proc/vmcore",
    b"LAB-CAPTURE-NO-DISK": "the capture kernel has no /dev/vda",
    b"LAB-CAPTURE-COPY-FAILED": "copying /proc/vmcore failed",
}


def _run_qemu(kernel: Kernel, initrd: Path, spec: FixtureSpec, work: Path, console: Path,
              log: Log, *, disk: bool = True, extra_args: Sequence[str] = (),
              done_marker: bytes = b"LAB-CAPTURE-DONE",
              fail_markers: dict[bytes, str] | None = None) -> float:
    """Boot, crash, capture onto work/disk.raw; the serial log goes to ``console``.

    Returns the seconds QEMU ran.  Raises LabError (``console`` is written anyway).
    ``disk=False``, ``extra_args``, ``done_marker`` and ``fail_markers`` are for
    run_collector (no disk, 9p shares, its own markers).
    """
    mode = MODES[spec.mode]
    disk_path = work / "disk.raw"
    if disk:
        with open(disk_path, "wb") as f:
            f.truncate((spec.mem_mib + 256) << 20)
    markers = {**_FAIL_MARKERS, **(fail_markers or {})}
    mon = work / "qmp.sock"
    append = " ".join(x for x in (f"console=ttyS0 crashkernel={spec.crashkernel_mib}M panic=1",
                                  mode.append, spec.append) if x)
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max",
        "-m", str(spec.mem_mib), "-smp", str(spec.cpus),
        "-nographic", "-no-reboot",
        "-kernel", os.fspath(kernel.vmlinuz), "-initrd", os.fspath(initrd), "-append", append,
        "-qmp", f"unix:{mon},server=on,wait=off",
    ]
    if disk:
        # zero writes become holes: the raw disk stays sparse on the host
        cmd[-2:-2] = ["-drive", f"file={disk_path},format=raw,if=virtio,discard=unmap,"
                      "detect-zeroes=unmap"]
    cmd += list(extra_args)
    buf = bytearray()
    t0 = time.monotonic()
    seen: set[str] = set()
    failure: str | None = None
    eof = False

    def once(key: str) -> bool:
        if key in seen:
            return False
        seen.add(key)
        return True

    log(f"booting {kernel.release} in QEMU (TCG, {spec.mem_mib} MiB, {spec.cpus} CPUs, "
        f"crashkernel={spec.crashkernel_mib}M, mode {spec.mode})")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        while True:
            if time.monotonic() - t0 > spec.timeout_s:
                failure = f"no capture within {spec.timeout_s} s"
                break
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    eof = True
                    break
                buf += chunk
            elif proc.poll() is not None:
                eof = True
                break
            if b"LAB-KEXEC-LOADED 1" in buf and once("loaded"):
                log(f"first kernel up after {time.monotonic() - t0:.0f} s, capture kernel loaded")
            if mode.monitor and b"LAB-READY-FOR-MONITOR" in buf and once("monitor"):
                time.sleep(1)
                command = mode.monitor.format(cpu=spec.mce_cpu, addr=hex(spec.mce_addr))
                try:
                    reply = _monitor(mon, command)
                except (OSError, ValueError, LabError) as exc:
                    failure = f"QEMU monitor {command!r}: {exc}"
                    break
                log(f"monitor: {command}" + (f" -> {reply}" if reply else ""))
                if reply:
                    failure = f"QEMU monitor {command!r} answered {reply!r}"
                    break
            m = re.search(rb"LAB-CAPTURE: vmcore (\d+) bytes", buf)
            if m and once("capture"):
                log(f"capture kernel up after {time.monotonic() - t0:.0f} s, "
                    f"copying {int(m[1]) / 1e6:.0f} MB /proc/vmcore")
            for marker, why in markers.items():
                if marker in buf:
                    failure = why
            if failure:
                break
    finally:
        if not eof or failure:  # failed, timed out or interrupted
            proc.kill()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        console.write_bytes(bytes(buf))
    seconds = time.monotonic() - t0
    if failure is None and done_marker not in buf:
        failure = f"the capture kernel did not finish (QEMU exit {proc.returncode})"
    if failure:
        raise LabError(failure, console)
    return seconds


def elf_size(path: Path) -> int:
    """Bytes an ELF file really uses: headers, program headers and every segment's data."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if eh[:4] != b"\x7fELF":
            raise LabError(f"{path} does not start with an ELF header")
        if eh[4] == 2:
            phoff, shoff = struct.unpack_from("<QQ", eh, 32)
            ehsize, phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHHH", eh, 52)
            ph_fmt, off_at, size_at = "<Q", 8, 32
        else:
            phoff, shoff = struct.unpack_from("<II", eh, 28)
            ehsize, phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHHH", eh, 40)
            ph_fmt, off_at, size_at = "<I", 4, 16
        end = max(ehsize, phoff + phentsize * phnum, shoff + shentsize * shnum if shoff else 0)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        ph = table[i * phentsize:(i + 1) * phentsize]
        (offset,) = struct.unpack_from(ph_fmt, ph, off_at)
        (filesz,) = struct.unpack_from(ph_fmt, ph, size_at)
        end = max(end, offset + filesz)
    return end


# --------------------------------------------------------------------------- building


def _qemu_version() -> str:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def build_vmcore(spec: FixtureSpec, out: Path, *, name: str | None = None,
                 log: Log = eprint) -> dict[str, Any]:
    """Crash a kernel as ``spec`` says; write OUT, OUT.json and OUT.console.log.

    All three are written under temporary names in OUT's directory and renamed
    into place at the end (the vmcore last), so an interrupted build leaves
    nothing under the final names.  On failure the console log is kept as
    OUT.failed.console.log and LabError is raised.  Returns the metadata.
    """
    if spec.mode not in MODES:
        raise LabError(f"unknown mode {spec.mode!r}; known: {', '.join(MODES)}")
    missing = have_tools()
    if missing:
        raise LabError(f"missing host tools: {', '.join(missing)} "
                       "(python -m tests.lab.vmcorelab setup)")
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    kernel = kernel_for(spec, log)
    failed_log = _sidecar(out, ".failed.console.log")
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        log(f"building initramfs for {kernel.release}")
        initrd = build_initramfs(kernel, spec.mode, work, kexec=spec.kexec)
        console = work / "console.log"
        try:
            seconds = _run_qemu(kernel, initrd, spec, work, console, log)
        except LabError as exc:
            if console.exists():
                os.replace(console, failed_log)
                exc.console_log = failed_log
            raise
        disk = work / "disk.raw"
        size = elf_size(disk)
        m = re.search(rb"LAB-CAPTURE: vmcore (\d+) bytes", console.read_bytes())
        if m and int(m[1]) != size:
            raise LabError(f"ELF size {size} differs from /proc/vmcore's {int(m[1])}")
        notes_size = re.search(rb"LAB-CRASH-NOTES-SIZE (\d+)", console.read_bytes())
        os.truncate(disk, size)
        vmcore = work / "out.vmcore"
        _run(["cp", "--sparse=always", disk, vmcore])
        disk.unlink()
        meta: dict[str, Any] = {
            "fixture": name,
            "kernel_package": kernel.package,
            "kernel_release": kernel.release,
            "kernel_build": kernel.root.name if spec.patched else None,
            "kernel_series": spec.series,
            "mode": spec.mode,
            "mem_mib": spec.mem_mib,
            "cpus": spec.cpus,
            "crashkernel_mib": spec.crashkernel_mib,
            "vmcore_bytes": size,
            "seconds": round(seconds, 1),
            "build_seconds": round(time.monotonic() - started, 1),
            "panic_contains": MODES[spec.mode].panic_contains,
            "patched": spec.patched,
            "kexec": f"kexec {spec.kexec}",
            "append": spec.append,
            # sysfs crash_notes_size: the per-CPU note buffer kexec -p sizes PT_NOTEs by
            "crash_notes_size": int(notes_size[1]) if notes_size else None,
            "qemu": _qemu_version(),
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        if spec.mode == "mce":
            meta["mce"] = {
                "cpu": spec.mce_cpu,
                "bank": MCE_BANK,
                "status": f"{MCE_STATUS:#x}",
                "mcg_status": f"{MCE_MCG_STATUS:#x}",
                "addr": f"{spec.mce_addr:#x}",
                "misc": f"{MCE_MISC:#x}",
            }
        (work / "out.json").write_text(json.dumps(meta, indent=1) + "\n")
        with contextlib.suppress(FileNotFoundError):
            out.unlink()  # a --force rebuild: the old vmcore goes first
        os.replace(console, _sidecar(out, ".console.log"))
        os.replace(work / "out.json", _sidecar(out, ".json"))
        os.replace(vmcore, out)
        with contextlib.suppress(FileNotFoundError):
            failed_log.unlink()
        return meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (one builder per fixture across processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure(name: str, *, force: bool = False, log: Log = eprint) -> Path:
    """Path of fixture ``name``'s vmcore, building it first if it is not cached.

    Progress goes to ``log`` (default: stderr), each line prefixed with the name.
    """
    spec = _spec(name)
    path = fixture_path(name)
    if is_built(name) and not force:
        return path

    def tagged(msg: str) -> None:
        log(f"[{name}] {msg}")

    with _locked(path.parent / f".{name}.lock"):
        if is_built(name) and not force:  # built by another process meanwhile
            return path
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        build_vmcore(spec, path, name=name, log=tagged)
    return path


# --------------------------------------------------------------------------- collector

#: the capture kernel mounts the host's / over 9p and an overlay on it
COLLECT_MODULES = (*MODULES, "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay")
COLLECT_CRASHKERNEL_MIB = 256
#: where the repo is (cwd of the command) and where {out} is, inside the chroot
REPO = Path(__file__).resolve().parents[2]
COLLECT_OUT = "/lab-out"
#: files run_collector leaves in OUTDIR
COLLECT_STDOUT = "collector.stdout"
COLLECT_STDERR = "collector.stderr"
COLLECT_STATUS = "collector.status"
COLLECT_CONSOLE = "console.log"

_P9 = "trans=virtio,version=9p2000.L,msize=262144"

_CAPTURE_BLOCK = INIT[INIT.index("if grep -q lab_capture"):INIT.index("kexec @KEXEC@ ")]

_COLLECT_BLOCK = rf"""if grep -q lab_capture /proc/cmdline; then
  if [ ! -e /proc/vmcore ]; then echo LAB-CAPTURE-NO-VMCORE; poweroff -f; fi
  echo "LAB-COLLECT: vmcore $(stat -c %s /proc/vmcore) bytes, $(grep MemFree /proc/meminfo)"
  fail() {{ echo "LAB-COLLECT-SETUP-FAILED $1"; poweroff -f; }}
  mkdir -p /host /upper /newroot
  # cache=loose: the host's files (Python, makedumpfile, this repo) are read once
  # and then served from the capture kernel's page cache, as from an initramfs;
  # with 9p's default (no cache) every start-up reads them over virtio again
  mount -t 9p -o {_P9},ro,cache=loose hostroot /host || fail "mount hostroot"
  mount -t tmpfs upper /upper && mkdir -p /upper/u /upper/w || fail "tmpfs"
  mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot \
    || fail "overlay"
  mount -t proc proc /newroot/proc || fail proc
  mount -t devtmpfs dev /newroot/dev || fail devtmpfs
  mount -t sysfs sys /newroot/sys || fail sysfs
  mkdir -p /newroot{COLLECT_OUT} /newroot/tmp
  mount -t 9p -o {_P9} out /newroot{COLLECT_OUT} || fail "mount out"
  cp /collect.sh /newroot/lab-collect.sh || fail "copy collect.sh"
  echo LAB-COLLECT-START
  chroot /newroot /bin/sh /lab-collect.sh </dev/null \
    >/newroot{COLLECT_OUT}/{COLLECT_STDOUT} 2>/newroot{COLLECT_OUT}/{COLLECT_STDERR}
  rc=$?
  echo $rc > /newroot{COLLECT_OUT}/{COLLECT_STATUS}
  sync
  echo "LAB-COLLECT-EXIT $rc, $(grep MemFree /proc/meminfo)"
  umount /newroot{COLLECT_OUT}
  echo LAB-COLLECT-DONE; poweroff -f
fi
"""

COLLECT_INIT = INIT.replace(_CAPTURE_BLOCK, _COLLECT_BLOCK)
_NR_CPUS_1 = " nr_cpus=1 "


def _collect_init(capture_cpus: int) -> str:
    """COLLECT_INIT with the capture kernel booted with ``nr_cpus=capture_cpus``
    (the fixtures' INIT keeps nr_cpus=1)."""
    if COLLECT_INIT.count(_NR_CPUS_1) != 1:
        raise LabError("INIT's kexec line has no single ' nr_cpus=1 ' to replace")
    return COLLECT_INIT.replace(_NR_CPUS_1, f" nr_cpus={capture_cpus} ")

_COLLECT_FAIL_MARKERS = {
    b"LAB-COLLECT-SETUP-FAILED": "setting up the chroot in the capture kernel failed",
}


@dataclasses.dataclass(frozen=True)
class CollectorResult:
    """What a command run inside the capture kernel did."""

    returncode: int  # the command's exit status inside the capture kernel
    stdout: Path  # its stdout, captured in OUTDIR
    stderr: Path  # its stderr, captured in OUTDIR
    console_log: Path  # both kernels' serial console
    seconds: float  # QEMU's run time, boot to poweroff
    vmcore_bytes: int | None  # the size of /proc/vmcore, as the capture kernel saw it
    kernel_release: str


def _collect_script(command: Sequence[str]) -> str:
    import shlex

    args = [c.replace("{vmcore}", "/proc/vmcore").replace("{out}", COLLECT_OUT)
            for c in command]
    path = ":".join([os.path.dirname(sys.executable), "/usr/local/sbin", "/usr/local/bin",
                     "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    return "\n".join([
        f"cd {shlex.quote(os.fspath(REPO))} || exit 125",
        f"export PATH={shlex.quote(path)}",
        "export PYTHONPATH=" + shlex.quote(f"{REPO / 'src'}:{REPO}"),
        "export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 TMPDIR=/tmp",
        f"exec {shlex.join(args)}",
        "",
    ])


def run_collector(series: str, mode: str, command: Sequence[str], outdir: Path, *,
                  mem_mib: int = DEFAULT_MEM_MIB, cpus: int = DEFAULT_CPUS,
                  timeout_s: int = DEFAULT_TIMEOUT_S, patched: bool = False,
                  kexec: str = "-p", crashkernel_mib: int = COLLECT_CRASHKERNEL_MIB,
                  modules: Sequence[str] = (), capture_cpus: int = 1,
                  log: Log = eprint) -> CollectorResult:
    """Crash a kernel as the fixtures do, then run ``command`` in the capture kernel.

    The capture kernel mounts the host's / read-only over 9p under a tmpfs
    overlay and chroots into it, so the host's own Python and this repo are
    there.  ``command`` runs with cwd = the repo and PYTHONPATH = src; in it
    ``{vmcore}`` is /proc/vmcore and ``{out}`` a writable 9p share of OUTDIR.
    OUTDIR gets collector.stdout, collector.stderr, collector.status (the exit
    status) and console.log.  Raises LabError if the command could not be run.
    ``patched``, ``kexec``: as in FixtureSpec.  ``crashkernel_mib``: the
    memory reserved for the capture kernel (crashkernel=).  ``modules``: more
    modules the capture kernel loads (with their dependencies) before the
    command runs, e.g. ``dm_mod``, ``dm_flakey``, ``loop`` for real faults.
    ``capture_cpus``: the capture kernel's ``nr_cpus=`` (1, as the fixtures'
    and Debian's and Fedora's kdump boot it); the first kernel needs at least
    that many (``cpus``).
    """
    if mode not in MODES:
        raise LabError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if not 1 <= capture_cpus <= cpus:
        raise LabError(f"capture_cpus={capture_cpus}: the capture kernel can have 1 to "
                       f"cpus={cpus} CPUs")
    missing = have_tools()
    if missing:
        raise LabError(f"missing host tools: {', '.join(missing)} "
                       "(python -m tests.lab.vmcorelab setup)")
    if not command:
        raise LabError("no command to run")
    outdir = Path(outdir).absolute()
    outdir.mkdir(parents=True, exist_ok=True)
    for name in (COLLECT_STDOUT, COLLECT_STDERR, COLLECT_STATUS):
        with contextlib.suppress(FileNotFoundError):
            (outdir / name).unlink()
    spec = FixtureSpec(series, mode, mem_mib=mem_mib, cpus=cpus,
                       crashkernel_mib=crashkernel_mib, timeout_s=timeout_s,
                       patched=patched, kexec=kexec)
    kernel = kernel_for(spec, log)
    console = outdir / COLLECT_CONSOLE
    with tempfile.TemporaryDirectory(prefix="vmcorelab-collect-") as tmp:
        work = Path(tmp)
        initrd = build_initramfs(kernel, mode, work, modules=(*COLLECT_MODULES, *modules),
                                 init_text=_collect_init(capture_cpus),
                                 extra_files={"collect.sh": _collect_script(command)},
                                 kexec=kexec)
        extra = [
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={outdir},mount_tag=out,security_model=none",
        ]
        seconds = _run_qemu(kernel, initrd, spec, work, console, log, disk=False,
                            extra_args=extra, done_marker=b"LAB-COLLECT-DONE",
                            fail_markers=_COLLECT_FAIL_MARKERS)
    text = console.read_bytes()
    status = outdir / COLLECT_STATUS
    if not status.is_file():
        raise LabError(f"the command's exit status was not written to {status}", console)
    m = re.search(rb"LAB-COLLECT: vmcore (\d+) bytes", text)
    result = CollectorResult(
        returncode=int(status.read_text().strip()),
        stdout=outdir / COLLECT_STDOUT, stderr=outdir / COLLECT_STDERR,
        console_log=console, seconds=seconds,
        vmcore_bytes=int(m[1]) if m else None, kernel_release=kernel.release,
    )
    log(f"command exited {result.returncode} in the capture kernel, QEMU ran "
        f"{seconds:.0f} s")
    return result


# --------------------------------------------------------------------------- CLI


def _sizes(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_blocks * 512


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def _tag(name: str) -> str:
    """default: built by ``build`` and CI; bench: benchmarks only; extra: by name."""
    if name in DEFAULT_FIXTURES:
        return "default"
    return "bench" if FIXTURES[name].bench_only else "extra"


def _cmd_setup(_: argparse.Namespace) -> int:
    setup()
    return 0


def _cmd_list(_: argparse.Namespace) -> int:
    print(f"cache: {cache_dir()}")
    for name, spec in FIXTURES.items():
        tag = _tag(name)
        shape = f"{spec.series:4} {spec.mode:5} {spec.mem_mib:5} MiB {spec.cpus} cpu"
        if is_built(name):
            size, used = _sizes(fixture_path(name))
            pkg = metadata(name).get("kernel_package", "?")
            state = f"built  {_mb(size):>7} ({_mb(used)} on disk)  {pkg}"
        else:
            state = "-"
        print(f"{name:23} {tag:7} {shape}  {state}")
    return 0


def _cmd_build(a: argparse.Namespace) -> int:
    names = a.names or list(DEFAULT_FIXTURES)
    for name in names:
        _spec(name)
    failed = []
    for name in names:
        cached = is_built(name) and not a.force
        try:
            path = ensure(name, force=a.force)
        except LabError as exc:
            print(f"{name:23} FAILED: {exc}", flush=True)
            failed.append(name)
            continue
        meta = metadata(name)
        size, used = _sizes(path)
        how = "cached" if cached else f"built in {meta['seconds']:.0f} s"
        print(f"{name:23} {how:16} {_mb(size):>7} ({_mb(used)} on disk)  "
              f"{meta['kernel_package']}  {path}", flush=True)
    if failed:
        raise LabError(f"{len(failed)} of {len(names)} failed: {', '.join(failed)}")
    return 0


def _cmd_path(a: argparse.Namespace) -> int:
    if not is_built(a.name):
        raise LabError(f"fixture {a.name} is not built (python -m tests.lab.vmcorelab build "
                       f"{a.name})")
    print(fixture_path(a.name))
    return 0


def _cmd_make(a: argparse.Namespace) -> int:
    big = a.mem > 2048
    spec = FixtureSpec(
        series=a.kernel, mode=a.mode, mem_mib=a.mem, cpus=a.cpus,
        crashkernel_mib=a.crashkernel or (256 if big else DEFAULT_CRASHKERNEL_MIB),
        timeout_s=a.timeout or (1800 if big else DEFAULT_TIMEOUT_S),
        mce_cpu=a.mce_cpu, mce_addr=a.mce_addr, patched=a.patched,
        kexec="-s -p" if a.kexec_file else "-p", append=a.append,
    )
    out = Path(a.out)
    meta = build_vmcore(spec, out, log=eprint)
    size, used = _sizes(out)
    print(f"{out}: {meta['seconds']:.0f} s, {_mb(size)} ({_mb(used)} on disk), "
          f"{meta['kernel_package']}")
    return 0


def _cmd_collect(a: argparse.Namespace) -> int:
    command = list(a.command)
    if command[:1] == ["--"]:
        command = command[1:]
    r = run_collector(a.kernel, a.mode, command, Path(a.out), mem_mib=a.mem, cpus=a.cpus,
                      timeout_s=a.timeout, patched=a.patched,
                      kexec="-s -p" if a.kexec_file else "-p", capture_cpus=a.capture_cpus)
    print(f"exit {r.returncode}, {r.seconds:.0f} s; stdout {r.stdout}, stderr {r.stderr}, "
          f"console {r.console_log}")
    return 0 if r.returncode == 0 else 1


def _epilog() -> str:
    rows = ["fixtures (name: kernel series, mode, guest memory, CPUs, crashkernel):"]
    for name, s in FIXTURES.items():
        tag = _tag(name)
        how = (" patched kernel, kexec " + s.kexec + (f", {s.append}" if s.append else "")
               if s.patched else "")
        rows.append(f"  {name:23} {s.series:4} {s.mode:5} {s.mem_mib:5} MiB  {s.cpus} CPUs  "
                    f"crashkernel={s.crashkernel_mib}M  [{tag}]{how}")
    rows += [
        "",
        "examples:",
        "  python -m tests.lab.vmcorelab setup",
        "  python -m tests.lab.vmcorelab build                  # the default fixtures",
        "  python -m tests.lab.vmcorelab build 6.1-mce-4g",
        "  python -m tests.lab.vmcorelab path 6.1-mce",
        "  python -m tests.lab.vmcorelab make --kernel 6.12 --mode nmi --mem 1024 --cpus 4 "
        "--out /tmp/x.vmcore",
        "  python -m tests.lab.vmcorelab collect --kernel 6.1 --mode mce --out /tmp/o -- "
        "python -m slimdump capture {vmcore} {out}/dump",
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m tests.lab.vmcorelab", description=__doc__,
                                 epilog=_epilog(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("setup", help="apt-get install the missing host packages"
                   ).set_defaults(fn=_cmd_setup)
    sub.add_parser("list", help="each fixture: cached or not, size").set_defaults(fn=_cmd_list)
    b = sub.add_parser("build", help="build fixtures missing from the cache (default: the "
                       "default set)")
    b.add_argument("names", nargs="*", metavar="NAME", help=f"fixtures: {', '.join(FIXTURES)}")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.set_defaults(fn=_cmd_build)
    p = sub.add_parser("path", help="print a built fixture's vmcore path (exit 1 if not built)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(fn=_cmd_path)
    m = sub.add_parser("make", help="an ad-hoc dump: OUT, OUT.json, OUT.console.log")
    m.add_argument("--kernel", default="6.1", metavar="SERIES", help="Debian series: 6.1, 6.12")
    m.add_argument("--mode", default="sysrq", choices=MODES)
    m.add_argument("--mem", type=int, default=DEFAULT_MEM_MIB, metavar="MIB")
    m.add_argument("--cpus", type=int, default=DEFAULT_CPUS, metavar="N")
    m.add_argument("--crashkernel", type=int, metavar="MIB",
                   help="crashkernel reservation (default 192, 256 above 2 GiB)")
    m.add_argument("--mce-cpu", type=int, default=0)
    m.add_argument("--mce-addr", type=lambda s: int(s, 0), default=MCE_ADDR)
    m.add_argument("--timeout", type=int, metavar="S",
                   help="give up after S seconds (default 600, 1800 above 2 GiB)")
    m.add_argument("--out", required=True, metavar="FILE")
    m.add_argument("--append", default="", metavar="ARGS", help="extra kernel command line")
    m.set_defaults(fn=_cmd_make)
    c = sub.add_parser("collect", help="crash a kernel, run COMMAND in its capture kernel "
                       "({vmcore}: /proc/vmcore, {out}: OUT)")
    c.add_argument("--kernel", default="6.1", metavar="SERIES", help="Debian series: 6.1, 6.12")
    c.add_argument("--mode", default="sysrq", choices=MODES)
    c.add_argument("--mem", type=int, default=DEFAULT_MEM_MIB, metavar="MIB")
    c.add_argument("--cpus", type=int, default=DEFAULT_CPUS, metavar="N")
    c.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, metavar="S")
    c.add_argument("--capture-cpus", type=int, default=1, metavar="N",
                   help="boot the capture kernel with nr_cpus=N (default 1; at most --cpus)")
    c.add_argument("--out", required=True, metavar="DIR",
                   help="host directory shared writable as {out}")
    c.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    for sp in (m, c):
        sp.add_argument("--patched", action="store_true",
                        help="the kernel/patches series' kernel (tests/lab/kbuild.py)")
        sp.add_argument("--kexec-file", action="store_true",
                        help="load the capture kernel with kexec -s -p (kexec_file_load)")
    c.set_defaults(fn=_cmd_collect)
    return dispatch(PROG, ap.parse_args(argv))


def dispatch(prog: str, args: argparse.Namespace) -> int:
    """Run a lab command line's ``args.fn``: a LabError is one line, exit 1."""
    try:
        return int(args.fn(args))
    except LabError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
