# slimdump: set up, demo, test.  Run as root on Debian 12 (apt-get installs
# QEMU, kexec-tools, makedumpfile, crash and elfutils for the lab and oracles).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := qemu-system-x86 busybox-static kexec-tools cpio makedumpfile crash \
                elfutils binutils zstd python3-libkdumpfile \
                liblzo2-dev zlib1g-dev libdeflate-dev gcc \
                linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev \
                xz-utils git \
                python3-dev python3-setuptools python3-lzo \
                python3-zstandard python3-snappy mmdebstrap e2fsprogs

.PHONY: apt setup demo test test-quick lint fixtures bench clean deb

STAMP  := $(VENV)/.installed

# Debian packages first: python-lzo and slimdump's C packer build against
# liblzo2-dev, zlib1g-dev and libdeflate-dev.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml setup.py src/slimdump/writers/_pagepack.c src/slimdump/sources/_mapcopy.c \
          src/slimdump/kernel/_pageclass.c src/slimdump/kernel/pageclass_rules.h | apt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@$(PY) -c 'import slimdump.writers._pagepack, slimdump.kernel._pageclass, slimdump.sources._mapcopy' 2>/dev/null || { \
	  echo "setup: the C extensions did not build (gcc, liblzo2-dev, zlib1g-dev, libdeflate-dev, Python.h?)"; \
	  exit 1; }
	touch $(STAMP)

setup: apt $(STAMP)

# The main job: crash Debian's 6.1 kernel with a fatal machine check in QEMU,
# capture /proc/vmcore with a real kdump kernel, then let slimdump find the
# machine check in the crashed kernel's log, save a slimdump and explain it;
# and the same with the NT_NOCOREDUMP note a patched kernel would write.
demo: setup
	$(PY) -m tests.lab.vmcorelab build 6.1-mce
	bash scripts/demo.sh $(PY)

# The README's test command, and CI's: builds the default real vmcores that are
# missing (cached, never rebuilt; about a minute each), the 4 GiB guest that
# test_pageclass reads and the fixtures of the patched kernel that
# test_kernel_note reads (the kernel itself first: about 12 minutes once, from
# Debian's linux-source and kernel/patches; tests/lab/kbuild.py), the Debian 12
# image test_debian_kdump crashes (mmdebstrap, about a minute once;
# tests/lab/debianlab.py), then runs every test.
# SLIMDUMP_REQUIRE_VMCORES=1: a missing oracle, module, extension or fixture
# fails the run instead of skipping (tests/conftest.py: require).  Any pytest
# exit status but 0 fails, 5 (no tests collected) included.
test: setup
	$(PY) -m tests.lab.vmcorelab build
	$(PY) -m tests.lab.vmcorelab build 6.1-mce-4g
	$(PY) -m tests.lab.vmcorelab build 6.1p-mce 6.1p-mce-kexec-file 6.1p-nmi 6.1p-sysrq \
	  6.1p-mce-nocoredump-off
	$(PY) -m tests.lab.debianlab image
	SLIMDUMP_REQUIRE_VMCORES=1 $(PY) -m pytest -q

# For a machine without QEMU: builds nothing; tests whose fixture, oracle or
# module is missing are skipped and listed (-ra), not passed.
test-quick: $(STAMP)
	SLIMDUMP_REQUIRE_VMCORES=0 SLIMDUMP_LAB_NO_BUILD=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

fixtures: setup
	$(PY) -m tests.lab.vmcorelab build

bench: setup
	$(PY) -m tests.lab.vmcorelab build 6.1-mce 6.1-mce-4g
	$(PY) -m tests.lab.vmcorelab build
	$(PY) bench/slim_capture.py
	$(PY) bench/bytes_read.py
	$(PY) bench/filtered.py

# slimdump's Debian package (Debian 12: apt install ./dist/slimdump_*.deb),
# built from the tree with Debian's Python and dpkg's tools in seconds:
# packaging/deb/build.py.
deb: apt
	/usr/bin/python3 packaging/deb/build.py --out dist

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis
