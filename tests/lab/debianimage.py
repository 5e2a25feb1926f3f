"""debianimage: a whole Debian 12 system, built from Debian's packages, whose
own kdump-tools handles a crash (the image half of tests/lab/debianlab.py).

The base root file system is made once by ``mmdebstrap`` (minbase plus
systemd, Debian's kernel, kdump-tools, makedumpfile and what slimdump's .deb
needs) and cached as a tarball keyed by the recipe: the package list, the
hooks and the lab's files all go into the key, so a change to any of them
builds a new base and an unchanged recipe never runs mmdebstrap again.

Each run gets its own disk: the base unpacked into a scratch directory, for
``--collector slimdump`` slimdump's .deb installed with ``dpkg -i`` and
``slimdump setup kdump-tools`` run in a chroot (as an administrator would),
then ``mkfs.ext4 -d`` (no loop mounts), sparse.

What the recipe works around (../shared/lab/README.md, "A whole Debian 12
system"): kdump-tools' kernel hook builds its initrd with ``MODULES=dep``,
which cannot find a root device in a chroot, so the image says
``MODULES=list`` and names the virtio and ext4 modules in a hook; kdump-tools
rebuilds its initrd at boot when ``/var/lib/kdump/latest_sysctls-KVER`` is
missing or differs from /etc/kdump/sysctl.conf, so the image builds it and
writes that file (about 110 s saved per boot under TCG).

Lab-only parts of the image (nothing in kdump-tools is changed):
  slimdumplab-trigger.service  first kernel, after kdump-tools.service: waits
      for /sys/kernel/kexec_crash_loaded = 1, prints a marker on the serial
      console, then (``slimdumplab.crash=sysrq``) writes c to
      /proc/sysrq-trigger; for ``mce`` the host injects on the QEMU monitor.
  slimdumplab-oracle.service   capture kernel only (a drop-in makes
      kdump-tools-dump.service want it and start after it): the real
      makedumpfile's --dump-dmesg, and for sysrq its ``-l -d 31`` dump, into
      /var/lib/slimdumplab, between start and end markers so its time can be
      subtracted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.lab.vmcorelab import LabError, Log, _locked, _run, cache_dir, eprint

SUITE = "bookworm"
MIRROR = os.environ.get("SLIMDUMP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("SLIMDUMP_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")

#: minbase skips Recommends: without makedumpfile kdump-tools has no collector;
#: procps (priority important, on every standard install) has the sysctl that
#: kdump-tools sets kernel.panic_on_oops=1 with
PACKAGES: tuple[str, ...] = (
    "systemd-sysv", "linux-image-amd64", "kdump-tools", "makedumpfile", "udev", "kmod",
    "e2fsprogs", "procps", "python3", "python3-lzo", "zstd",
)

#: bump when the image changes in a way the texts below do not show
RECIPE_VERSION = 1
DISK_BYTES = 4 << 30
MMDEBSTRAP_TIMEOUT_S = 1800

MARK = "SLIMDUMPLAB"

ESSENTIAL_HOOK = r"""set -eu
R=$1
mkdir -p "$R/etc/initramfs-tools/conf.d" "$R/etc/initramfs-tools/hooks"
echo MODULES=list > "$R/etc/initramfs-tools/conf.d/zz-vm"
cat > "$R/etc/initramfs-tools/hooks/vm" <<'EOF'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules virtio_pci virtio_blk ext4 crc32c_generic
EOF
chmod 755 "$R/etc/initramfs-tools/hooks/vm"
"""

TRIGGER = rf"""#!/bin/sh
# First kernel: crash once kdump-tools has loaded the capture kernel.
crash=$(sed -n 's/.*slimdumplab\.crash=\([a-z]*\).*/\1/p' /proc/cmdline)
[ -n "$crash" ] || exit 0
say() {{ echo "$*" > /dev/ttyS0; }}
i=0
while [ "$(cat /sys/kernel/kexec_crash_loaded 2>/dev/null)" != 1 ]; do
  i=$((i + 1))
  if [ $i -gt 300 ]; then say "{MARK}-NOT-LOADED $(kdump-config status 2>&1)"; exit 1; fi
  sleep 1
done
say "{MARK}-LOADED crash_size=$(cat /sys/kernel/kexec_crash_size) \
$(grep MemTotal /proc/meminfo | tr -s ' ')"
sync
case $crash in
  sysrq) say "{MARK}-CRASH sysrq"; echo c > /proc/sysrq-trigger ;;
  mce) say "{MARK}-READY-FOR-MONITOR" ;;
  *) say "{MARK}-UNKNOWN-CRASH $crash" ;;
