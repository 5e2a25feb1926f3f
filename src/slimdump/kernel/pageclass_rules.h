/*
 * pageclass_rules.h: makedumpfile's dump-level rules over one struct page,
 * with the kernel's predicates (PageBuddy, PageSlab, PageHuge...), for
 * _pageclass.c (the walk and its Python bindings).  Only _pageclass.c
 * includes it.
 */
#ifndef SLIMDUMP_PAGECLASS_RULES_H
#define SLIMDUMP_PAGECLASS_RULES_H

#include <Python.h>

#include <stdint.h>
#include <string.h>

/* The parameters, by the VMCOREINFO entry each comes from (PARAMS below). */
enum {
    P_SIZE_PAGE, P_OFFSET_FLAGS, P_OFFSET_MAPPING, P_OFFSET_MAPCOUNT, P_OFFSET_PRIVATE,
    P_OFFSET_COMPOUND_HEAD, P_ORDER_SOURCE, P_ORDER_OFFSET, P_HUGETLB_SOURCE,
    P_DTOR_OFFSET, P_HUGETLB_PAGE_DTOR, P_PG_HEAD_MASK,
    P_PG_LRU, P_PG_PRIVATE, P_PG_SWAPCACHE, P_PG_SWAPBACKED, P_PG_SLAB, P_PG_HWPOISON,
    P_PG_BUDDY, P_PG_HUGETLB,
    P_PAGE_BUDDY, P_PAGE_OFFLINE, P_PAGE_SLAB, P_PAGE_HUGETLB, P_PAGE_UNACCEPTED,
    P_FREE_AREA, P_BUDDY_SOURCE, P_COUNT
};

static const char *const param_names[P_COUNT] = {
    "SIZE(page)", "OFFSET(page.flags)", "OFFSET(page.mapping)", "OFFSET(page._mapcount)",
    "OFFSET(page.private)", "OFFSET(page.compound_head)", "order_source", "order_offset",
    "hugetlb_source", "dtor_offset", "NUMBER(HUGETLB_PAGE_DTOR)", "NUMBER(PG_head_mask)",
    "NUMBER(PG_lru)", "NUMBER(PG_private)", "NUMBER(PG_swapcache)", "NUMBER(PG_swapbacked)",
    "NUMBER(PG_slab)", "NUMBER(PG_hwpoison)", "NUMBER(PG_buddy)", "NUMBER(PG_hugetlb)",
    "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)",
    "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)", "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)",
    "NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)", "LENGTH(zone.free_area)", "buddy_source",
};

/* Where the compound order, the hugetlb mark and PageBuddy come from
 * (slimdump.kernel.struct_page gives the same names to the same numbers
 * through ORDER_SOURCES, HUGETLB_SOURCES, BUDDY_SOURCES). */
enum { ORDER_NONE, ORDER_BYTE, ORDER_FLAGS1 };
enum { HUGE_NONE, HUGE_DTOR, HUGE_TAILFLAG, HUGE_PAGE_TYPE };
enum { BUDDY_NONE, BUDDY_FLAG, BUDDY_PAGE_TYPE };

/* categories: why a page is dropped (0: kept) */
enum { FREE = 1, UNACCEPTED, CACHE, CACHE_PRIVATE, USER, HWPOISON, OFFLINE, NCATEGORIES };
static const char *const category_names[NCATEGORIES] = {
    "kept", "free", "unaccepted", "cache", "cache_private", "user", "hwpoison", "offline",
};

/* makedumpfile's dump level bits judged from struct page (bit 1, zero
 * pages, is judged from content by the writers): the -d numbers of its
 * command line, an interface both languages name (dump_level.py DL_*) */
#define DL_CACHE 2
#define DL_CACHE_PRIVATE 4
#define DL_USER 8
#define DL_FREE 16

#define FL_INSEG 1
#define FL_PRESENT 2
#define FL_OK 4

/* makedumpfile reads struct pages 512 at a time, aligned on pfn: a head that
 * is the last page of such a block gets no look at its first tail */
#define PGMM_CACHED 512
/* a compound tail further than this from its head is not believed */
#define MAX_COMPOUND_SPAN ((int64_t)1 << 30)

