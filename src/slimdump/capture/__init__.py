"""Capture: from a dump source to the file that should be kept.

- :mod:`~slimdump.capture.decision`: why the machine crashed and what to write;
- :mod:`~slimdump.capture.small`: the slimdump and the triage artifact;
- :mod:`~slimdump.capture.normal`: the normal and full dumps, and their fallbacks;
- :mod:`~slimdump.capture.run`: :func:`capture`, in the order that never loses a dump;
- :mod:`~slimdump.capture.summary`: what it did, one line each.
"""

from __future__ import annotations

from slimdump.capture.decision import (
    KERNEL_LOG,
    KERNEL_NOTE,
    Decision,
    decide,
    decide_safely,
    machine_check_pfns,
    previous_metadata,
    slim_metadata,
)
from slimdump.capture.run import TRIAGE_BESIDE, CaptureResult, capture, dmesg_path
from slimdump.capture.small import triage_path, write_slimdump, write_small_output
from slimdump.capture.summary import summary_lines

__all__ = ["KERNEL_LOG", "KERNEL_NOTE", "TRIAGE_BESIDE", "CaptureResult", "Decision", "capture",
           "decide", "decide_safely", "dmesg_path", "machine_check_pfns", "previous_metadata",
           "slim_metadata", "summary_lines", "triage_path", "write_slimdump",
           "write_small_output"]
