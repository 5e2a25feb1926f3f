/*
 * slimdump.kernel._pageclass: page classification by dump level, in C.
 *
 * The numpy classifier (slimdump.kernel.pages_np) is the reference; this
 * module computes exactly what it computes, for the windows the Python
 * driver (PageClassifier.classify_packed in slimdump.kernel.pages) gives it,
 * without numpy, in one in-order pass over the struct pages, the way
 * makedumpfile walks them: pfn by pfn, a compound tail is never classified
 * itself, and after a rule excludes a block the walk goes on at its end.
 *
 * A window is the pfns [lo, end) walked (lo <= start: the look-back that
 * lets buddy blocks covering `start` begin inside the window) plus one more
 * struct page (pfn end: the first tail of a head at end - 1).  The caller
 * keeps two per-window arrays:
 *
 *   flags  one byte per pfn of [lo, end + 1): FL_INSEG (the pfn's first byte
 *          is in a PT_LOAD: the walk classifies it), FL_PRESENT (1st bitmap),
 *          FL_OK (its struct page was read whole);
 *   cat    one byte per pfn of [start, end): the category code painted by
 *          the excluded blocks (0 = kept).
 *
 * mark(flags, lo, intervals, bit)    ORs bit into flags over pfn intervals;
 * walk(params, level, buf, buf_pfn0, c0, c1, lo, end, until, flags, cat,
 *      start, ok, ranges) -> (status, until)
 *                                    walks pfns [c0, min(c1, end)) whose
 *          struct pages are in buf (pfn buf_pfn0 first), after marking the
 *          pfn intervals `ok` readable; `until` is the walk's state (the end
 *          of the last excluded block) carried from one chunk to the next.
 *          status 1: a readable compound tail points to a head before lo
 *          (a compound page larger than the look-back, e.g. a 1 GiB hugetlb
 *          page): the caller must classify this window another way;
 * finish(flags, lo, cat, start, end) -> (present, keep, counts)
 *          the 1st bitmap and present & ~excluded, packed little-endian bit
 *          order (bit i of byte k: pfn start + 8k + i), and the pages per
 *          category code 1..7 among present, readable pages (counts[0]: the
 *          present pages whose struct page could not be read).
 *
 * params is an int64 array in the order of the P_* indices below (-1: the
 * kernel does not export it).  Only little-endian 64-bit struct pages are
 * handled (the caller checks; others go to numpy).  Every field is read
 * with memcpy, so offsets need no alignment; offsets and bit numbers are
 * validated here too, and every shift is bounded, so hostile dumps cannot
 * cause undefined behaviour.  The walk runs without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

enum {
    P_SIZE, P_OFF_FLAGS, P_OFF_MAPPING, P_OFF_MAPCOUNT, P_OFF_PRIVATE, P_OFF_CHEAD,
    P_ORDER_SRC, P_ORDER_OFF, P_HUGE_SRC, P_DTOR_OFF, P_HUGE_VALUE, P_HEAD_MASK,
    P_PG_LRU, P_PG_PRIVATE, P_PG_SWAPCACHE, P_PG_SWAPBACKED, P_PG_SLAB, P_PG_HWPOISON,
    P_PG_BUDDY, P_PG_HUGETLB,
    P_MC_BUDDY, P_MC_OFFLINE, P_MC_SLAB, P_MC_HUGETLB, P_MC_UNACCEPTED,
    P_MAX_ORDER, P_BUDDY_TEST, P_COUNT
};

/* order sources, hugetlb sources, buddy tests (as the Python side numbers them) */
enum { ORDER_NONE, ORDER_BYTE, ORDER_FLAGS1 };
enum { HUGE_NONE, HUGE_DTOR, HUGE_TAILFLAG, HUGE_MAPCOUNT };
enum { BUDDY_NONE, BUDDY_FLAG, BUDDY_MAPCOUNT };

enum { FREE = 1, UNACCEPTED, CACHE, CACHE_PRIVATE, USER, HWPOISON, OFFLINE };

#define DL_CACHE 2
#define DL_CACHE_PRIVATE 4
#define DL_USER 8
#define DL_FREE 16

#define FL_INSEG 1
#define FL_PRESENT 2
#define FL_OK 4

/* makedumpfile reads struct pages 512 at a time: a head that is the last
 * page of such a block gets no look at its first tail */
#define PGMM_CACHED 512
/* a compound tail further than this from its head is not believed */
#define MAX_COMPOUND_SPAN ((int64_t)1 << 30)

