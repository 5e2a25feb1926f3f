"""Installing slimdump as the collector of Debian's kdump service.

Debian's and Ubuntu's kdump-tools run ``makedumpfile`` (found in PATH) with
their own arguments; nothing in the service can name another collector.  So
slimdump takes the name, the way dpkg lets a package take another's file: a
diversion (``dpkg-divert --rename``) moves Debian's makedumpfile to
:data:`DIVERTED_MAKEDUMPFILE`, where dpkg also puts every later upgrade of
the makedumpfile package, and a symlink takes the name, pointing at the
``slimdump-makedumpfile`` script, which hands the options it does not
implement to the real binary.  Undoing removes the link and the diversion
(renaming the binary back), so ``dpkg-divert --list`` is as it was.

``root`` is the system to change: ``/``, or a system image being built (a
chroot's directory), where dpkg-divert runs with ``--root``.  Tests use
images only: the host's makedumpfile is their oracle.

Fedora and RHEL's kdump-utils name the collector in /etc/kdump.conf
(``core_collector``): no diversion is needed there, and none is made here
(the ``setup`` command's help says what to write).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from slimdump.errors import DumpError
from slimdump.record import record

MAKEDUMPFILE = "/usr/bin/makedumpfile"
# Where ``dpkg-divert`` moves Debian's makedumpfile when slimdump takes its
# name; slimdump-makedumpfile hands the options it does not implement to it.
DIVERTED_MAKEDUMPFILE = "/usr/bin/makedumpfile.distrib"
KDUMP_CONFIG = "/usr/sbin/kdump-config"
COLLECTOR = "slimdump-makedumpfile"
PACKAGED_COLLECTOR = "/usr/bin/slimdump-makedumpfile"     # where the .deb puts it
PACKAGE = "slimdump"          # the diversion's owner: the Debian package's name
SERVICE = "kdump-tools"


@record(frozen=True)
class Diversion:
    """A dpkg diversion of :data:`MAKEDUMPFILE`."""

    to: str
    package: str              # "LOCAL" for a diversion no package owns


@record(frozen=True)
class Outcome:
    """What setup or undo did, in one line for the user."""

    changed: bool
    message: str


def _in_root(root: str, path: str) -> str:
    """``path`` of the system at ``root`` as this process reaches it."""
    return os.path.join(root, path.lstrip("/"))


def _is_host(root: str) -> bool:
    return os.path.realpath(root) == "/"


def _dpkg_divert(root: str, *args: str) -> str:
    """dpkg-divert's standard output; DumpError with its first error line."""
    program = shutil.which("dpkg-divert") or shutil.which("dpkg-divert", path="/usr/sbin:/sbin")
    if program is None:
        raise DumpError(None, "dpkg-divert not found: setup kdump-tools needs a dpkg system")
    cmd = [program, *(() if _is_host(root) else ("--root", root)), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no message"]
        problem = lines[0].removeprefix("dpkg-divert: ").removeprefix("error: ")
        raise DumpError(MAKEDUMPFILE, f"dpkg-divert {' '.join(args[:-1])} failed: {problem}")
    return done.stdout


def diversion(root: str = "/") -> Diversion | None:
    """The diversion of :data:`MAKEDUMPFILE` in ``root``'s dpkg database."""
    package = _dpkg_divert(root, "--listpackage", MAKEDUMPFILE).strip()
    if not package:
        return None
    return Diversion(_dpkg_divert(root, "--truename", MAKEDUMPFILE).strip(), package)


def kdump_tools_installed(root: str = "/") -> bool:
    """dpkg says kdump-tools is installed and its script is there."""
    if not os.path.isfile(_in_root(root, KDUMP_CONFIG)):
        return False
    query = shutil.which("dpkg-query")
    if query is None:
        return False
    done = subprocess.run([query, "--admindir", _in_root(root, "/var/lib/dpkg"), "-W",
                           "-f", "${Status}", SERVICE], capture_output=True, text=True,
                          check=False)
    return done.returncode == 0 and done.stdout.split()[-1:] == ["installed"]


def find_collector(root: str = "/") -> str:
    """The slimdump-makedumpfile script, as a path of the system at ``root``:
    the Debian package's, else (on this system) the one installed beside
    this Python (a venv's bin) or found in PATH."""
    candidates = [PACKAGED_COLLECTOR]
    if _is_host(root):
        candidates.append(os.path.join(os.path.dirname(sys.executable), COLLECTOR))
        found = shutil.which(COLLECTOR)
        if found:
            candidates.append(os.path.abspath(found))
    for path in candidates:
        real = _in_root(root, path)
        if os.path.isfile(real) and os.access(real, os.X_OK):
            return path
    raise DumpError(_in_root(root, PACKAGED_COLLECTOR),
                    f"no {COLLECTOR} script found: install slimdump's Debian package "
                    f"(make deb) first")


def _check_privileges(root: str) -> None:
    if _is_host(root):
        if os.geteuid() != 0:
            raise DumpError(None, f"setup {SERVICE} must run as root: it diverts "
                                  f"{MAKEDUMPFILE} with dpkg-divert")
        return
    for path in ("/var/lib/dpkg", "/usr/bin"):
        real = _in_root(root, path)
        if not os.access(real, os.W_OK):
            raise DumpError(real, "not writable by this user (run as root)")


def _where(root: str) -> str:
    return "" if _is_host(root) else f" in {root}"


def _link_target(path: str) -> str | None:
    return os.readlink(path) if os.path.islink(path) else None


def _put_link(root: str, target: str) -> None:
    """``MAKEDUMPFILE -> target``, replacing a symlink there in one rename."""
    link = _in_root(root, MAKEDUMPFILE)
    temp = os.path.join(os.path.dirname(link), f".{os.path.basename(link)}.{PACKAGE}-new")
    if os.path.lexists(temp):
        os.unlink(temp)
    os.symlink(target, temp)
    os.replace(temp, link)


def setup(root: str = "/") -> Outcome:
    """Make kdump-tools at ``root`` run slimdump-makedumpfile: divert
    makedumpfile and link its name to the collector.  Idempotent; a link
    that went missing or points elsewhere is put back."""
    _check_privileges(root)
    if not kdump_tools_installed(root):
        raise DumpError(_in_root(root, KDUMP_CONFIG),
                        f"not found: {SERVICE} is not installed{_where(root)} "
                        f"(apt install {SERVICE}), nothing to set up")
    target = find_collector(root)
    link = _in_root(root, MAKEDUMPFILE)
    current = diversion(root)
    if current is not None and current != Diversion(DIVERTED_MAKEDUMPFILE, PACKAGE):
        raise DumpError(link, f"already diverted to {current.to} by {current.package}: "
                              f"not changing another diversion")
    if current is None:
        made = _link_target(link)
        if made is not None and os.path.basename(made).startswith(PACKAGE):
            # --rename would hide a hand-made link where Debian's binary belongs
            raise DumpError(link, f"already links to {made} without a diversion: remove "
                                  f"the link, reinstall makedumpfile and run again")
        _dpkg_divert(root, "--package", PACKAGE, "--rename", "--divert", DIVERTED_MAKEDUMPFILE,
                     "--add", MAKEDUMPFILE)
        try:
            _put_link(root, target)
        except OSError as exc:
            _dpkg_divert(root, "--package", PACKAGE, "--rename", "--divert",
                         DIVERTED_MAKEDUMPFILE, "--remove", MAKEDUMPFILE)
            raise DumpError(link, f"cannot link to {target}: {exc.strerror}") from None
        real = os.path.isfile(_in_root(root, DIVERTED_MAKEDUMPFILE))
        note = ("" if real else "; makedumpfile is not installed: options slimdump does "
                                "not implement will be refused")
        return Outcome(True, f"{SERVICE}{_where(root)} now runs slimdump: {MAKEDUMPFILE} -> "
                             f"{target}, Debian's makedumpfile diverted to "
                             f"{DIVERTED_MAKEDUMPFILE}{note} (undo: slimdump setup "
                             f"{SERVICE} --undo)")
    found = _link_target(link)
    if found == target:
        return Outcome(False, f"{SERVICE}{_where(root)} already runs slimdump "
                              f"({MAKEDUMPFILE} -> {target}): nothing changed")
    if os.path.lexists(link) and found is None:
        raise DumpError(link, f"not slimdump's link although diverted to "
                              f"{DIVERTED_MAKEDUMPFILE}: remove it and run again")
    _put_link(root, target)
    return Outcome(True, f"{SERVICE}{_where(root)} runs slimdump again: {MAKEDUMPFILE} -> "
                         f"{target} (it was {'missing' if found is None else found})")


def undo(root: str = "/") -> Outcome:
    """Remove slimdump's link and diversion: Debian's makedumpfile gets its
    name back.  Works whether or not kdump-tools is still installed."""
    _check_privileges(root)
    link = _in_root(root, MAKEDUMPFILE)
    current = diversion(root)
    if current is None or current.package != PACKAGE:
        other = f" ({MAKEDUMPFILE} is diverted by {current.package})" if current else ""
        return Outcome(False, f"{SERVICE}{_where(root)} is not set up to run slimdump"
                              f"{other}: nothing to undo")
    if os.path.lexists(link):
        if not os.path.islink(link):
            raise DumpError(link, "a file, not slimdump's link: remove it and run again")
        os.unlink(link)
    _dpkg_divert(root, "--package", PACKAGE, "--rename", "--divert", current.to,
                 "--remove", MAKEDUMPFILE)
    return Outcome(True, f"{SERVICE}{_where(root)} runs Debian's makedumpfile again: removed "
                         f"the link {MAKEDUMPFILE} and the diversion to {current.to}")
