/*
 * slimdump.writers._pagepack: the one hot loop of a filtered dump, in C.
 *
 * pack(data, page_size, flag) takes whole pages back to back and returns
 * (zero, flags, sizes, blob):
 *
 *   zero   one byte per page, 1 where the page is all zero bytes;
 *   flags  native uint32 per non-zero page: the codec's descriptor flag when
 *          the compressed form is strictly smaller than a page, else 0;
 *   sizes  native uint32 per non-zero page: the stored size;
 *   blob   the stored bytes of the non-zero pages back to back.
 *
 * flag selects the codec by its kdump descriptor flag: 0 stores pages as
 * they are, 0x1 a zlib stream, 0x2 LZO1X.  How a page is compressed is
 * pack()'s fourth argument, exact:
 *
 *   exact=1  the reference compressors makedumpfile calls: zlib's deflate at
 *            level 1 (the bytes of compress2(..., Z_BEST_SPEED)) and liblzo2's
 *            LZO1X-1.  That is exactly what the pure-Python path in
 *            slimdump.writers.pagepack.compress_pages produces, and, given
 *            makedumpfile's bitmaps, makedumpfile's file; tests hold all three
 *            to each other.
 *   exact=0  (the writers' default) the same formats, made faster:
 *            - LZO1X-1 with a dictionary sized to the page.  lzo1x_1_compress
 *              clears a 2^14-entry dictionary before every call; for a 4 KiB
 *              page that memset is larger than the page and, where the capture
 *              kernel runs under emulation, most of the work.
 *              lzo1x_1_12_compress (2^12 entries) writes the same format,
 *              0.2-0.5% larger on kernel memory.  Pages above 4 KiB keep
 *              lzo1x_1.
 *            - zlib streams from libdeflate at level 1, where it was found
 *              at build time (HAVE_LIBDEFLATE): a valid zlib stream that
 *              zlib's inflate (crash, makedumpfile, drgn) reads, in 0.6x of
 *              zlib's level-1 time natively and 0.45x under emulation, 1.7-2.3%
 *              larger on kernel memory.  (Level 2 is 3% smaller than zlib's
 *              level 1 but only 1.4x faster: in the capture kernel its -c -d 31
 *              margin over makedumpfile was inside the noise.)  Without
 *              libdeflate, zlib's level 1 as for exact=1.
 *   bench/results/compressors.md has the measurements.
 *
 * The work runs without the GIL, so the writer's threads compress on every
 * core; per-page Python calls cost more than LZO itself.
 *
 * zlib streams reuse one deflate state, reset between pages: deflateReset
 * leaves the state exactly as deflateInit does, so the bytes are those of
 * compress2(), without allocating 256 KiB per page.
 *
 * zero_bits(data, page_size) tells which whole pages are all zero, as packed
 * bits (bit i of byte k for page 8k + i, like the dump bitmaps), without the
 * GIL: the zero pass of -E output.
 *
 * descriptors(...) turns pack()'s result into the task's page descriptors
 * (24 bytes each, in the dump's byte order), the same bytes as the Python
 * slimdump.writers.pagepack.descriptors_python; see there for the arguments.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include <lzo/lzo1x.h>
#include <zlib.h>
#ifdef HAVE_LIBDEFLATE
#include <libdeflate.h>
#define LIBDEFLATE_LEVEL 1
#endif

#define FLAG_ZLIB 0x1
#define FLAG_LZO 0x2
/* the largest page LZO1X-1(12) serves; its dictionary has one entry per byte */
#define LZO_SMALL_PAGE 4096

/* How one pack() call compresses: the codec and the state it reuses. */
struct packer {
    int flag;
    int lzo12;              /* LZO1X-1(12): not exact, pages up to LZO_SMALL_PAGE */
    void *wrkmem;           /* LZO */
    z_stream zs;            /* zlib's deflate */
    int zs_ready;
#ifdef HAVE_LIBDEFLATE
    struct libdeflate_compressor *ld;
#endif
};