esac
"""

TRIGGER_UNIT = """[Unit]
Description=slimdump lab: crash once the capture kernel is loaded
After=kdump-tools.service
ConditionKernelCommandLine=slimdumplab.crash

[Service]
Type=simple
ExecStart=/usr/local/sbin/slimdumplab-trigger

[Install]
WantedBy=multi-user.target
"""

ORACLE = rf"""#!/bin/sh
# Capture kernel: the real makedumpfile's view of /proc/vmcore, before kdump-tools runs.
say() {{ echo "$*" > /dev/ttyS0; }}
real=$(dpkg-divert --truename /usr/bin/makedumpfile)
out=/var/lib/slimdumplab
mkdir -p $out
crash=$(sed -n 's/.*slimdumplab\.crash=\([a-z]*\).*/\1/p' /proc/cmdline)
say "{MARK}-ORACLE-START $real $(grep -E 'MemTotal|MemAvailable' /proc/meminfo | tr -s ' ' \
| tr '\n' ' ')"
$real --dump-dmesg /proc/vmcore $out/oracle-dmesg.txt > $out/oracle-dmesg.log 2>&1
rc=$?
if [ "$crash" = sysrq ]; then
  $real -l -d 31 /proc/vmcore $out/oracle.kdump > $out/oracle-kdump.log 2>&1
  rc="$rc $?"
fi
sync
say "{MARK}-ORACLE-END rc=$rc"
"""

# ordered as kdump-tools-dump.service is, and just before it: its time adds to the run
ORACLE_UNIT = """[Unit]
Description=slimdump lab: the real makedumpfile's dmesg (and sysrq dump) of /proc/vmcore
After=network-online.target
ConditionPathExists=/proc/vmcore

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/slimdumplab-oracle
"""

ORACLE_DROPIN = """[Unit]
Wants=slimdumplab-oracle.service slimdumplab-memwatch.service
After=slimdumplab-oracle.service
"""

# the lowest MemAvailable of each second in the capture kernel (the
# collector's headroom; the host takes the minimum over any span), sampled
# every 0.2 s without forking a process (bash builtins: read from
# /proc/meminfo, read -t on a fifo nobody writes as the sleep), so that it
# costs the one emulated CPU next to nothing
MEMWATCH = rf"""#!/bin/bash
fifo=/run/slimdumplab-memwatch
mkfifo $fifo && exec 9<>$fifo || exit 1
while :; do
  low=
  for _ in 1 2 3 4 5; do
    while read -r key kb _; do [ "$key" = MemAvailable: ] && break; done < /proc/meminfo
    if [ -z "$low" ] || [ "$kb" -lt "$low" ]; then low=$kb; fi
    read -r -t 0.2 -u 9 _
  done
  echo "{MARK}-MEMAVAIL $low" > /dev/ttyS0
done
"""

MEMWATCH_UNIT = """[Unit]
Description=slimdump lab: the capture kernel's lowest MemAvailable each second, on the console
DefaultDependencies=no
ConditionPathExists=/proc/vmcore

[Service]
Type=simple
ExecStart=/usr/local/sbin/slimdumplab-memwatch
"""

#: path in the image -> (text, mode)
FILES: dict[str, tuple[str, int]] = {
    "etc/fstab": ("/dev/vda / ext4 defaults 0 1\n", 0o644),
    "etc/hostname": ("debianlab\n", 0o644),
    "usr/local/sbin/slimdumplab-trigger": (TRIGGER, 0o755),
    "etc/systemd/system/slimdumplab-trigger.service": (TRIGGER_UNIT, 0o644),
    "usr/local/sbin/slimdumplab-oracle": (ORACLE, 0o755),
    "etc/systemd/system/slimdumplab-oracle.service": (ORACLE_UNIT, 0o644),
    "usr/local/sbin/slimdumplab-memwatch": (MEMWATCH, 0o755),
    "etc/systemd/system/slimdumplab-memwatch.service": (MEMWATCH_UNIT, 0o644),
    "etc/systemd/system/kdump-tools-dump.service.d/slimdumplab-oracle.conf":
        (ORACLE_DROPIN, 0o644),
}

CUSTOMIZE_HOOK = r"""set -eu
R=$1 FILES=$2 OUT=$3
cp -a "$FILES/." "$R/"
grep -q '^USE_KDUMP=1' "$R/etc/default/kdump-tools" || {
  echo "etc/default/kdump-tools does not say USE_KDUMP=1" >&2; exit 1; }
