/*
 * slimdump.kernel._pageclass: which page frames makedumpfile's dump level
 * drops, judged from each page's struct page.  The one implementation of
 * these rules; the Python driver (slimdump.kernel.dump_level) finds and
 * reads the struct pages and hands them over a chunk at a time.
 *
 * The walk goes the way makedumpfile's __exclude_unnecessary_pages() does:
 * pfn by pfn, a compound tail is never judged itself, the first rule that
 * fires decides, and after a rule drops a block the walk goes on at its end.
 *
 * A window is the pfns [lo, end) walked (lo <= start: the look-back that
 * lets buddy blocks covering `start` begin inside the window) plus one more
 * struct page (pfn end: the first tail of a head at end - 1).  The caller
 * keeps two per-window arrays:
 *
 *   flags  one byte per pfn of [lo, end + 1): FL_INSEG (the pfn's first byte
 *          is in a PT_LOAD: the walk judges it), FL_PRESENT (1st bitmap),
 *          FL_OK (its struct page was read whole);
 *   cat    one byte per pfn of [start, end): the category painted by the
 *          dropped blocks (0 = kept).
 *
 * mark(flags, lo, intervals, bit)    ORs bit into flags over pfn intervals;
 * walk(params, level, buf, buf_pfn0, c0, c1, lo, end, until, flags, cat,
 *      start, ok, ranges, outside) -> (n_outside, until)
 *          walks pfns [c0, min(c1, end)) whose struct pages are in buf (pfn
 *          buf_pfn0 first), after marking the pfn intervals `ok` readable;
 *          `until` (the end of the last dropped block) is the walk's state,
 *          carried from one chunk to the next.  A readable tail whose
 *          compound_head points before lo (a compound page larger than the
 *          look-back, e.g. a 1 GiB hugetlb page) is recorded in `outside`
 *          (int64 head pfns, consecutive duplicates dropped; n_outside of
 *          them): the caller judges those heads and, if one drops a block,
 *          walks the window again with that block painted and `until` past it;
 * finish(flags, lo, cat, start, end) -> (present, keep, counts)
 *          the 1st bitmap and present & ~dropped, packed little-endian bit
 *          order (bit i of byte k: pfn start + 8k + i), and the pages per
 *          category 1..7 among present, readable pages (counts[0]: present
 *          pages whose struct page could not be read; they are kept).
 *
 * params is an int64 array in the order of the module's PARAMS tuple (the
 * VMCOREINFO key each comes from; -1: the kernel does not export it), built
 * by slimdump.kernel.struct_page.  Only little-endian 64-bit struct pages
 * are read (the caller refuses others).  Every field is read with memcpy,
 * so offsets need no alignment; offsets and bit numbers are validated here
 * too, and every shift is bounded, so hostile dumps cannot cause undefined
 * behaviour.  The walk runs without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "pageclass_rules.h"

static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS
                                               : PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Format(PyExc_TypeError, "_pageclass: %s must be a contiguous%s buffer", what,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

/* OR `bit` into flags (pfn lo first) over the int64 [a, b) pairs of iv. */
static void
mark_intervals(unsigned char *flags, int64_t nflags, int64_t lo, const int64_t *iv,
               Py_ssize_t npairs, unsigned char bit)
{
    for (Py_ssize_t k = 0; k < npairs; k++) {
        int64_t a = iv[2 * k], b = iv[2 * k + 1];
        if (a < lo)
            a = lo;
        if (b > lo + nflags)
            b = lo + nflags;
        for (int64_t p = a; p < b; p++)
            flags[p - lo] |= bit;
    }
}

static PyObject *
py_mark(PyObject *self, PyObject *args)
{
    PyObject *flags_o, *iv_o;
    long long lo;
    int bit;
    Py_buffer flags, iv;
    if (!PyArg_ParseTuple(args, "OLOi", &flags_o, &lo, &iv_o, &bit))
        return NULL;
    if (get_buffer(flags_o, &flags, 1, "flags") < 0)
        return NULL;
    if (get_buffer(iv_o, &iv, 0, "intervals") < 0) {
        PyBuffer_Release(&flags);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    mark_intervals(flags.buf, flags.len, lo, iv.buf, iv.len / 16, (unsigned char)bit);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&iv);
    PyBuffer_Release(&flags);
    Py_RETURN_NONE;
}