typedef struct {
    int64_t size;
    int64_t off_flags, off_mapping, off_mapcount, off_private, off_chead;
    int order_src, huge_src, buddy_src;
    int64_t order_off, dtor_off;
    uint8_t dtor_value;     /* HUGETLB_PAGE_DTOR's low byte */
    uint64_t head_mask;
    /* one-bit masks of the flags, 0 when the kernel does not export the flag */
    uint64_t lru, private_, swapcache, swapbacked, slab_flag, hwpoison, buddy_flag, hugetlb_flag;
    int has_swapbacked;
    int slab_is_type;       /* NUMBER(PAGE_SLAB_MAPCOUNT_VALUE) exported (6.10+) */
    /* page types compared with page_type (the _mapcount word): has_* is 0
     * when not exported or when there is no OFFSET(page._mapcount) */
    int has_buddy, has_offline, has_slab, has_hugetlb, has_unaccepted;
    uint32_t pt_buddy, pt_offline, pt_slab, pt_hugetlb, pt_unaccepted;
    int64_t max_order;      /* LENGTH(zone.free_area): MAX_PAGE_ORDER + 1 */
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

/* An enumerated source 0..last, checked before narrowing to int; else -1 */
static int
source_of(int64_t p, int last)
{
    return p >= 0 && p <= last ? (int)p : -1;
}

/* Fill *L from P_COUNT int64s (copied: any alignment); 0, or -1 with ValueError set. */
static int
parse_layout(const void *buf, Py_ssize_t n, Layout *L)
{
    int bad = 0;
    int64_t p[P_COUNT];
    if (n != P_COUNT) {
        PyErr_SetString(PyExc_ValueError, "_pageclass: wrong number of layout parameters");
        return -1;
    }
    memcpy(p, buf, sizeof(p));
    memset(L, 0, sizeof(*L));
    L->size = p[P_SIZE_PAGE];
    L->off_flags = p[P_OFFSET_FLAGS];
    L->off_mapping = p[P_OFFSET_MAPPING];
    L->off_mapcount = p[P_OFFSET_MAPCOUNT];
    L->off_private = p[P_OFFSET_PRIVATE];
    L->off_chead = p[P_OFFSET_COMPOUND_HEAD];
    L->order_src = source_of(p[P_ORDER_SOURCE], ORDER_FLAGS1);
    L->order_off = p[P_ORDER_OFFSET];
    L->huge_src = source_of(p[P_HUGETLB_SOURCE], HUGE_PAGE_TYPE);
    L->dtor_off = p[P_DTOR_OFFSET];
    L->dtor_value = (uint8_t)(p[P_HUGETLB_PAGE_DTOR] & 0xFF);
    L->head_mask = (uint64_t)p[P_PG_HEAD_MASK];
    L->lru = flag_bit(p[P_PG_LRU], &bad);
    L->private_ = flag_bit(p[P_PG_PRIVATE], &bad);
    L->swapcache = flag_bit(p[P_PG_SWAPCACHE], &bad);
    L->swapbacked = flag_bit(p[P_PG_SWAPBACKED], &bad);
    L->has_swapbacked = p[P_PG_SWAPBACKED] != -1;
    L->slab_flag = flag_bit(p[P_PG_SLAB], &bad);
    L->hwpoison = flag_bit(p[P_PG_HWPOISON], &bad);
    L->buddy_flag = flag_bit(p[P_PG_BUDDY], &bad);
    L->hugetlb_flag = flag_bit(p[P_PG_HUGETLB], &bad);
    L->slab_is_type = p[P_PAGE_SLAB] != -1;
    L->max_order = p[P_FREE_AREA];
    L->buddy_src = source_of(p[P_BUDDY_SOURCE], BUDDY_PAGE_TYPE);
    if (L->size < 8 || L->size > (1 << 20) || L->off_flags < 0
        || !field_ok(L->off_flags, 8, L->size) || !field_ok(L->off_mapping, 8, L->size)
        || !field_ok(L->off_mapcount, 4, L->size) || !field_ok(L->off_private, 8, L->size)
        || !field_ok(L->off_chead, 8, L->size)
        || L->order_src < ORDER_NONE || L->order_src > ORDER_FLAGS1
        || (L->order_src == ORDER_BYTE && (L->order_off < 0 || L->order_off >= L->size))
        || L->huge_src < HUGE_NONE || L->huge_src > HUGE_PAGE_TYPE
        || (L->huge_src == HUGE_DTOR && (L->dtor_off < 0 || L->dtor_off >= L->size))
        || L->max_order < 1 || L->max_order > 63
        || L->buddy_src < BUDDY_NONE || L->buddy_src > BUDDY_PAGE_TYPE)
        bad = 1;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "_pageclass: struct page layout out of range");
        return -1;
    }
    if (L->off_mapcount != -1) {
#define TYPED(has, val, idx) \
        if (p[idx] != -1) { L->has = 1; L->val = (uint32_t)p[idx]; }
        TYPED(has_buddy, pt_buddy, P_PAGE_BUDDY)
        TYPED(has_offline, pt_offline, P_PAGE_OFFLINE)
        TYPED(has_slab, pt_slab, P_PAGE_SLAB)
        TYPED(has_hugetlb, pt_hugetlb, P_PAGE_HUGETLB)
        TYPED(has_unaccepted, pt_unaccepted, P_PAGE_UNACCEPTED)
#undef TYPED
    }
    return 0;
}

