"""The crashed kernel seen through VMCOREINFO, without vmlinux or debug info."""
