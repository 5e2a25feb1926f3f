"""Build the optional C accelerator; everything else is in pyproject.toml.

``slimdump.writers._pagepack`` zero-tests and compresses pages (zlib, LZO)
without the GIL.  It is optional: without a C compiler or liblzo2's
headers the build goes on without it and slimdump uses its pure-Python
path, which writes the same bytes, only slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("slimdump.writers._pagepack", ["src/slimdump/writers/_pagepack.c"],
              libraries=["lzo2", "z"], extra_compile_args=["-O2"], optional=True),
])
