"""Fork server: imports slimdump once, then runs one command line per
request in a forked child (``slimdump.cli.main``, the real entry point of
``python -m slimdump``) with a wall-clock limit.

Run as a script by the harness, with the environment the children need
(PYTHONPATH of the sanitizer tree, LD_PRELOAD of libasan...).  Protocol:
one JSON request per line on stdin, one JSON reply per line on stdout.
Request: {"argv", "stdout", "stderr", "cwd", "timeout"}; reply: {"status"
(os.waitstatus_to_exitcode), "timed_out", "elapsed"}.  The first reply,
before any request, says which slimdump and extensions were imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
import traceback


def preload() -> dict[str, object]:
    import slimdump
    import slimdump.cli
    loaded = {"slimdump": slimdump.__file__, "extensions": {}}
    for mod in ("slimdump.writers._pagepack", "slimdump.kernel._pageclass"):
        try:
            m = __import__(mod, fromlist=["x"])
            loaded["extensions"][mod] = m.__file__
        except ImportError as exc:
            loaded["extensions"][mod] = f"not importable: {exc}"
    # what each command imports when it runs, once here rather than per child
    for mod in ("slimdump.capture", "slimdump.analysis.report", "slimdump.kernel.log",
                "slimdump.writers.kdump", "slimdump.writers.flat",
                "slimdump.writers.elf_filtered", "slimdump.kernel.dump_level"):
        with contextlib.suppress(Exception):   # a broken module shows up in the children
            __import__(mod)
    with open("/proc/self/maps") as maps:
        loaded["sanitizer_runtime"] = sorted({line.split()[-1] for line in maps
                                              if "libasan" in line or "libubsan" in line})
    return loaded


def child(job: dict) -> None:
    """In the forked child: redirect, arm the alarm, run the CLI, exit."""
    code = 1
    try:
        os.setsid()
        fd_in = os.open(os.devnull, os.O_RDONLY)
        fd_out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd_err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for fd, target in ((fd_in, 0), (fd_out, 1), (fd_err, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(job["cwd"])
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, float(job["timeout"]))
        from slimdump.cli import main
        try:
            code = main(job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            # what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
        try:
            sys.stdout.flush()
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
    finally:
        os._exit(code if isinstance(code, int) else 1)


def run(job: dict) -> dict:
    sys.stdout.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(job)
    pidfd = os.pidfd_open(pid)
    limit = job["timeout"] + 5           # SIGALRM first; SIGKILL if it is ignored
    timed_out = False
    try:
        ready, _, _ = select.select([pidfd], [], [], limit)
        if not ready:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    timed_out = timed_out or code == -signal.SIGALRM
    return {"status": code, "timed_out": timed_out, "elapsed": time.monotonic() - start}


def main() -> None:
    out = sys.stdout
    out.write(json.dumps(preload()) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip():
            out.write(json.dumps(run(json.loads(line))) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
