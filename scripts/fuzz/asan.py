"""A sanitizer build of slimdump for the children: a copy of src/slimdump
under OUT/asan/src with the two C extensions compiled by gcc with
-fsanitize=address,undefined (never in the source tree), and the
environment that makes the children load it (PYTHONPATH, LD_PRELOAD of
libasan, ASAN_OPTIONS, UBSAN_OPTIONS)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
         "-fno-sanitize-recover=undefined", "-O1", "-g", "-shared", "-fPIC"]
#: extension -> (C source, libraries), as setup.py builds them
EXTENSIONS = {"slimdump/writers/_pagepack": ("slimdump/writers/_pagepack.c", ["lzo2", "z"]),
              "slimdump/kernel/_pageclass": ("slimdump/kernel/_pageclass.c", [])}
OPTIONS = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:abort_on_error=1"}


def gcc_runtime() -> str:
    return subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                          text=True, check=True).stdout.strip()


def build(out: Path, src: Path = REPO / "src") -> tuple[Path, dict[str, str]]:
    """Copy the Python sources of ``src`` (the tree holding slimdump/) into
    OUT/asan/src, (re)compile the extensions when their sources or flags
    changed; (tree, extra environment)."""
    tree, built = out / "asan" / "src", out / "asan" / "build"
    shutil.rmtree(tree, ignore_errors=True)       # this run's sources, nothing stale
    shutil.copytree(src / "slimdump", tree / "slimdump",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for module, (csrc, libs) in EXTENSIONS.items():
        target = built / f"{module}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        c_dir = (src / csrc).parent
        digest = hashlib.sha256(" ".join(FLAGS + libs).encode())
        for dep in sorted(c_dir.glob("*.[ch]")):
            digest.update(dep.read_bytes())
        stamp = target.with_name(target.name + ".sha256")
        if not (target.exists() and stamp.exists() and stamp.read_text() == digest.hexdigest()):
            _compile(src / csrc, libs, c_dir, include, target)
            stamp.write_text(digest.hexdigest())
        shutil.copy2(target, tree / f"{module}{suffix}")
    env = dict(OPTIONS, PYTHONPATH=str(tree), LD_PRELOAD=gcc_runtime())
    return tree, env


def _compile(csrc: Path, libs: list[str], c_dir: Path, include: str, target: Path) -> None:
    cmd = ["gcc", *FLAGS, f"-I{include}", f"-I{c_dir}", str(csrc), "-o", str(target),
           *(f"-l{lib}" for lib in libs)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"fuzz: sanitizer build failed: {' '.join(cmd)}\n{res.stderr}")


def instrumented(so: Path) -> list[str]:
    """The sanitizer entry points an extension calls (proof it was built
    with the flags, not taken from the normal build)."""
    res = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True,
                         text=True, check=True)
    return sorted({line.split()[-1] for line in res.stdout.splitlines()
                   if "__asan_report" in line or "__ubsan_handle" in line})


PROBE_C = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
static PyObject *oob(PyObject *self, PyObject *args) {
    int size, n;
    if (!PyArg_ParseTuple(args, "ii", &size, &n)) return NULL;
    volatile char *p = malloc(size);  /* sizes known at run time only: ASan, not UBSan */
    int v = p[n];                     /* n = size: one byte past the allocation */
    free((void *)p);
    return PyLong_FromLong(v);
}
static PyMethodDef m[] = {{"oob", oob, METH_VARARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, "asanprobe", "", -1, m};
PyMODINIT_FUNC PyInit_asanprobe(void) { return PyModule_Create(&d); }
"""

# the real _pageclass.mark with lo = INT64_MAX: `lo + nflags` overflows (only a
# caller passing such a window can do this; capture's windows are pfns < 2^52)
UB_PROBE = ("import array, slimdump.kernel._pageclass as pc; "
            "pc.mark(bytearray(16), (1 << 63) - 1, array.array('q', [0, 1]), 1)")


def verify(out: Path, tree: Path, env: dict[str, str]) -> dict[str, object]:
    """Show the sanitizers fire in the children's environment: an
    out-of-bounds read in a throwaway extension built with the same flags
    (ASan), a signed overflow provoked in the real _pageclass (UBSan), and
    the sanitizer calls compiled into both real extensions."""
    import os
    import sys

    probe_dir = out / "asan" / "probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / "asanprobe.c").write_text(PROBE_C)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    _compile_probe(probe_dir, suffix)
    full = {**os.environ, **env, "PYTHONPATH": f"{tree}:{probe_dir}"}
    checks = {"asan-oob-read": "import asanprobe; asanprobe.oob(16, 16)",
              "ubsan-pageclass-mark": UB_PROBE,
              "clean-call": "import asanprobe; asanprobe.oob(16, 0)"}
    report: dict[str, object] = {}
    for name, code in checks.items():
        res = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                             text=True)
        first = next((ln for ln in res.stderr.splitlines()
                      if "Sanitizer" in ln or "runtime error" in ln), "")
        report[name] = {"exit": res.returncode, "report": first.strip()[:200]}
    report["LD_PRELOAD"] = env["LD_PRELOAD"]
    for module in EXTENSIONS:
        so = tree / f"{module}{suffix}"
        report[module] = {"file": str(so), "sanitizer calls": len(instrumented(so))}
    return report


def _compile_probe(probe_dir: Path, suffix: str) -> None:
    include = sysconfig.get_paths()["include"]
    cmd = ["gcc", *FLAGS, f"-I{include}", str(probe_dir / "asanprobe.c"), "-o",
           str(probe_dir / f"asanprobe{suffix}")]
    subprocess.run(cmd, check=True, capture_output=True)
