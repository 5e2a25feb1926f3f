#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# Check the NT_NOCOREDUMP series against Debian's kernel sources:
#
#   kernel/check.sh [VERSION...]        VERSION: 6.1, 6.12 (default: both)
#
# For each version, unpack /usr/src/linux-source-VERSION.tar.xz (apt-get
# install linux-source-VERSION) into a temporary directory, then
#   git apply --check kernel/patches/VERSION/*.patch
#   scripts/checkpatch.pl --strict on each patch, from that tree
# Exit status 0 when the series applies and checkpatch reports no error,
# warning or check on any patch.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
versions=${*:-6.1 6.12}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

for v in $versions; do
	tarball=/usr/src/linux-source-$v.tar.xz
	patches=$here/patches/$v
	if [ ! -f "$tarball" ]; then
		echo "$tarball: missing (apt-get install linux-source-$v)" >&2
		exit 1
	fi
	if [ ! -d "$patches" ]; then
		echo "$patches: no such series" >&2
		exit 1
	fi
	mkdir -p "$work/$v"
	tar -xJf "$tarball" -C "$work/$v"
	tree=$work/$v/linux-source-$v

	if (cd "$tree" && git apply --check "$patches"/*.patch); then
		echo "$v: git apply --check: ok"
	else
		echo "$v: git apply --check: FAILED"
		status=1
	fi

	for p in "$patches"/*.patch; do
		out=$(cd "$tree" && perl scripts/checkpatch.pl --strict "$p" || true)
		total=$(printf '%s\n' "$out" | grep '^total:' || true)
		echo "$v: $(basename "$p"): $total"
		case $total in
		"total: 0 errors, 0 warnings, 0 checks,"*) ;;
		*) printf '%s\n' "$out"; status=1 ;;
		esac
	done
done
exit $status
