"""Output files: slimdumps, complete ELF copies, marked vmcores.

Writers write what they are told; deciding what to write is capture's job.
"""