static int
page_is_zero(const unsigned char *page, Py_ssize_t size)
{
    Py_ssize_t n = size / 8;
    uint64_t acc = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t word;
        memcpy(&word, page + 8 * i, 8);     /* the buffer need not be aligned */
        acc |= word;
        if ((i & 63) == 63 && acc)
            return 0;
    }
    return acc == 0;
}

/* Set up p for flag (0, FLAG_ZLIB or FLAG_LZO); 0 on success, -1 when out
 * of memory.  *bound grows to the largest compressed size. */
static int
packer_init(struct packer *p, int flag, int exact, size_t page_size, size_t *bound)
{
    memset(p, 0, sizeof(*p));
    p->flag = flag;
    p->lzo12 = !exact && page_size <= LZO_SMALL_PAGE;
    if (flag == FLAG_LZO) {
        p->wrkmem = PyMem_RawMalloc(p->lzo12 ? LZO1X_1_12_MEM_COMPRESS : LZO1X_1_MEM_COMPRESS);
        return p->wrkmem ? 0 : -1;
    }
    if (flag != FLAG_ZLIB)
        return 0;
#ifdef HAVE_LIBDEFLATE
    if (!exact) {
        p->ld = libdeflate_alloc_compressor(LIBDEFLATE_LEVEL);
        return p->ld ? 0 : -1;
    }
#endif
    if (deflateInit(&p->zs, Z_BEST_SPEED) != Z_OK)
        return -1;
    p->zs_ready = 1;
    size_t zbound = deflateBound(&p->zs, (uLong)page_size);
    if (zbound > *bound)
        *bound = zbound;
    return 0;
}

static void
packer_free(struct packer *p)
{
    if (p->zs_ready)
        deflateEnd(&p->zs);
#ifdef HAVE_LIBDEFLATE
    if (p->ld)
        libdeflate_free_compressor(p->ld);
#endif
    PyMem_RawFree(p->wrkmem);
}

/* Compress one page into scratch (scratch_size bytes); the stored size, or 0
 * when the compressed form is not strictly smaller than the page or the
 * library failed (the page is then stored as is, as makedumpfile does). */
static size_t
compress_one(struct packer *p, const unsigned char *page, size_t page_size,
             unsigned char *scratch, size_t scratch_size)
{
    if (p->flag == FLAG_LZO) {
        lzo_uint out_len = scratch_size;
        int rc = p->lzo12 ? lzo1x_1_12_compress(page, page_size, scratch, &out_len, p->wrkmem)
                          : lzo1x_1_compress(page, page_size, scratch, &out_len, p->wrkmem);
        if (rc != LZO_E_OK)
            return 0;
        return out_len < page_size ? out_len : 0;
    }
    if (p->flag != FLAG_ZLIB)
        return 0;
#ifdef HAVE_LIBDEFLATE
    if (p->ld)      /* 0 when it does not fit in page_size - 1 bytes */
        return libdeflate_zlib_compress(p->ld, page, page_size, scratch, page_size - 1);
#endif
    z_stream *zs = &p->zs;
    if (deflateReset(zs) != Z_OK)
        return 0;
    zs->next_in = (Bytef *)page;
    zs->avail_in = (uInt)page_size;
    zs->next_out = scratch;
    zs->avail_out = (uInt)scratch_size;
    if (deflate(zs, Z_FINISH) != Z_STREAM_END)
        return 0;
    return zs->total_out < page_size ? zs->total_out : 0;
}

