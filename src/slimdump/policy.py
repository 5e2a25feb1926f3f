"""Policy: what to save for each crash reason.

Actions:

``slim``    a slimdump (headers and notes, nothing of memory)
``dmesg``   a slimdump that also carries the crashed kernel's log
``full``    the complete dump, whatever the reason (for a machine check, every
            page but the one at its ADDR)
``normal``  the filtered dump for software crashes (makedumpfile's dump levels
            and formats)

The TOML file (``--policy FILE``, default ``/etc/slimdump.toml`` when it
exists) maps reason codes to actions in an ``[actions]`` table; ``default``
covers reason codes not listed and ``software`` crashes with no hardware
reason::

    [actions]
    PANIC_MCE = "slim"
    PANIC_GHES = "slim"
    PANIC_NMI = "dmesg"
    default = "normal"
    software = "normal"
"""

from __future__ import annotations

import os

from slimdump.errors import DumpError
from slimdump.record import field, record

SLIM, DMESG, FULL, NORMAL = "slim", "dmesg", "full", "normal"
ACTIONS = (SLIM, DMESG, FULL, NORMAL)
DEFAULT_POLICY_FILE = "/etc/slimdump.toml"
_SPECIAL = ("default", "software")


@record(frozen=True)
class Policy:
    """Reason code -> action, with the fallbacks for other codes and for
    software crashes."""

    actions: dict[str, str] = field(default_factory=lambda: {
        "PANIC_MCE": SLIM, "PANIC_GHES": SLIM, "PANIC_NMI": SLIM})
    default: str = NORMAL
    software: str = NORMAL
    source: str = "built-in defaults"

    def action_for(self, reason: str | None) -> str:
        if reason is None:
            return self.software
        return self.actions.get(reason, self.default)

    @classmethod
    def load(cls, path: str | None) -> Policy:
        """The policy in ``path``; with None, /etc/slimdump.toml when it
        exists, else the built-in defaults.  Keys the file leaves out keep
        their defaults."""
        if path is None:
            if not os.path.exists(DEFAULT_POLICY_FILE):
                return cls()
            path = DEFAULT_POLICY_FILE
        import tomllib  # only with a policy file (about 7 ms to import)

        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise DumpError(path, f"cannot read policy: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise DumpError(path, f"invalid TOML: {exc}") from None
        table = data.get("actions", {})
        unknown = set(data) - {"actions"}
        if unknown or not isinstance(table, dict):
            raise DumpError(path, "a policy has one table, [actions]; found "
                                  + ", ".join(sorted(unknown or {"actions"})))
        base = cls()
        actions = dict(base.actions)
        special = {"default": base.default, "software": base.software}
        for key, value in table.items():
            if value not in ACTIONS:
                raise DumpError(path, f"action for {key} is {value!r}; use one of "
                                      + ", ".join(ACTIONS))
            if key == "software" and value in (SLIM, DMESG):
                # a slimdump says why there is no memory: its NT_NOCOREDUMP
                # note needs a hardware reason, which a software crash lacks
                raise DumpError(path, f"action for software is {value!r}; a software crash "
                                      "has no hardware reason for a slimdump: use normal "
                                      "or full")
            if key in _SPECIAL:
                special[key] = value
            else:
                actions[key] = value
        return cls(actions, special["default"], special["software"], path)
