"""Which input, target, mutations and command line mutant ``index`` gets:
a pure function of (seed, index, the inputs), so ``--only INDEX``
reproduces one case."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fuzz import elfmut, fmut, kmut
from fuzz.values import Plan, Reader

Mutator = Callable[[Plan, dict[str, Any]], None]

#: target -> (input kind, mutator, weight, exclusive: one mutation only)
TARGETS: dict[str, tuple[str, Mutator, float, bool]] = {
    "elf-header": ("elf", elfmut.elf_header, 2, False),
    "elf-phdr": ("elf", elfmut.elf_phdr, 3, False),
    "elf-note": ("elf", elfmut.elf_note, 2, False),
    "vmcoreinfo": ("elf", elfmut.elf_vmcoreinfo, 4, True),
    "elf-truncate": ("elf", elfmut.elf_truncate, 0.5, True),
    "printk": ("elf", kmut.printk, 4, False),
    "struct-page": ("elf", kmut.struct_page, 4, False),
    "kernel-data": ("elf", kmut.kernel_data, 1, False),
    "page-table": ("elf", kmut.page_table, 1.5, False),
    "kdump-header": ("kdump", fmut.kdump_header, 2, False),
    "kdump-subheader": ("kdump", fmut.kdump_subheader, 2, False),
    "kdump-vmcoreinfo": ("kdump", elfmut.kdump_vmcoreinfo, 1, True),
    "kdump-bitmap": ("kdump", fmut.kdump_bitmap, 2, False),
    "kdump-desc": ("kdump", fmut.kdump_desc, 3, False),
    "kdump-data": ("kdump", fmut.kdump_data, 1, False),
    "kdump-truncate": ("kdump", fmut.kdump_truncate, 0.5, True),
    "flat-record": ("flat", fmut.flat_record, 3, False),
    "flat-truncate": ("flat", fmut.flat_truncate, 0.5, True),
}

# capture options (weight); "stdout": -F without DST, the stream redirected
CAPTURES: list[tuple[list[str], float]] = [
    (["-l", "-d", "31"], 6), (["-c", "-d", "31"], 2), (["-p", "-d", "31"], 1),
    (["-z", "-d", "31"], 1), (["-E", "-d", "31"], 2), (["-F", "-l", "-d", "31"], 1),
    (["stdout", "-F", "-l", "-d", "31"], 1), (["-F", "-E", "-d", "31"], 0.5),
    (["-l", "-d", "0"], 0.5), (["-l", "-d", "1"], 1), (["-l", "-d", "19"], 1),
    (["-l", "-d", "2"], 0.5), (["-l", "-d", "8"], 0.5), (["--dump-dmesg", "-l", "-d", "31"], 1),
    (["--num-threads", "1", "-l", "-d", "31"], 1), (["--full"], 0.3),
]
PAGE_CAPTURES = [(opts, w) for opts, w in CAPTURES if "-d" in opts and opts[-1] not in "01"]


@dataclass
class Input:
    name: str
    kind: str                  # elf, kdump, flat
    reader: Reader
    catalog: dict[str, Any]


@dataclass
class Case:
    index: int
    input: str
    target: str
    notes: list[str]
    ops: list[Any]
    command: list[str]         # argv with the placeholders SRC, DST, POLICY


def make_case(seed: int, index: int, inputs: Sequence[Input],
              targets: Sequence[str] | None = None) -> Case:
    rng = random.Random(f"slimdump-fuzz:{seed}:{index}")
    kinds = {i.kind for i in inputs}
    names = [t for t in (targets or TARGETS) if TARGETS[t][0] in kinds]
    target = rng.choices(names, weights=[TARGETS[t][2] for t in names])[0]
    kind, mutator, _w, exclusive = TARGETS[target]
    inp = rng.choice([i for i in inputs if i.kind == kind])
    plan = Plan(rng, inp.reader)
    for _ in range(1 if exclusive else rng.choice([1, 1, 1, 2, 3])):
        mutator(plan, inp.catalog)
    return Case(index, inp.name, target, plan.notes, plan.ops, command(rng, target))


def command(rng: random.Random, target: str) -> list[str]:
    if target == "struct-page":
        kind = "capture"          # only a filtered capture reads struct pages
    else:
        kind = rng.choices(["capture", "dmesg", "inspect"], weights=[6, 2, 2])[0]
    if kind == "dmesg":
        return rng.choice([["dmesg", "SRC"], ["dmesg", "--format", "vmcore-dmesg", "SRC"],
                           ["dmesg", "SRC", "DST"]])
    if kind == "inspect":
        return rng.choice([["inspect", "SRC"], ["inspect", "--json", "SRC"],
                           ["inspect", "--vmcoreinfo", "SRC"]])
    table = PAGE_CAPTURES if target == "struct-page" else CAPTURES
    opts = list(rng.choices([o for o, _w in table], weights=[w for _o, w in table])[0])
    argv = ["capture", "--no-progress"]
    # an MCE fixture's own reason means a slimdump; the policy makes it a filtered dump
    if target == "struct-page" or rng.random() < 0.3:
        argv += ["--policy", "POLICY"]
    if opts[0] == "stdout":
        return argv + opts[1:] + ["SRC"]
    return argv + opts + ["SRC", "DST"]