static PyObject *
pack(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t page_size;
    int flag, exact = 1;
    if (!PyArg_ParseTuple(args, "y*ni|p:pack", &view, &page_size, &flag, &exact))
        return NULL;

    PyObject *zero = NULL, *flags = NULL, *sizes = NULL, *blob = NULL, *result = NULL;
    unsigned char *scratch = NULL;
    struct packer packer;
    int packer_ready = 0;

    if (page_size < 1024 || (page_size & (page_size - 1)) || page_size > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "page_size must be a power of two from 1024 to 16M");
        goto done;
    }
    if (view.len % page_size) {
        PyErr_SetString(PyExc_ValueError, "data is not a whole number of pages");
        goto done;
    }
    if (flag != 0 && flag != FLAG_ZLIB && flag != FLAG_LZO) {
        PyErr_Format(PyExc_ValueError, "no C codec for descriptor flag %#x", flag);
        goto done;
    }
    Py_ssize_t count = view.len / page_size;
    zero = PyBytes_FromStringAndSize(NULL, count);
    flags = PyBytes_FromStringAndSize(NULL, count * 4);
    sizes = PyBytes_FromStringAndSize(NULL, count * 4);
    blob = PyBytes_FromStringAndSize(NULL, view.len);
    if (!zero || !flags || !sizes || !blob)
        goto done;

    /* LZO1X worst case: n + n/16 + 64 + 3; deflateBound covers zlib. */
    size_t scratch_size = (size_t)page_size + (size_t)page_size / 16 + 64 + 3;
    if (packer_init(&packer, flag, exact, (size_t)page_size, &scratch_size) < 0) {
        packer_free(&packer);
        PyErr_NoMemory();
        goto done;
    }
    packer_ready = 1;
    scratch = PyMem_RawMalloc(scratch_size);
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }

    const unsigned char *in = view.buf;
    unsigned char *zero_out = (unsigned char *)PyBytes_AS_STRING(zero);
    uint32_t *flags_out = (uint32_t *)PyBytes_AS_STRING(flags);
    uint32_t *sizes_out = (uint32_t *)PyBytes_AS_STRING(sizes);
    unsigned char *blob_out = (unsigned char *)PyBytes_AS_STRING(blob);
    Py_ssize_t stored = 0, nonzero = 0;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *page = in + i * page_size;
        if (page_is_zero(page, page_size)) {
            zero_out[i] = 1;
            continue;
        }
        zero_out[i] = 0;
        size_t packed = flag ? compress_one(&packer, page, (size_t)page_size, scratch,
                                            scratch_size) : 0;
        if (packed) {
            memcpy(blob_out + stored, scratch, packed);
            flags_out[nonzero] = (uint32_t)flag;
            sizes_out[nonzero] = (uint32_t)packed;
            stored += (Py_ssize_t)packed;
        } else {
            memcpy(blob_out + stored, page, page_size);
            flags_out[nonzero] = 0;
            sizes_out[nonzero] = (uint32_t)page_size;
            stored += page_size;
        }
        nonzero++;
    }
    Py_END_ALLOW_THREADS

    if (_PyBytes_Resize(&flags, nonzero * 4) < 0 || _PyBytes_Resize(&sizes, nonzero * 4) < 0
        || _PyBytes_Resize(&blob, stored) < 0)
        goto done;
    result = PyTuple_Pack(4, zero, flags, sizes, blob);

done:
    if (packer_ready)
        packer_free(&packer);
    PyMem_RawFree(scratch);
    Py_XDECREF(zero);
    Py_XDECREF(flags);
    Py_XDECREF(sizes);
    Py_XDECREF(blob);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
zero_bits(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t page_size;
    if (!PyArg_ParseTuple(args, "y*n:zero_bits", &view, &page_size))
        return NULL;
    PyObject *out = NULL;
    if (page_size < 8 || (page_size & (page_size - 1)) || view.len % page_size) {
        PyErr_SetString(PyExc_ValueError, "data must be whole pages of a power-of-two size");
        goto done;
    }
    Py_ssize_t count = view.len / page_size;
    out = PyBytes_FromStringAndSize(NULL, (count + 7) / 8);
    if (!out)
        goto done;
    unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *in = view.buf;
    Py_BEGIN_ALLOW_THREADS
    memset(bits, 0, (count + 7) / 8);
    for (Py_ssize_t i = 0; i < count; i++)
        if (page_is_zero(in + i * page_size, page_size))
            bits[i / 8] |= (unsigned char)(1u << (i % 8));
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&view);
    return out;
}

static void
put64(unsigned char *p, uint64_t v, int big)
{
    for (int i = 0; i < 8; i++)
        p[big ? 7 - i : i] = (unsigned char)(v >> (8 * i));
}

static void
put32(unsigned char *p, uint32_t v, int big)
{
    for (int i = 0; i < 4; i++)
        p[big ? 3 - i : i] = (unsigned char)(v >> (8 * i));
}