static PyObject *
py_walk(PyObject *self, PyObject *args)
{
    PyObject *params_o, *buf_o, *flags_o, *cat_o, *ok_o, *ranges_o, *outside_o;
    int level;
    long long buf_pfn0, c0, c1, lo, end, until, start;
    if (!PyArg_ParseTuple(args, "OiOLLLLLLOOLOOO", &params_o, &level, &buf_o, &buf_pfn0,
                          &c0, &c1, &lo, &end, &until, &flags_o, &cat_o, &start, &ok_o,
                          &ranges_o, &outside_o))
        return NULL;
    Py_buffer bp, bb, bf, bc, bo, br, bx;
    Layout L;
    PyObject *result = NULL;
    if (get_buffer(params_o, &bp, 0, "params") < 0)
        return NULL;
    if (parse_layout(bp.buf, bp.len / 8, &L) < 0) {
        PyBuffer_Release(&bp);
        return NULL;
    }
    PyBuffer_Release(&bp);
    if (get_buffer(buf_o, &bb, 0, "buf") < 0)
        return NULL;
    if (get_buffer(flags_o, &bf, 1, "flags") < 0)
        goto out_b;
    if (get_buffer(cat_o, &bc, 1, "cat") < 0)
        goto out_f;
    if (get_buffer(ok_o, &bo, 0, "ok") < 0)
        goto out_c;
    if (get_buffer(ranges_o, &br, 0, "ranges") < 0)
        goto out_o;
    if (get_buffer(outside_o, &bx, 1, "outside") < 0)
        goto out_r;

    int64_t nbuf = bb.len / L.size;             /* struct pages in buf */
    int64_t nflags = bf.len, ncat = bc.len;
    if (c1 > end)
        c1 = end;
    if (c0 < lo || buf_pfn0 > c0 || c1 - buf_pfn0 > nbuf || c1 - lo > nflags
        || start < lo || end - start > ncat || end + 1 - lo > nflags) {
        PyErr_SetString(PyExc_ValueError, "_pageclass.walk: window and buffers disagree");
        goto out_x;
    }

    Py_ssize_t noutside = 0, max_outside = bx.len / 8;
    Py_BEGIN_ALLOW_THREADS
    unsigned char *flags = bf.buf, *cat = bc.buf;
    int64_t *outside = bx.buf;
    const unsigned char *pages = bb.buf;
    const uint64_t *ranges = br.buf;
    Py_ssize_t nranges = br.len / 24, ri = 0;
    Prefilter f;
    make_prefilter(&L, level, &f);
    mark_intervals(flags, nflags, lo, bo.buf, bo.len / 16, FL_OK);

    for (int64_t p = c0; p < c1; p++) {
        unsigned char fl = flags[p - lo];
        if (!(fl & FL_OK))
            continue;
        const unsigned char *cur = pages + (p - buf_pfn0) * L.size;
        if (L.off_chead != -1) {
            uint64_t chead = rd64(cur + L.off_chead);
            if (chead & 1) {
                /* a tail: is its head before the window?  (the head's
                 * mem_map base is the tail's section's, as for the kernel) */
                while (ri < nranges && (int64_t)ranges[3 * ri + 1] <= p)
                    ri++;
                if (ri < nranges && (int64_t)ranges[3 * ri] <= p && ranges[3 * ri + 2] != 0) {
                    uint64_t delta = (chead - 1) - ranges[3 * ri + 2];
                    if (delta % (uint64_t)L.size == 0) {
                        int64_t hp = (int64_t)(delta / (uint64_t)L.size);
                        if (hp >= 0 && hp < lo && p - hp < MAX_COMPOUND_SPAN
                            && (noutside == 0 || outside[noutside - 1] != hp)
                            && noutside < max_outside)
                            outside[noutside++] = hp;
                    }
                }
                continue;
            }
        }
        if (p < until || !(fl & FL_INSEG) || !candidate(&L, &f, cur))
            continue;
        int next_ok = p + 1 - buf_pfn0 < nbuf && (flags[p + 1 - lo] & FL_OK);
        int64_t len;
        int code = judge(&L, level, p, cur, next_ok ? cur + L.size : NULL, &len);
        if (!code)
            continue;
        until = p + len;
        int64_t a = p > start ? p : start, b = until < end ? until : end;
        if (a < b)
            memset(cat + (a - start), code, (size_t)(b - a));
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(nL)", noutside, (long long)until);

out_x:
    PyBuffer_Release(&bx);
out_r:
    PyBuffer_Release(&br);
out_o:
    PyBuffer_Release(&bo);
out_c:
    PyBuffer_Release(&bc);
out_f:
    PyBuffer_Release(&bf);
out_b:
    PyBuffer_Release(&bb);
    return result;
}

static PyObject *
py_finish(PyObject *self, PyObject *args)
{
    PyObject *flags_o, *cat_o;
    long long lo, start, end;
    if (!PyArg_ParseTuple(args, "OLOLL", &flags_o, &lo, &cat_o, &start, &end))
        return NULL;
    Py_buffer bf, bc;
    if (get_buffer(flags_o, &bf, 0, "flags") < 0)
        return NULL;
    if (get_buffer(cat_o, &bc, 0, "cat") < 0) {
        PyBuffer_Release(&bf);
        return NULL;
    }
    PyObject *present = NULL, *keep = NULL, *result = NULL;
    int64_t n = end - start;
    if (start < lo || n < 0 || n > bc.len || end - lo > bf.len) {
        PyErr_SetString(PyExc_ValueError, "_pageclass.finish: window and buffers disagree");
        goto out;
    }
    Py_ssize_t nbytes = (Py_ssize_t)((n + 7) / 8);
    present = PyBytes_FromStringAndSize(NULL, nbytes);
    keep = PyBytes_FromStringAndSize(NULL, nbytes);
    if (present == NULL || keep == NULL)
        goto out;
    long long counts[8] = {0};
    Py_BEGIN_ALLOW_THREADS
    unsigned char *pb = (unsigned char *)PyBytes_AS_STRING(present);
    unsigned char *kb = (unsigned char *)PyBytes_AS_STRING(keep);
    const unsigned char *flags = (const unsigned char *)bf.buf + (start - lo);
    const unsigned char *cat = bc.buf;
    memset(pb, 0, (size_t)nbytes);
    memset(kb, 0, (size_t)nbytes);
    for (int64_t i = 0; i < n; i++) {
        unsigned char fl = flags[i];
        if (!(fl & FL_PRESENT))
            continue;
        unsigned char bit = (unsigned char)(1u << (i & 7));
        pb[i >> 3] |= bit;
        if (!(fl & FL_OK)) {
            counts[0]++;                    /* unreadable: kept */
            kb[i >> 3] |= bit;
        } else if (cat[i] && cat[i] < 8) {
            counts[cat[i]]++;
        } else {
            kb[i >> 3] |= bit;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(OO(LLLLLLLL))", present, keep, counts[0], counts[1], counts[2],
                           counts[3], counts[4], counts[5], counts[6], counts[7]);
out:
    Py_XDECREF(present);
    Py_XDECREF(keep);
    PyBuffer_Release(&bc);
    PyBuffer_Release(&bf);
    return result;
}

static PyMethodDef methods[] = {
    {"mark", py_mark, METH_VARARGS,
     "mark(flags, lo, intervals, bit): OR bit into flags[p - lo] for the pfns of the "
     "int64 [a, b) pairs in intervals."},
    {"walk", py_walk, METH_VARARGS,
     "walk(params, level, buf, buf_pfn0, c0, c1, lo, end, until, flags, cat, start, ok, "
     "ranges, outside) -> (n_outside, until): judge pfns [c0, min(c1, end)) in "
     "makedumpfile's order."},
    {"finish", py_finish, METH_VARARGS,
     "finish(flags, lo, cat, start, end) -> (present, keep, counts): packed bitmaps and "
     "per-category counts (counts[0]: present pages with unreadable struct page)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pageclass",
    "makedumpfile's dump-level rules over struct pages (see slimdump.kernel.dump_level).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__pageclass(void)
{
    PyObject *m = PyModule_Create(&module);
    PyObject *params = NULL, *categories = NULL;
    if (m == NULL)
        return NULL;
    if ((params = PyTuple_New(P_COUNT)) == NULL
        || (categories = PyTuple_New(NCATEGORIES)) == NULL)
        goto fail;
    for (int i = 0; i < P_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(param_names[i]);
        if (name == NULL)
            goto fail;
        PyTuple_SET_ITEM(params, i, name);
    }
    for (int i = 0; i < NCATEGORIES; i++) {
        PyObject *name = PyUnicode_FromString(category_names[i]);
        if (name == NULL)
            goto fail;
        PyTuple_SET_ITEM(categories, i, name);
    }
    if (PyModule_AddObject(m, "PARAMS", params) < 0)
        goto fail;
    params = NULL;
    if (PyModule_AddObject(m, "CATEGORIES", categories) < 0)
        goto fail;
    categories = NULL;
    if (PyModule_AddIntConstant(m, "PGMM_CACHED", PGMM_CACHED) < 0
        || PyModule_AddIntConstant(m, "FL_INSEG", FL_INSEG) < 0
        || PyModule_AddIntConstant(m, "FL_PRESENT", FL_PRESENT) < 0
        || PyModule_AddIntConstant(m, "ORDER_BYTE", ORDER_BYTE) < 0
        || PyModule_AddIntConstant(m, "ORDER_FLAGS1", ORDER_FLAGS1) < 0
        || PyModule_AddIntConstant(m, "HUGETLB_DTOR", HUGE_DTOR) < 0
        || PyModule_AddIntConstant(m, "HUGETLB_TAILFLAG", HUGE_TAILFLAG) < 0
        || PyModule_AddIntConstant(m, "HUGETLB_PAGE_TYPE", HUGE_PAGE_TYPE) < 0
        || PyModule_AddIntConstant(m, "BUDDY_FLAG", BUDDY_FLAG) < 0
        || PyModule_AddIntConstant(m, "BUDDY_PAGE_TYPE", BUDDY_PAGE_TYPE) < 0)
        goto fail;
    return m;
fail:
    Py_XDECREF(params);
    Py_XDECREF(categories);
    Py_DECREF(m);
    return NULL;
}
