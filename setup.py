"""Build the C extensions; everything else is in pyproject.toml.

``slimdump.kernel._pageclass`` holds the one implementation of
makedumpfile's dump-level rules over struct pages (filtered dumps need it;
without it, capture keeps every page and says so).  ``slimdump.writers._pagepack``
zero-tests and compresses pages (zlib, LZO) without the GIL; it is optional:
without liblzo2's headers the build goes on without it and the writers use
their Python path, which writes the same formats, only slower.  Where
libdeflate's header is found (libdeflate-dev) the packer makes its zlib
streams with libdeflate, faster than zlib; otherwise with zlib.
``slimdump.sources._mapcopy`` copies out of mmap() windows of the source and
survives SIGBUS; without it, sources are read with pread() only.
"""

import os
import sysconfig
from pathlib import Path

from setuptools import Extension, setup


def have_header(name: str) -> bool:
    """Whether the compiler will find ``name`` in the usual include paths."""
    dirs = [*os.environ.get("CPATH", "").split(":"),
            *os.environ.get("C_INCLUDE_PATH", "").split(":"),
            sysconfig.get_config_var("INCLUDEDIR") or "/usr/include",
            "/usr/local/include", "/usr/include"]
    return any(d and (Path(d) / name).is_file() for d in dirs)


LIBDEFLATE = have_header("libdeflate.h")

setup(ext_modules=[
    Extension("slimdump.writers._pagepack", ["src/slimdump/writers/_pagepack.c"],
              libraries=["lzo2", "z", *(["deflate"] if LIBDEFLATE else [])],
              define_macros=[("HAVE_LIBDEFLATE", "1")] if LIBDEFLATE else [],
              extra_compile_args=["-O2"], optional=True),
    Extension("slimdump.kernel._pageclass", ["src/slimdump/kernel/_pageclass.c"],
              depends=["src/slimdump/kernel/pageclass_rules.h"],
              extra_compile_args=["-O2"]),
    Extension("slimdump.sources._mapcopy", ["src/slimdump/sources/_mapcopy.c"],
              extra_compile_args=["-O2"]),
])