typedef struct {
    int64_t size;
    int64_t off_flags, off_mapping, off_mapcount, off_private, off_chead;
    int order_src, huge_src, buddy_test;
    int64_t order_off, dtor_off;
    uint8_t dtor_value;     /* HUGETLB_PAGE_DTOR's low byte */
    uint64_t head_mask;
    /* one-bit masks of the flags, 0 when the kernel does not export the flag */
    uint64_t lru, private_, swapcache, swapbacked, slab_flag, hwpoison, buddy_flag, hugetlb_flag;
    int has_swapbacked;
    int slab_by_type;       /* NUMBER(PAGE_SLAB_MAPCOUNT_VALUE) exported */
    /* page types compared with _mapcount: has_* is 0 when not exported or
     * when there is no OFFSET(page._mapcount) */
    int has_mc_buddy, has_mc_offline, has_mc_slab, has_mc_hugetlb, has_mc_unaccepted;
    uint32_t mc_buddy, mc_offline, mc_slab, mc_hugetlb, mc_unaccepted;
    int64_t max_order;
} Layout;

static inline uint64_t
rd64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t
rd32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int
field_ok(int64_t off, int64_t width, int64_t size)
{
    return off == -1 || (off >= 0 && off <= size - width);
}

static uint64_t
flag_bit(int64_t bit, int *bad)
{
    if (bit == -1)
        return 0;
    if (bit < 0 || bit > 63) {
        *bad = 1;
        return 0;
    }
    return (uint64_t)1 << bit;
}

/* Fill *L from the params array; 0, or -1 with ValueError set. */
static int
parse_layout(const int64_t *p, Py_ssize_t n, Layout *L)
{
    int bad = 0;
    if (n < P_COUNT) {
        PyErr_SetString(PyExc_ValueError, "_pageclass: too few layout parameters");
        return -1;
    }
    memset(L, 0, sizeof(*L));
    L->size = p[P_SIZE];
    L->off_flags = p[P_OFF_FLAGS];
    L->off_mapping = p[P_OFF_MAPPING];
    L->off_mapcount = p[P_OFF_MAPCOUNT];
    L->off_private = p[P_OFF_PRIVATE];
    L->off_chead = p[P_OFF_CHEAD];
    L->order_src = (int)p[P_ORDER_SRC];
    L->order_off = p[P_ORDER_OFF];
    L->huge_src = (int)p[P_HUGE_SRC];
    L->dtor_off = p[P_DTOR_OFF];
    L->dtor_value = (uint8_t)(p[P_HUGE_VALUE] & 0xFF);
    L->head_mask = (uint64_t)p[P_HEAD_MASK];
    L->lru = flag_bit(p[P_PG_LRU], &bad);
    L->private_ = flag_bit(p[P_PG_PRIVATE], &bad);
    L->swapcache = flag_bit(p[P_PG_SWAPCACHE], &bad);
    L->swapbacked = flag_bit(p[P_PG_SWAPBACKED], &bad);
    L->has_swapbacked = p[P_PG_SWAPBACKED] != -1;
    L->slab_flag = flag_bit(p[P_PG_SLAB], &bad);
    L->hwpoison = flag_bit(p[P_PG_HWPOISON], &bad);
    L->buddy_flag = flag_bit(p[P_PG_BUDDY], &bad);
    L->hugetlb_flag = flag_bit(p[P_PG_HUGETLB], &bad);
    L->slab_by_type = p[P_MC_SLAB] != -1;
    L->max_order = p[P_MAX_ORDER];
    L->buddy_test = (int)p[P_BUDDY_TEST];
    if (L->size < 8 || L->size > (1 << 20) || L->off_flags < 0
        || !field_ok(L->off_flags, 8, L->size) || !field_ok(L->off_mapping, 8, L->size)
        || !field_ok(L->off_mapcount, 4, L->size) || !field_ok(L->off_private, 8, L->size)
        || !field_ok(L->off_chead, 8, L->size)
        || L->order_src < ORDER_NONE || L->order_src > ORDER_FLAGS1
        || (L->order_src == ORDER_BYTE && (L->order_off < 0 || L->order_off >= L->size))
        || L->huge_src < HUGE_NONE || L->huge_src > HUGE_MAPCOUNT
        || (L->huge_src == HUGE_DTOR && (L->dtor_off < 0 || L->dtor_off >= L->size))
        || L->max_order < 1 || L->max_order > 63
        || L->buddy_test < BUDDY_NONE || L->buddy_test > BUDDY_MAPCOUNT)
        bad = 1;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "_pageclass: struct page layout out of range");
        return -1;
    }
    if (L->off_mapcount != -1) {
#define TYPED(has, val, idx) \
        if (p[idx] != -1) { L->has = 1; L->val = (uint32_t)p[idx]; }
        TYPED(has_mc_buddy, mc_buddy, P_MC_BUDDY)
        TYPED(has_mc_offline, mc_offline, P_MC_OFFLINE)
        TYPED(has_mc_slab, mc_slab, P_MC_SLAB)
        TYPED(has_mc_hugetlb, mc_hugetlb, P_MC_HUGETLB)
        TYPED(has_mc_unaccepted, mc_unaccepted, P_MC_UNACCEPTED)
#undef TYPED
    }
    return 0;
}

