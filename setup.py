"""Build the C extensions; everything else is in pyproject.toml.

``slimdump.kernel._pageclass`` holds the one implementation of
makedumpfile's dump-level rules over struct pages (filtered dumps need it;
without it, capture keeps every page and says so).  ``slimdump.writers._pagepack``
zero-tests and compresses pages (zlib, LZO) without the GIL; it is optional:
without liblzo2's headers the build goes on without it and the writers use
their Python path, which writes the same bytes, only slower.
``slimdump.sources._mapcopy`` copies out of mmap() windows of the source and
survives SIGBUS; without it, sources are read with pread() only.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("slimdump.writers._pagepack", ["src/slimdump/writers/_pagepack.c"],
              libraries=["lzo2", "z"], extra_compile_args=["-O2"], optional=True),
    Extension("slimdump.kernel._pageclass", ["src/slimdump/kernel/_pageclass.c"],
              depends=["src/slimdump/kernel/pageclass_rules.h"],
              extra_compile_args=["-O2"]),
    Extension("slimdump.sources._mapcopy", ["src/slimdump/sources/_mapcopy.c"],
              extra_compile_args=["-O2"]),
])