chroot "$R" systemctl enable slimdumplab-trigger.service
set -- "$R"/lib/modules/*
[ $# -eq 1 ] || { echo "expected one kernel in lib/modules, found $#" >&2; exit 1; }
KVER=${1##*/}
# kdump-tools' own initrd, built here as its kernel hook builds it at boot
[ -e "$R/var/lib/kdump/initrd.img-$KVER" ] || chroot "$R" /etc/kernel/postinst.d/kdump-tools "$KVER"
cp "$R/etc/kdump/sysctl.conf" "$R/var/lib/kdump/latest_sysctls-$KVER"
cp "$R/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
cp "$R/boot/initrd.img-$KVER" "$OUT/initrd.img"
echo "$KVER" > "$OUT/kernel_release"
chroot "$R" dpkg-query -W -f '${Package}\t${Version}\n' > "$OUT/packages.tsv"
"""


def image_root() -> Path:
    """~/.cache/slimdump-lab/debian-12 (or under $SLIMDUMP_LAB_CACHE)."""
    return cache_dir() / "debian-12"


def recipe(extra_packages: tuple[str, ...] = ()) -> dict[str, object]:
    """Everything that decides the base image's contents, hashed into its key."""
    return {
        "version": RECIPE_VERSION, "suite": SUITE,
        "packages": sorted(set(PACKAGES) | set(extra_packages)),
        "essential_hook": ESSENTIAL_HOOK, "customize_hook": CUSTOMIZE_HOOK,
        "files": {k: [t, m] for k, (t, m) in sorted(FILES.items())},
    }