/*
 * One struct page as the rules see it, with the kernel's predicates.
 *
 * page_type shares its word with _mapcount.  A typed page holds exactly one
 * type, so the word is compared for equality with the exported
 * NUMBER(PAGE_*_MAPCOUNT_VALUE), which covers both encodings: up to 6.11 a
 * type clears one bit of 0xffffffff; 6.12 (4ffca5a96678c "mm: support only
 * one page_type per page") stores the type in the top byte.
 */
typedef struct {
    uint64_t flags, mapping, private_;
    uint32_t page_type;
} Page;

static inline void
load_page(const Layout *L, const unsigned char *p, Page *pg)
{
    pg->flags = rd64(p + L->off_flags);
    pg->page_type = L->off_mapcount != -1 ? rd32(p + L->off_mapcount) : 0;
    pg->mapping = L->off_mapping != -1 ? rd64(p + L->off_mapping) : 0;
    pg->private_ = L->off_private != -1 ? rd64(p + L->off_private) : 0;
}

/* PageSlab: the slab page type since 6.10 (46df8e73a4a3 "mm: free up
 * PG_slab"), the PG_slab flag before */
static inline int
PageSlab(const Layout *L, const Page *pg)
{
    if (L->slab_is_type)
        return L->has_slab && pg->page_type == L->pt_slab;
    return (pg->flags & L->slab_flag) != 0;
}

/* PageAnon: PAGE_MAPPING_ANON in page->mapping (KSM pages have 3); a slab
 * page's mapping word is slab state, not a mapping */
static inline int
PageAnon(const Layout *L, const Page *pg)
{
    return (pg->mapping & 1) != 0 && !PageSlab(L, pg);
}

/* PageBuddy: the buddy page type (2.6.38+; the page_type encodings above),
 * or the PG_buddy flag (2.6.17 - 2.6.37) */
static inline int
PageBuddy(const Layout *L, const Page *pg)
{
    if (L->buddy_src == BUDDY_FLAG)
        return (pg->flags & L->buddy_flag) != 0;
    return !PageSlab(L, pg) && L->has_buddy && pg->page_type == L->pt_buddy;
}

static inline int
PageOffline(const Layout *L, const Page *pg)
{
    return !PageSlab(L, pg) && L->has_offline && pg->page_type == L->pt_offline;
}

/* 6.16: memory not yet accepted from the hypervisor (TDX, SEV-SNP) */
static inline int
PageUnaccepted(const Layout *L, const Page *pg)
{
    return L->has_unaccepted && pg->page_type == L->pt_unaccepted;
}

/* makedumpfile's page cache test: on the LRU, or in the swap cache (and
 * swap-backed, where the kernel exports PG_swapbacked) */
static inline int
page_cache(const Layout *L, const Page *pg)
{
    return (pg->flags & L->lru) != 0
        || ((pg->flags & L->swapcache) != 0
            && (!L->has_swapbacked || (pg->flags & L->swapbacked) != 0));
}

/* compound_order of a head whose first tail is `tail` (NULL: not looked
 * at): a byte of the first tail up to 6.5 (page.compound_order, then
 * folio._folio_order), the low byte of the first tail's flags since 6.6
 * (folio._flags_1).  Orders >= 63 and heads not aligned to their order are
 * not believed: order 0. */
static inline int64_t
compound_order(const Layout *L, int64_t pfn, const unsigned char *tail)
{
    int64_t order = 0;
    if (tail && L->order_src == ORDER_BYTE)
        order = tail[L->order_off];
    else if (tail && L->order_src == ORDER_FLAGS1)
        order = (int64_t)(rd64(tail + L->off_flags) & 0xFF);
    if (order >= 63 || (pfn & (((int64_t)1 << order) - 1)) != 0)
        order = 0;
    return order;
}

