"""Structured ``struct printk_log`` records (3.5-5.9): the crashed kernel's
log as ``SYMBOL(log_first_idx)``/``SYMBOL(log_next_idx)`` export it
(kdump-formats.md section 6).

Variable-size records in one character buffer, a zero-length header
marking where the writer wrapped to the start; ``SIZE(log)`` and
``OFFSET(log.*)`` before the 3.11 rename to ``printk_log``.  See
:mod:`slimdump.kernel.printk` for the records and the renderers.
"""

from __future__ import annotations

from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.printk import (
    MAX_BUFFER_BYTES,
    KernelLog,
    Keys,
    LogRecord,
    check_fits,
    facility_level_flags,
    uint_reader,
)


def read_printk_log(mem: KernelMemory) -> KernelLog:
    """Walk the records from log_first_idx to log_next_idx.

    Each record is a header (``ts_nsec``, ``len`` of the whole record,
    ``text_len``, ``dict_len``, facility, flags/level, maybe ``caller_id``)
    followed by the text and the dictionary.  ``len == 0`` is the marker
    where the writer wrapped: the walk continues at index 0.  A second wrap
    (a cycle), an index whose header does not fit in the buffer or a record
    running past its end stops the walk (the tools stop there too, with an
    error); the records before it are kept.
    """
    keys = Keys(mem)
    path = mem.path
    info = mem.info
    get = uint_reader(mem.endian)
    struct_name = "printk_log" if info.size("printk_log") is not None else "log"
    header = keys.size(struct_name)
    o_ts = keys.offset(f"{struct_name}.ts_nsec")
    o_len = keys.offset(f"{struct_name}.len")
    o_text_len = keys.offset(f"{struct_name}.text_len")
    o_dict_len = keys.offset(f"{struct_name}.dict_len")
    o_caller = keys.optional_offset(f"{struct_name}.caller_id")
    for name, end in (("ts_nsec", o_ts + 8), ("len", o_len + 2), ("text_len", o_text_len + 2),
                      ("dict_len", o_dict_len + 2), ("caller_id", (o_caller or 0) + 4)):
        check_fits(path, f"{struct_name} ({name})", end, header)
    # facility (u8) and flags:5/level:3 (u8) follow dict_len in every version.
    has_level = o_dict_len + 4 <= header and (o_caller is None or o_caller >= o_dict_len + 4)

    log_buf = mem.pointer(keys.symbol("log_buf"))
    buf_len = mem.u32(keys.symbol("log_buf_len"))
    first = mem.u32(keys.symbol("log_first_idx"))
    last = mem.u32(keys.symbol("log_next_idx"))
    if not 0 < buf_len <= MAX_BUFFER_BYTES:
        raise KernelViewError(path, f"log_buf_len {buf_len} is absurd (the log buffer is "
                                    f"1 byte to 1 GiB): the printk variables are corrupt")
    buf = memoryview(mem.read(log_buf, buf_len))

    records: list[LogRecord] = []
    problems: list[str] = []
    idx = first
    wrapped = False
    while idx != last:
        if idx + header > buf_len:
            problems.append(f"record index {idx:#x} is outside log_buf ({buf_len} bytes); "
                            f"log stops there")
            break
        length = get(buf, idx + o_len, 2)
        ts = get(buf, idx + o_ts, 8)
        text_len = get(buf, idx + o_text_len, 2)
        caller = get(buf, idx + o_caller, 4) if o_caller is not None else None
        facility = level = flags = None
        if has_level:
            facility, level, flags = facility_level_flags(buf, idx + o_dict_len + 2, mem.endian)
        text = bytes(buf[idx + header:min(idx + header + text_len, buf_len)])
        if length == 0:
            if wrapped:
                problems.append(f"cycle in log_buf records at index {idx:#x}; log stops there")
                break
            wrapped = True
            records.append(LogRecord(ts, text, caller, level, facility, None, flags,
                                     wrap_marker=True))
            idx = 0
            continue
        if length < header or idx + length > buf_len:
            problems.append(f"record at index {idx:#x} has length {length}, outside log_buf "
                            f"({buf_len} bytes); log stops there")
            break
        records.append(LogRecord(ts, text, caller, level, facility, None, flags))
        idx += length
    return KernelLog("structured", records, problems=problems)
