"""slimdump: a kdump collector and analyzer that honours NT_NOCOREDUMP.

The package reads Linux crash dumps (``/proc/vmcore`` and saved ELF cores),
decides what to keep, writes slimdumps or complete copies, and explains why the
machine died.  The data flows through the sub-packages in this order:

``elf``/``notes`` (raw structures) -> ``sources`` (dump files) -> ``kernel``
(the crashed kernel seen through VMCOREINFO) -> ``triage`` (why it crashed) ->
``writers`` (output files) -> ``capture``/``analysis`` -> ``cli``.
"""

__version__ = "0.1.0"