/* The rules of one page that some rule may fire on (a compound tail never
 * gets here): the category code (0 = kept) and *len, the pages it excludes.
 * `next` is the next struct page, valid only when next_ok. */
static int
rules(const Layout *L, int level, int64_t pfn, const unsigned char *cur,
      const unsigned char *next, int next_ok, int64_t *len)
{
    uint64_t flags = rd64(cur + L->off_flags);
    uint32_t mc = L->off_mapcount != -1 ? rd32(cur + L->off_mapcount) : 0;
    uint64_t mapping = L->off_mapping != -1 ? rd64(cur + L->off_mapping) : 0;
    uint64_t priv = L->off_private != -1 ? rd64(cur + L->off_private) : 0;

    int head = L->head_mask != 0 && (flags & L->head_mask) != 0;
    int looked = head && next_ok && (pfn % PGMM_CACHED) != PGMM_CACHED - 1;
    int64_t order = 0;
    if (looked && L->order_src == ORDER_BYTE)
        order = next[L->order_off];
    else if (looked && L->order_src == ORDER_FLAGS1)
        order = (int64_t)(rd64(next + L->off_flags) & 0xFF);
    /* orders >= 63 or heads not aligned to their order: order 0 */
    if (order >= 63 || (pfn & (((int64_t)1 << order) - 1)) != 0)
        order = 0;

    int hugetlb = 0;
    if (looked) {
        if (L->huge_src == HUGE_DTOR)
            hugetlb = next[L->dtor_off] == L->dtor_value;
        else if (L->huge_src == HUGE_TAILFLAG)
            hugetlb = L->hugetlb_flag != 0 && (rd64(next + L->off_flags) & L->hugetlb_flag) != 0;
        else if (L->huge_src == HUGE_MAPCOUNT)
            hugetlb = L->has_mc_hugetlb && mc == L->mc_hugetlb;
    }
    /* 6.10+: the slab page type (never true without OFFSET(page._mapcount));
     * before: the PG_slab flag */
    int slab = L->slab_by_type ? (L->has_mc_slab && mc == L->mc_slab)
                               : (flags & L->slab_flag) != 0;
    int anon = (mapping & 1) != 0 && !slab;
    int cache = (flags & L->lru) != 0
        || ((flags & L->swapcache) != 0
            && (!L->has_swapbacked || (flags & L->swapbacked) != 0));
    int private_flag = (flags & L->private_) != 0;
    int64_t free_order = (int64_t)priv;

    if (level & DL_FREE) {
        int buddy;
        if (L->buddy_test == BUDDY_FLAG)
            buddy = (flags & L->buddy_flag) != 0;
        else
            buddy = !slab && L->has_mc_buddy && mc == L->mc_buddy;
        if (buddy && free_order >= 0 && free_order < L->max_order) {
            *len = (int64_t)1 << (free_order > 62 ? 62 : free_order);
            return FREE;
        }
        if (L->has_mc_unaccepted && mc == L->mc_unaccepted) {
            *len = (int64_t)1 << (L->max_order - 1);
            return UNACCEPTED;
        }
    }
    *len = (int64_t)1 << order;
    if ((level & DL_CACHE) && cache && !private_flag && !anon)
        return CACHE;
    if ((level & DL_CACHE_PRIVATE) && cache && !anon)
        return private_flag ? CACHE_PRIVATE : CACHE;
    if ((level & DL_USER) && (anon || hugetlb))
        return USER;
    if ((flags & L->hwpoison) != 0)
        return HWPOISON;
    if (!slab && L->has_mc_offline && mc == L->mc_offline)
        return OFFLINE;
    return 0;
}

