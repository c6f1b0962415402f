/* ringbuf/_cenc.h: the msgpack encoder of ringbuf._cring (included by _cring.c only).
 *
 * put_record(p, end, dict, &why) writes what msgpack.packb and
 * ormsgpack.packb write for the types it takes (exact types only, no
 * subclasses): None, bool, int (the smallest of fixint/uint8..64/int8..64),
 * float (float64), str (fixstr, str8/16/32 of its UTF-8), bytes
 * (bin8/16/32), list and tuple (arrays), dict with str keys (maps, in
 * iteration order). It returns where the output ends, or NULL with `why`
 * set: NO_ROOM (the output would pass `end`) or NOT_TAKEN (a type, an int
 * beyond 64 bits, a str that is not UTF-8, nesting deeper than MAX_DEPTH).
 * It runs no Python code; bytes written before a failure are scribbles the
 * caller never publishes. Every write checks the room it needs first, so
 * nothing is ever written at or past `end`.
 *
 * What a call costs is per field (python -m bench record_hit prints the
 * instructions), so a map's items are walked in one loop (put_items) with
 * the output position in a register and the common fields written inline,
 * without a function call: a str (ASCII: its characters are its UTF-8,
 * read in place), a one-digit int (its digit read in place), a float,
 * None and the bools; copies are moves of 32, 16, 8 or 4 bytes that
 * overlap at the end rather than a call into libc. Containers, bytes and
 * the rare cases (non-ASCII str, ints of more than one digit) go through
 * the general put_obj.
 */
#ifndef RINGBUF_CENC_H
#define RINGBUF_CENC_H

/* The layout of a dict's keys object in CPython 3.11 to 3.13 (with the GIL;
 * Include/internal/pycore_dict.h, the same in the three): the items of a
 * combined table of str keys are walked in place (dict_walk_ok, set at import
 * by check_dict_walk in _cring.c only if the walk gives what PyDict_Next
 * gives), anything else through PyDict_Next. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define DICT_WALK 1
typedef struct {
    Py_ssize_t dk_refcnt;
    uint8_t dk_log2_size;
    uint8_t dk_log2_index_bytes;
    uint8_t dk_kind;  /* 1: DICT_KEYS_UNICODE, a combined table of str keys */
    uint32_t dk_version;
    Py_ssize_t dk_usable;
    Py_ssize_t dk_nentries;
    char dk_indices[];  /* then the entries */
} DictKeys;
typedef struct {
    PyObject *me_key;
    PyObject *me_value;  /* NULL: a deleted entry */
} DictEntry;

static int dict_walk_ok;

/* The entries of d and how many (NULL: walk it with PyDict_Next). */
static inline DictEntry *dict_entries(PyObject *d, Py_ssize_t *n) {
    PyDictObject *dd = (PyDictObject *)d;
    DictKeys *ks = (DictKeys *)dd->ma_keys;
    if (!dict_walk_ok || dd->ma_values != NULL || ks->dk_kind != 1) return NULL;
    *n = ks->dk_nentries;
    return (DictEntry *)(ks->dk_indices + ((size_t)1 << ks->dk_log2_index_bytes));
}
#else
#define DICT_WALK 0
#endif

#define MAX_DEPTH 32
#define NO_ROOM (-1)
#define NOT_TAKEN (-2)
#define INLINE static inline __attribute__((always_inline))
#define FAIL(code) (*why = (code), (unsigned char *)NULL)

/* n bytes from s to d, no call below 256: moves that overlap at the end
 * (never reading or writing outside [s, s + n) and [d, d + n)). */
INLINE void copy_bytes(unsigned char *d, const unsigned char *s, size_t n) {
    if (n >= 32) {
        if (n > 256) {
            memcpy(d, s, n);
            return;
        }
        size_t i = 0;
        for (; i + 32 < n; i += 32) __builtin_memcpy(d + i, s + i, 32);
        __builtin_memcpy(d + n - 32, s + n - 32, 32);
    } else if (n >= 16) {
        __builtin_memcpy(d, s, 16);
        __builtin_memcpy(d + n - 16, s + n - 16, 16);
    } else if (n >= 8) {
        __builtin_memcpy(d, s, 8);
        __builtin_memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4) {
        __builtin_memcpy(d, s, 4);
        __builtin_memcpy(d + n - 4, s + n - 4, 4);
    } else if (n) {
        d[0] = s[0];
        d[n >> 1] = s[n >> 1];
        d[n - 1] = s[n - 1];
    }
}

/* lead, then the n low bytes of v big-endian. With 9 bytes of room one
 * 8-byte store (the bytes past 1 + n are scratch, rewritten next). */