def recipe_key(extra_packages: tuple[str, ...] = ()) -> str:
    blob = json.dumps(recipe(extra_packages), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_dir(extra_packages: tuple[str, ...] = ()) -> Path:
    return image_root() / recipe_key(extra_packages)


def image_meta(path: Path) -> dict[str, object]:
    return json.loads((path / "image.json").read_text())


def is_built(extra_packages: tuple[str, ...] = ()) -> bool:
    return (image_dir(extra_packages) / "image.json").is_file()


def _write_tree(files: dict[str, tuple[str, int]], root: Path) -> None:
    for rel, (text, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)


def build_image(extra_packages: tuple[str, ...] = (), *, force: bool = False,
                log: Log = eprint) -> Path:
    """The cached base image's directory (root.tar, vmlinuz, initrd.img,
    packages.tsv, image.json), built by mmdebstrap when the recipe is new."""
    out = image_dir(extra_packages)
    if (out / "image.json").is_file() and not force:
        return out
    if shutil.which("mmdebstrap") is None:
        raise LabError("mmdebstrap is not installed (apt-get install mmdebstrap, or make apt)")
    if os.geteuid() != 0:
        raise LabError("building the Debian image needs root (mmdebstrap --mode=root)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent / f".{out.name}.lock"):
        if (out / "image.json").is_file() and not force:
            return out
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            _mmdebstrap(extra_packages, work, out.name, log)
            if out.exists():
                shutil.rmtree(out)
            os.replace(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _prune(keep={out.name, recipe_key()})
    return out


def _prune(keep: set[str]) -> None:
    """Remove base images of older recipes (about 800 MB each)."""
    for old in image_root().iterdir():
        if (old.is_dir() and old.name not in keep and (old / "root.tar").exists()
                and len(old.name) == 16):
            shutil.rmtree(old, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (old.parent / f".{old.name}.lock").unlink()


def _mmdebstrap(extra_packages: tuple[str, ...], work: Path, key: str, log: Log) -> None:
    files = work / "files"
    _write_tree(FILES, files)
    (work / "essential.sh").write_text(ESSENTIAL_HOOK)
    (work / "customize.sh").write_text(CUSTOMIZE_HOOK)
    packages = recipe(extra_packages)["packages"]
    assert isinstance(packages, list)
    cmd = [
        "mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
        "--include=" + ",".join(packages),
        f"--essential-hook=sh {work}/essential.sh \"$1\"",
        f"--customize-hook=sh {work}/customize.sh \"$1\" {files} {work}",
        SUITE, os.fspath(work / "root.tar"),
        f"deb {MIRROR} {SUITE} main", f"deb {MIRROR} {SUITE}-updates main",
        f"deb {SECURITY} {SUITE}-security main",
    ]
    log(f"mmdebstrap {SUITE} minbase + {len(packages)} packages (a few minutes)")
    t0 = time.monotonic()
    logfile = work / "mmdebstrap.log"
    with open(logfile, "wb") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=MMDEBSTRAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LabError(f"mmdebstrap took over {MMDEBSTRAP_TIMEOUT_S} s "
                           f"(log: {logfile})") from None
    if proc.returncode:
        tail = " | ".join(logfile.read_text(errors="replace").strip().splitlines()[-3:])
        keep = image_root() / "mmdebstrap.failed.log"
        shutil.copy(logfile, keep)
        raise LabError(f"mmdebstrap failed ({proc.returncode}): {tail} (log: {keep})")
    seconds = time.monotonic() - t0
    versions = dict(line.split("\t", 1) for line in
                    (work / "packages.tsv").read_text().splitlines() if "\t" in line)
    meta = {
        "key": key, "recipe": recipe(extra_packages),
        "kernel_release": (work / "kernel_release").read_text().strip(),
        "versions": {p: versions.get(p) for p in
                     ("linux-image-amd64", "kdump-tools", "makedumpfile", "systemd", "python3")},
        "root_tar_bytes": (work / "root.tar").stat().st_size,
        "mmdebstrap_seconds": round(seconds, 1),
    }
    shutil.rmtree(files)
    (work / "image.json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"base image built in {seconds:.0f} s: kernel {meta['kernel_release']}, "
        f"{meta['root_tar_bytes'] / 1e6:.0f} MB tar")


def image_for(deb: Path | None, log: Log = eprint) -> Path:
    """The base image a run uses: the default recipe's, or, when slimdump's
    .deb depends on a package the default base lacks, one with it added."""
    base = build_image(log=log)
    if deb is None:
        return base
    have = {line.split("\t", 1)[0]
            for line in (base / "packages.tsv").read_text().splitlines()}
    missing = tuple(d for d in deb_depends(deb) if d not in have)
    return build_image(missing, log=log) if missing else base


# --------------------------------------------------------------------------- per-run disk


def deb_depends(deb: Path) -> tuple[str, ...]:
    """The package names a .deb's Depends field lists (alternatives: the first)."""
    field = _run(["dpkg-deb", "-f", deb, "Depends"], text=True).stdout
    names = []
    for part in field.split(","):
        first = part.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return tuple(n for n in names if n)


def make_disk(image: Path, disk: Path, *, deb: Path | None = None,
              log: Log = eprint) -> dict[str, object]:
    """Write the run's disk: the base, plus slimdump's .deb set up as an
    administrator would when ``deb`` is given; returns what was installed."""
    info: dict[str, object] = {"deb": None}
    scratch = Path(tempfile.mkdtemp(dir=disk.parent, prefix=".root-"))
    try:
        t0 = time.monotonic()
        _run(["tar", "--numeric-owner", "-xpf", image / "root.tar", "-C", scratch])
        if deb is not None:
            info["deb"] = _install_deb(scratch, deb, log)
        with contextlib.suppress(FileNotFoundError):
            disk.unlink()
        _run(["mkfs.ext4", "-q", "-F", "-L", "debianlab", "-d", scratch, disk,
              f"{DISK_BYTES >> 20}M"])
        info["disk_seconds"] = round(time.monotonic() - t0, 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return info


def _install_deb(root: Path, deb: Path, log: Log) -> dict[str, object]:
    """dpkg -i and ``slimdump setup kdump-tools`` in a chroot; the diversion
    dpkg-divert then lists is what kdump-tools will run."""
    tmp = root / "tmp" / deb.name
    shutil.copy(deb, tmp)
    try:
        proc = subprocess.run(["chroot", root, "dpkg", "-i", f"/tmp/{deb.name}"],
                              capture_output=True, text=True)
        if proc.returncode:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise LabError(f"dpkg -i {deb.name} in the image failed: {tail} (the base image "
                           f"lacks a dependency? {', '.join(deb_depends(deb))})")
    finally:
        tmp.unlink()
    setup = subprocess.run(["chroot", root, "slimdump", "setup", "kdump-tools"],
                           capture_output=True, text=True)
    if setup.returncode:
        raise LabError("slimdump setup kdump-tools in the image failed: "
                       f"{(setup.stderr or setup.stdout).strip()[-300:]}")
    divert = _run(["chroot", root, "dpkg-divert", "--list", "/usr/bin/makedumpfile"],
                  text=True).stdout.strip()
    if not divert:
        raise LabError("slimdump setup kdump-tools left no diversion of /usr/bin/makedumpfile")
    version = _run(["dpkg-deb", "-f", deb, "Version"], text=True).stdout.strip()
    log(f"installed {deb.name} in the image; {divert}")
    return {"name": deb.name, "version": version,
            "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
            "setup": setup.stdout.strip(), "diversion": divert}