/* PageHuge of a head whose first tail is `tail` (NULL: not looked at):
 * compound_dtor == HUGETLB_PAGE_DTOR in the first tail up to 6.5, the
 * PG_hugetlb flag of the first tail in 6.6 - 6.8, the head's hugetlb page
 * type since 6.9 (d99e3140a4d3 "mm: turn folio_test_hugetlb into a
 * PageType") */
static inline int
PageHuge(const Layout *L, const Page *head, const unsigned char *tail)
{
    if (!tail)
        return 0;
    switch (L->huge_src) {
    case HUGE_DTOR:
        return tail[L->dtor_off] == L->dtor_value;
    case HUGE_TAILFLAG:
        return L->hugetlb_flag != 0 && (rd64(tail + L->off_flags) & L->hugetlb_flag) != 0;
    case HUGE_PAGE_TYPE:
        return L->has_hugetlb && head->page_type == L->pt_hugetlb;
    }
    return 0;
}

/*
 * The rules for one page that is not a compound tail, in makedumpfile's
 * order: the category (0 = kept) and *len, the pages it drops.  `next` is
 * the next struct page (the first tail of a head), NULL when unreadable.
 *
 * A head looks at its first tail only inside its 512-pfn block (as
 * makedumpfile, which reads struct pages 512 at a time).  HVO (hugetlb
 * vmemmap optimisation) maps a hugetlb page's later struct pages onto its
 * first ones, so a "fake head" (the kernel's page_fixed_fake_head()) reads
 * as a copy of the real head: it is judged as the real head was, and
 * needs no test of its own.
 */
static int
judge(const Layout *L, int level, int64_t pfn, const unsigned char *cur,
      const unsigned char *next, int64_t *len)
{
    Page pg;
    load_page(L, cur, &pg);
    int head = L->head_mask != 0 && (pg.flags & L->head_mask) != 0;
    const unsigned char *tail = head && (pfn % PGMM_CACHED) != PGMM_CACHED - 1 ? next : NULL;

    if (level & DL_FREE) {
        int64_t order = (int64_t)pg.private_;   /* buddy order in page.private */
        if (PageBuddy(L, &pg)) {
            /* an order the zone cannot have: makedumpfile warns and keeps the
             * page, and no later rule looks at it */
            *len = 1;
            if (order < 0 || order >= L->max_order)
                return 0;
            *len = (int64_t)1 << order;
            return FREE;
        }
        if (PageUnaccepted(L, &pg)) {
            *len = (int64_t)1 << (L->max_order - 1);
            return UNACCEPTED;
        }
    }
    *len = (int64_t)1 << compound_order(L, pfn, tail);
    int anon = PageAnon(L, &pg), cache = page_cache(L, &pg);
    int private_ = (pg.flags & L->private_) != 0;
    if ((level & DL_CACHE) && cache && !private_ && !anon)
        return CACHE;
    if ((level & DL_CACHE_PRIVATE) && cache && !anon)
        return private_ ? CACHE_PRIVATE : CACHE;
    if ((level & DL_USER) && (anon || PageHuge(L, &pg, tail)))
        return USER;
    if ((pg.flags & L->hwpoison) != 0)
        return HWPOISON;
    if (PageOffline(L, &pg))
        return OFFLINE;
    return 0;
}

/* A cheap superset of the pages judge() can drop: most pages are none. */
typedef struct {
    uint64_t bits;          /* flags any rule of the level tests */
    int anon;               /* DL_USER: an odd page.mapping */
    int nvalues;
    uint32_t values[4];     /* page types a rule compares page_type with */
} Prefilter;

static void
make_prefilter(const Layout *L, int level, Prefilter *f)
{
    memset(f, 0, sizeof(*f));
    f->bits = L->hwpoison;
    if (level & (DL_CACHE | DL_CACHE_PRIVATE))
        f->bits |= L->lru | L->swapcache;
    if ((level & DL_FREE) && L->buddy_src == BUDDY_FLAG)
        f->bits |= L->buddy_flag;
    if ((level & DL_USER) && L->huge_src != HUGE_NONE)
        f->bits |= L->head_mask;
    f->anon = (level & DL_USER) && L->off_mapping != -1;
    if (L->has_offline)
        f->values[f->nvalues++] = L->pt_offline;
    if (level & DL_FREE) {
        if (L->has_unaccepted)
            f->values[f->nvalues++] = L->pt_unaccepted;
        if (L->buddy_src == BUDDY_PAGE_TYPE && L->has_buddy)
            f->values[f->nvalues++] = L->pt_buddy;
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
#endif /* SLIMDUMP_PAGECLASS_RULES_H */