INLINE unsigned char *put_be(unsigned char *p, unsigned char *end, unsigned char lead,
                             uint64_t v, int n, int *why) {
    if (end - p < 9) {
        if (end - p < 1 + n) return FAIL(NO_ROOM);
        *p++ = lead;
        for (int i = n - 1; i >= 0; i--) *p++ = (unsigned char)(v >> (8 * i));
        return p;
    }
    uint64_t be = __builtin_bswap64(v << (8 * (8 - n)));
    p[0] = lead;
    __builtin_memcpy(p + 1, &be, 8);
    return p + 1 + n;
}

INLINE unsigned char *put1(unsigned char *p, unsigned char *end, unsigned char b, int *why) {
    if (p >= end) return FAIL(NO_ROOM);
    *p = b;
    return p + 1;
}

/* A length: fix|n below fixmax, else the 8 (if b8), 16 or 32-bit form. */
INLINE unsigned char *put_len(unsigned char *p, unsigned char *end, Py_ssize_t n,
                              unsigned char fix, Py_ssize_t fixmax, unsigned char b8,
                              unsigned char b16, unsigned char b32, int *why) {
    if (n < fixmax) return put1(p, end, (unsigned char)(fix | n), why);
    if (b8 && n < 256) return put_be(p, end, b8, (uint64_t)n, 1, why);
    if (n < 65536) return put_be(p, end, b16, (uint64_t)n, 2, why);
    if ((uint64_t)n <= 0xFFFFFFFFu) return put_be(p, end, b32, (uint64_t)n, 4, why);
    return FAIL(NOT_TAKEN);
}

/* Raw bytes after their length (str or bin). */
INLINE unsigned char *put_raw(unsigned char *p, unsigned char *end, const unsigned char *s,
                              Py_ssize_t n, int *why) {
    if (n < 0) __builtin_unreachable();  /* a length */
    if (n > end - p) return FAIL(NO_ROOM);
    copy_bytes(p, s, (size_t)n);
    return p + n;
}

/* A str of 32 bytes or more: str8/16/32, out of line (the common short one is inline). */
static unsigned char *put_str_long(unsigned char *p, unsigned char *end, const unsigned char *s,
                                   Py_ssize_t n, int *why) {
    p = put_len(p, end, n, 0xa0, 32, 0xd9, 0xda, 0xdb, why);
    return p ? put_raw(p, end, s, n, why) : NULL;
}

/* A str that is not ASCII: its UTF-8 (cached in the object by CPython). */
static unsigned char *put_str_utf8(unsigned char *p, unsigned char *end, PyObject *o,
                                   int *why) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s == NULL) {
        PyErr_Clear();  /* lone surrogates: the careful path explains */
        return FAIL(NOT_TAKEN);
    }
    return put_str_long(p, end, (const unsigned char *)s, n, why);
}

INLINE unsigned char *put_str(unsigned char *p, unsigned char *end, PyObject *o, int *why) {
    if (!PyUnicode_IS_COMPACT_ASCII(o)) return put_str_utf8(p, end, o, why);
    Py_ssize_t n = PyUnicode_GET_LENGTH(o);
    const unsigned char *s = (const unsigned char *)(((PyASCIIObject *)o) + 1);
    if (n < 0) __builtin_unreachable();  /* a length */
    if (n < 32) {  /* fixstr: one length byte */
        if (end - p < 1 + n) return FAIL(NO_ROOM);
        *p = (unsigned char)(0xa0 | n);
        copy_bytes(p + 1, s, (size_t)n);
        return p + 1 + n;
    }
    return put_str_long(p, end, s, n, why);
}

INLINE unsigned char *put_i64(unsigned char *p, unsigned char *end, int64_t v, int *why) {
    if (v >= 0) {
        if (v < 128) return put1(p, end, (unsigned char)v, why);
        if (v <= 0xFF) return put_be(p, end, 0xcc, (uint64_t)v, 1, why);
        if (v <= 0xFFFF) return put_be(p, end, 0xcd, (uint64_t)v, 2, why);
        if (v <= 0xFFFFFFFFLL) return put_be(p, end, 0xce, (uint64_t)v, 4, why);
        return put_be(p, end, 0xcf, (uint64_t)v, 8, why);
    }
    if (v >= -32) return put1(p, end, (unsigned char)(int8_t)v, why);
    if (v >= -128) return put_be(p, end, 0xd0, (uint64_t)v & 0xFF, 1, why);
    if (v >= -32768) return put_be(p, end, 0xd1, (uint64_t)v & 0xFFFF, 2, why);
    if (v >= -2147483648LL) return put_be(p, end, 0xd2, (uint64_t)v & 0xFFFFFFFFu, 4, why);
    return put_be(p, end, 0xd3, (uint64_t)v, 8, why);
}

