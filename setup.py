"""Build the optional C accelerators; everything else is in pyproject.toml.

``slimdump.writers._pagepack`` zero-tests and compresses pages (zlib, LZO)
without the GIL.  ``slimdump.kernel._pageclass`` classifies struct pages
by dump level without the GIL, and without numpy (so that a capture need
not import it).  Both are optional: without a C compiler (or liblzo2's
headers, for the packer) the build goes on without them and slimdump uses
its Python/numpy paths, which give the same results, only slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("slimdump.writers._pagepack", ["src/slimdump/writers/_pagepack.c"],
              libraries=["lzo2", "z"], extra_compile_args=["-O2"], optional=True),
    Extension("slimdump.kernel._pageclass", ["src/slimdump/kernel/_pageclass.c"],
              extra_compile_args=["-O2"], optional=True),
])
