"""NT_NOCOREDUMP reason codes and what an analyzer says about each.

The headlines are the protocol's (shared/reference/nocoredump-note.md); the
2011 crash tool printed the PANIC_MCE one and ``Nocoredump Reason: CODE``.
"""

from __future__ import annotations

from slimdump.notes import RESERVED_OWNERS

HEADLINES = {
    "PANIC_MCE": "System crashed due to a hardware memory error. No coredump available.",
    "PANIC_GHES": "System crashed due to a fatal hardware error reported by firmware. "
                  "No coredump available.",
    "PANIC_NMI": "System crashed due to an unrecoverable NMI, likely hardware. "
                 "No coredump available.",
}

# Reason codes the protocol defines for hardware crashes.
HARDWARE_REASONS = frozenset(HEADLINES)


def headline(reason: str) -> str:
    """The first line an analyzer prints for a slimdump with this reason."""
    return HEADLINES.get(reason, f"System crashed due to a hardware error ({reason}). "
                                 "No coredump available.")


def reason_line(reason: str) -> str:
    return f"Nocoredump Reason: {reason}"


def valid_reason(reason: str) -> bool:
    """A reason code is an ELF note owner name: printable ASCII, no spaces,
    not one of the names Linux uses for its own notes."""
    return (0 < len(reason) <= 64 and reason.isascii() and reason.isprintable()
            and " " not in reason and reason not in RESERVED_OWNERS)