/* A cheap superset of the pages rules() can exclude: most pages are none. */
typedef struct {
    uint64_t bits;          /* flags any rule of the level tests */
    int anon;               /* DL_USER: an odd page.mapping */
    int nvalues;
    uint32_t values[4];     /* page types a rule compares _mapcount with */
} Prefilter;

static void
make_prefilter(const Layout *L, int level, Prefilter *f)
{
    memset(f, 0, sizeof(*f));
    f->bits = L->hwpoison;
    if (level & (DL_CACHE | DL_CACHE_PRIVATE))
        f->bits |= L->lru | L->swapcache;
    if ((level & DL_FREE) && L->buddy_test == BUDDY_FLAG)
        f->bits |= L->buddy_flag;
    if ((level & DL_USER) && L->huge_src != HUGE_NONE)
        f->bits |= L->head_mask;
    f->anon = (level & DL_USER) && L->off_mapping != -1;
    if (L->has_mc_offline)
        f->values[f->nvalues++] = L->mc_offline;
    if (level & DL_FREE) {
        if (L->has_mc_unaccepted)
            f->values[f->nvalues++] = L->mc_unaccepted;
        if (L->buddy_test == BUDDY_MAPCOUNT && L->has_mc_buddy)
            f->values[f->nvalues++] = L->mc_buddy;
    }
}

static inline int
candidate(const Layout *L, const Prefilter *f, const unsigned char *cur)
{
    if (rd64(cur + L->off_flags) & f->bits)
        return 1;
    if (f->anon && (cur[L->off_mapping] & 1))       /* little-endian: bit 0 in byte 0 */
        return 1;
    if (f->nvalues) {
        uint32_t mc = rd32(cur + L->off_mapcount);
        for (int i = 0; i < f->nvalues; i++)
            if (mc == f->values[i])
                return 1;
    }
    return 0;
}

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
    PyObject *params_o, *buf_o, *flags_o, *cat_o, *ok_o, *ranges_o;
    int level;
    long long buf_pfn0, c0, c1, lo, end, until, start;
    if (!PyArg_ParseTuple(args, "OiOLLLLLLOOLOO", &params_o, &level, &buf_o, &buf_pfn0,
                          &c0, &c1, &lo, &end, &until, &flags_o, &cat_o, &start, &ok_o,
                          &ranges_o))
        return NULL;
    Py_buffer bp, bb, bf, bc, bo, br;
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

    int64_t nbuf = bb.len / L.size;             /* struct pages in buf */
    int64_t nflags = bf.len, ncat = bc.len;
    if (c1 > end)
        c1 = end;
    if (c0 < lo || buf_pfn0 > c0 || c1 - buf_pfn0 > nbuf || c1 - lo > nflags
        || start < lo || end - start > ncat || end + 1 - lo > nflags) {
        PyErr_SetString(PyExc_ValueError, "_pageclass.walk: window and buffers disagree");
        goto out_r;
    }

    int status = 0;
    Py_BEGIN_ALLOW_THREADS
    unsigned char *flags = bf.buf, *cat = bc.buf;
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
                        if (hp >= 0 && hp < lo && p - hp < MAX_COMPOUND_SPAN) {
                            status = 1;
                            break;
                        }
                    }
                }
                continue;
            }
        }
        if (p < until || !(fl & FL_INSEG) || !candidate(&L, &f, cur))
            continue;
        int next_ok = p + 1 - buf_pfn0 < nbuf && (flags[p + 1 - lo] & FL_OK);
        int64_t len;
        int code = rules(&L, level, p, cur, next_ok ? cur + L.size : NULL, next_ok, &len);
        if (!code)
            continue;
        until = p + len;
        int64_t a = p > start ? p : start, b = until < end ? until : end;
        if (a < b)
            memset(cat + (a - start), code, (size_t)(b - a));
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(iL)", status, (long long)until);

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
     "ranges) -> (status, until): classify pfns [c0, min(c1, end)) in makedumpfile's order."},
    {"finish", py_finish, METH_VARARGS,
     "finish(flags, lo, cat, start, end) -> (present, keep, counts): packed bitmaps and "
     "per-category counts (counts[0]: present pages with unreadable struct page)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pageclass",
    "Page classification by dump level without numpy (see slimdump.kernel.pages).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__pageclass(void)
{
    return PyModule_Create(&module);
}
