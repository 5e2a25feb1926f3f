"""The lockless ``printk_ringbuffer`` (5.10+): the crashed kernel's log as
``SYMBOL(prb)`` exports it (kdump-formats.md section 6).

A ring of descriptors (state + text block position), a parallel array of
``printk_info`` (sequence number, timestamp, text length, caller id) and a
data ring of text blocks, each prefixed by its descriptor id.  Read with one
bulk read per array; see :mod:`slimdump.kernel.printk` for the records and
the renderers.
"""

from __future__ import annotations

from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.printk import (
    DESC_COMMITTED,
    DESC_FINALIZED,
    MAX_BUFFER_BYTES,
    MAX_COUNT_BITS,
    KernelLog,
    Keys,
    LogRecord,
    check_fits,
    facility_level_flags,
    uint_reader,
)


def read_ringbuffer(mem: KernelMemory) -> KernelLog:
    """Walk the descriptor ring from tail_id to head_id (inclusive).

    Each id's slot is ``id % count``; a descriptor is used only when it
    still holds that id in committed or finalized state (anything else was
    reserved, recycled or overwritten).  Its text block is located by the
    ``text_blk_lpos`` positions modulo the data ring size: begin == next is
    a data-less block, begin > next a block that wrapped and sits at the
    ring's start; the block starts with the descriptor id (an unsigned long)
    and the text is ``min(text_len, next - begin)`` bytes after it.
    """
    keys = Keys(mem)
    path = mem.path
    get = uint_reader(mem.endian)
    long_size = mem.pointer_size
    id_mask = (1 << (long_size * 8 - 2)) - 1

    rb_size = keys.size("printk_ringbuffer")
    desc_ring = keys.offset("printk_ringbuffer.desc_ring")
    data_ring = keys.offset("printk_ringbuffer.text_data_ring")
    counter = keys.optional_offset("atomic_long_t.counter") or 0
    o_count_bits = desc_ring + keys.offset("prb_desc_ring.count_bits")
    o_descs = desc_ring + keys.offset("prb_desc_ring.descs")
    o_infos = desc_ring + keys.offset("prb_desc_ring.infos")
    o_head = desc_ring + keys.offset("prb_desc_ring.head_id") + counter
    o_tail = desc_ring + keys.offset("prb_desc_ring.tail_id") + counter
    o_size_bits = data_ring + keys.offset("prb_data_ring.size_bits")
    o_data = data_ring + keys.offset("prb_data_ring.data")
    for name, end in (("prb_desc_ring.count_bits", o_count_bits + 4),
                      ("prb_desc_ring.descs", o_descs + long_size),
                      ("prb_desc_ring.infos", o_infos + long_size),
                      ("prb_desc_ring.head_id", o_head + long_size),
                      ("prb_desc_ring.tail_id", o_tail + long_size),
                      ("prb_data_ring.size_bits", o_size_bits + 4),
                      ("prb_data_ring.data", o_data + long_size)):
        check_fits(path, f"printk_ringbuffer ({name})", end, rb_size)

    desc_size = keys.size("prb_desc")
    o_state = keys.offset("prb_desc.state_var") + counter
    o_lpos = keys.offset("prb_desc.text_blk_lpos")
    o_begin = o_lpos + keys.offset("prb_data_blk_lpos.begin")
    o_next = o_lpos + keys.offset("prb_data_blk_lpos.next")
    for name, end in (("state_var", o_state), ("text_blk_lpos.begin", o_begin),
                      ("text_blk_lpos.next", o_next)):
        check_fits(path, f"prb_desc ({name})", end + long_size, desc_size)

    info_size = keys.size("printk_info")
    o_seq = keys.offset("printk_info.seq")
    o_ts = keys.offset("printk_info.ts_nsec")
    o_text_len = keys.offset("printk_info.text_len")
    o_caller = keys.optional_offset("printk_info.caller_id")
    for name, end in (("seq", o_seq + 8), ("ts_nsec", o_ts + 8), ("text_len", o_text_len + 2),
                      ("caller_id", (o_caller or 0) + 4)):
        check_fits(path, f"printk_info ({name})", end, info_size)
    # facility and the flags/level byte follow text_len (u16) in every
    # printk_info; VMCOREINFO does not export them, so trust the layout only
    # when caller_id sits right after them as in the kernel's definition.
    has_level = o_caller is not None and o_caller == o_text_len + 4

    rb = mem.pointer(keys.symbol("prb"))
    ring = mem.read(rb, rb_size)
    count_bits = get(ring, o_count_bits, 4)
    size_bits = get(ring, o_size_bits, 4)
    if count_bits > MAX_COUNT_BITS:
        raise KernelViewError(path, f"printk ring buffer at {rb:#x} is corrupt: "
                                    f"descriptor count_bits {count_bits} > {MAX_COUNT_BITS}")
    if size_bits > MAX_COUNT_BITS:
        raise KernelViewError(path, f"printk ring buffer at {rb:#x} is corrupt: data ring of "
                                    f"2^{size_bits} bytes (more than 1 GiB)")
    count = 1 << count_bits
    data_size = 1 << size_bits
    if count * (desc_size + info_size) > MAX_BUFFER_BYTES:
        raise KernelViewError(path, f"printk ring buffer at {rb:#x} is corrupt: {count} "
                                    f"descriptors take more than 1 GiB")
    head_id = get(ring, o_head, long_size) & id_mask
    tail_id = get(ring, o_tail, long_size) & id_mask

    descs = memoryview(mem.read(get(ring, o_descs, long_size), count * desc_size))
    infos = memoryview(mem.read(get(ring, o_infos, long_size), count * info_size))
    data = memoryview(mem.read(get(ring, o_data, long_size), data_size))

    problems: list[str] = []
    span = (head_id - tail_id) & id_mask
    if span >= count:
        # A sane ring never holds more ids than slots; only the newest
        # `count` ids can still own a slot, so start there.
        problems.append(f"descriptor ids tail {tail_id:#x} .. head {head_id:#x} span more "
                        f"than the {count} slots; reading the newest {count}")
        span = count - 1

    records: list[LogRecord] = []
    for step in range(span + 1):
        desc_id = (head_id - span + step) & id_mask
        slot = desc_id % count
        d = slot * desc_size
        state_var = get(descs, d + o_state, long_size)
        state = state_var >> (long_size * 8 - 2)
        if state_var & id_mask != desc_id or state not in (DESC_COMMITTED, DESC_FINALIZED):
            continue
        i = slot * info_size
        ts = get(infos, i + o_ts, 8)
        seq = get(infos, i + o_seq, 8)
        caller = get(infos, i + o_caller, 4) if o_caller is not None else None
        facility = level = flags = None
        if has_level:
            facility, level, flags = facility_level_flags(infos, i + o_text_len + 2, mem.endian)
        begin = get(descs, d + o_begin, long_size) % data_size
        end = get(descs, d + o_next, long_size) % data_size
        if begin == end:
            records.append(LogRecord(ts, b"", caller, level, facility, seq, flags,
                                     has_data=False))
            continue
        if begin > end:                       # wrapped: the block sits at offset 0
            begin = 0
        begin += long_size                    # skip the block's descriptor id
        length = min(get(infos, i + o_text_len, 2), max(end - begin, 0))
        records.append(LogRecord(ts, bytes(data[begin:begin + length]), caller, level,
                                 facility, seq, flags))
    return KernelLog("lockless", records, problems=problems)