static PyObject *
descriptors(PyObject *self, PyObject *args)
{
    Py_buffer zero, flags, sizes;
    long long data_at, zero_offset;
    unsigned int page_size, zero_flag, zero_size;
    int big, share;
    if (!PyArg_ParseTuple(args, "y*y*y*LLIIIpp:descriptors", &zero, &flags, &sizes, &data_at,
                          &zero_offset, &page_size, &zero_flag, &zero_size, &big, &share))
        return NULL;
    PyObject *out = NULL, *result = NULL;
    Py_ssize_t count = zero.len, nonzero = 0;
    const unsigned char *z = zero.buf;
    for (Py_ssize_t i = 0; i < count; i++)
        nonzero += !z[i];
    if (flags.len != 4 * nonzero || sizes.len != 4 * nonzero) {
        PyErr_SetString(PyExc_ValueError, "flags and sizes must hold one uint32 per non-zero page");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, 24 * count);
    if (!out)
        goto done;
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(out);
    const uint32_t *f = flags.buf, *sz = sizes.buf;   /* native, as pack() made them */
    uint64_t at = (uint64_t)data_at;
    Py_ssize_t k = 0, compressed = 0;
    for (Py_ssize_t i = 0; i < count; i++, d += 24) {
        uint64_t off;
        uint32_t size, flag;
        if (z[i] && share) {
            off = (uint64_t)zero_offset, size = page_size, flag = 0;
        } else if (z[i]) {
            off = at, size = zero_size, flag = zero_flag;
            at += zero_size;
        } else {
            uint32_t fk, sk;
            memcpy(&fk, f + k, 4);
            memcpy(&sk, sz + k, 4);
            k++;
            off = at, size = sk, flag = fk;
            at += sk;
        }
        compressed += flag != 0;
        put64(d, off, big);
        put32(d + 8, size, big);
        put32(d + 12, flag, big);
        memset(d + 16, 0, 8);
    }
    result = Py_BuildValue("(OLn)", out, (long long)(at - (uint64_t)data_at), compressed);

done:
    Py_XDECREF(out);
    PyBuffer_Release(&zero);
    PyBuffer_Release(&flags);
    PyBuffer_Release(&sizes);
    return result;
}

static PyMethodDef methods[] = {
    {"pack", pack, METH_VARARGS,
     "pack(data, page_size, flag, exact=True) -> (zero, flags, sizes, blob)\n\n"
     "Zero-test whole pages and store the others as kdump-compressed descriptors\n"
     "want them: flag 0 (as is), 0x1 (a zlib stream) or 0x2 (LZO1X).  exact:\n"
     "makedumpfile's compressors (zlib level 1, LZO1X-1); otherwise faster ones\n"
     "writing the same formats (see ZLIB_COMPRESSOR).  Runs without the GIL."},
    {"zero_bits", zero_bits, METH_VARARGS,
     "zero_bits(data, page_size) -> bytes\n\n"
     "Packed bits, 1 for each whole page of data that is all zero; without the GIL."},
    {"descriptors", descriptors, METH_VARARGS,
     "descriptors(zero, flags, sizes, data_at, zero_offset, page_size, zero_flag,\n"
     "            zero_size, big_endian, share_zero) -> (descs, stored, compressed)\n\n"
     "The page descriptors of one packed task; see\n"
     "slimdump.writers.pagepack.descriptors_python."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pagepack",
    "Page zero-testing and compression for kdump-compressed files, without the GIL.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__pagepack(void)
{
    if (lzo_init() != LZO_E_OK) {
        PyErr_SetString(PyExc_ImportError, "lzo_init() failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "ZLIB", FLAG_ZLIB) < 0
              || PyModule_AddIntConstant(m, "LZO", FLAG_LZO) < 0
#ifdef HAVE_LIBDEFLATE
              || PyModule_AddStringConstant(m, "ZLIB_COMPRESSOR", "libdeflate "
                                            LIBDEFLATE_VERSION_STRING) < 0
#else
              || PyModule_AddStringConstant(m, "ZLIB_COMPRESSOR", "zlib " ZLIB_VERSION) < 0
#endif
              )) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