/* An int through the C API: any size up to 64 bits. */
static unsigned char *put_int_any(unsigned char *p, unsigned char *end, PyObject *o, int *why) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return FAIL(NOT_TAKEN);
        }
        return put_be(p, end, 0xcf, u, 8, why);
    }
    if (overflow < 0) return FAIL(NOT_TAKEN);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return FAIL(NOT_TAKEN);
    }
    return put_i64(p, end, (int64_t)v, why);
}

/* An int: read in place when it is compact (one digit), else put_int_any. */
INLINE unsigned char *put_int(unsigned char *p, unsigned char *end, PyObject *o, int *why) {
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)o))
        return put_i64(p, end, (int64_t)PyUnstable_Long_CompactValue((PyLongObject *)o), why);
#else
    Py_ssize_t size = Py_SIZE(o);
    if (size >= -1 && size <= 1)
        return put_i64(p, end, (int64_t)size * (int64_t)((PyLongObject *)o)->ob_digit[0], why);
#endif
    return put_int_any(p, end, o, why);
}

static unsigned char *put_obj(unsigned char *p, unsigned char *end, PyObject *o, int depth,
                              int *why);

/* The scalars inline; containers, bytes and the rest through put_obj. */
INLINE unsigned char *put_value(unsigned char *p, unsigned char *end, PyObject *o, int depth,
                                int *why) {
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type) return put_str(p, end, o, why);
    if (t == &PyLong_Type) return put_int(p, end, o, why);
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(o);
        uint64_t bits;
        __builtin_memcpy(&bits, &d, 8);
        return put_be(p, end, 0xcb, bits, 8, why);
    }
    if (o == Py_None) return put1(p, end, 0xc0, why);
    if (o == Py_True) return put1(p, end, 0xc3, why);
    if (o == Py_False) return put1(p, end, 0xc2, why);
    return put_obj(p, end, o, depth, why);
}

/* A dict as a map: its items in one loop, str keys only; in place when
 * dict_entries allows (in the order PyDict_Next gives), else PyDict_Next. */
static unsigned char *put_items(unsigned char *p, unsigned char *end, PyObject *d, int depth,
                                int *why) {
    PyObject *k, *v;
    Py_ssize_t pos = 0, n = 0;
    p = put_len(p, end, PyDict_GET_SIZE(d), 0x80, 16, 0, 0xde, 0xdf, why);
#if DICT_WALK
    DictEntry *ent = dict_entries(d, &n);
#else
    void *ent = NULL;
#endif
    while (p != NULL) {
#if DICT_WALK
        if (ent != NULL) {
            if (pos >= n) break;
            k = ent[pos].me_key;
            v = ent[pos++].me_value;
            if (v == NULL) continue;  /* a deleted entry */
        } else
#endif
        if (!PyDict_Next(d, &pos, &k, &v)) break;
        if (Py_TYPE(k) != &PyUnicode_Type) return FAIL(NOT_TAKEN);
        p = put_str(p, end, k, why);
        if (p != NULL) p = put_value(p, end, v, depth + 1, why);
    }
    (void)ent;
    (void)n;
    return p;
}

static unsigned char *put_seq(unsigned char *p, unsigned char *end, PyObject **items,
                              Py_ssize_t n, int depth, int *why) {
    p = put_len(p, end, n, 0x90, 16, 0, 0xdc, 0xdd, why);
    for (Py_ssize_t i = 0; p != NULL && i < n; i++) p = put_value(p, end, items[i], depth + 1, why);
    return p;
}

/* What put_value does not write inline (and the scalars, for a caller that
 * comes straight here). */
static unsigned char *put_obj(unsigned char *p, unsigned char *end, PyObject *o, int depth,
                              int *why) {
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type || t == &PyLong_Type || t == &PyFloat_Type || o == Py_None
            || o == Py_True || o == Py_False)
        return put_value(p, end, o, depth, why);
    if (depth >= MAX_DEPTH) return FAIL(NOT_TAKEN);
    if (t == &PyDict_Type) return put_items(p, end, o, depth, why);
    if (t == &PyList_Type)
        return put_seq(p, end, PySequence_Fast_ITEMS(o), PyList_GET_SIZE(o), depth, why);
    if (t == &PyTuple_Type)
        return put_seq(p, end, PySequence_Fast_ITEMS(o), PyTuple_GET_SIZE(o), depth, why);
    if (t == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(o);
        p = put_len(p, end, n, 0, 0, 0xc4, 0xc5, 0xc6, why);
        return p ? put_raw(p, end, (const unsigned char *)PyBytes_AS_STRING(o), n, why) : NULL;
    }
    return FAIL(NOT_TAKEN);
}

/* A record: a dict, at depth 0. */
INLINE unsigned char *put_record(unsigned char *p, unsigned char *end, PyObject *record,
                                 int *why) {
    return put_items(p, end, record, 0, why);
}

#endif
