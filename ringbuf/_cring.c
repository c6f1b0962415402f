/* ringbuf._cring: the native fast path of a ring's producer (glue: ringbuf/_native.py).
 *
 * Writer(mmap, max_record_bytes) holds a buffer of the ring's
 * mapping and the producer's position (off, tbase, seq, stop: the same cells
 * as ringbuf._writepath's closures, absolute file offsets). Two calls:
 *
 *   write_record(record)  encodes a dict as msgpack straight into the next
 *                         frame's payload, writes the frame header, then
 *                         publishes tail with a release store (and written);
 *   write_bytes(payload)  the same for an already encoded payload.
 *
 * and Hot(careful), the client's record_hit: hot(record) is
 * writer.write_record(record), or careful(record) when that declines.
 *
 * Each write returns True when the frame is published and None when it does not
 * take the write: a type it does not encode, an int beyond 64 bits, a str
 * that is not UTF-8, nesting deeper than MAX_DEPTH, a frame that would end
 * past `stop` (the end of the data area, a possibly full ring, the next
 * look at the file by bytes) or at or after `deadline` (the next look by
 * time: a producer that slowed down after a burst) or a payload over
 * max_record_bytes. Nothing is
 * published then, no exception is set and the caller takes the careful
 * Python path. Bytes scribbled past tail by an abandoned encoding are never
 * read: only tail publishes.
 *
 * The encoder writes what msgpack.packb and ormsgpack.packb write for the
 * types it takes (exact types only, no subclasses): None, bool, int (the
 * smallest of fixint/uint8..64/int8..64), float (float64), str (fixstr,
 * str8/16/32 of its UTF-8), bytes (bin8/16/32), list and tuple (arrays),
 * dict with str keys (maps, in iteration order).
 *
 * It runs no Python code and never releases the GIL, so one call is atomic
 * with respect to the other threads of the process; `busy` (set by the
 * careful path while it moves the position) makes both calls decline.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ring layout is little-endian; the native path is built on little-endian CPUs only"
#endif

#define TAG 0xC0113C70u
#define TAIL_OFF 128
#define WRITTEN_OFF 136
#define MAX_DEPTH 32

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    char *base;
    Py_ssize_t size;
    Py_ssize_t max_record;
    Py_ssize_t off, tbase, seq, stop;
    double deadline;  /* CLOCK_MONOTONIC seconds (time.monotonic()); 0: none */
    int busy;
} Writer;

/* Whether the careful path is due for a look at the ring's file: a coarse
 * clock read (vDSO, a few ns; at most one tick late) against `deadline`. */
static inline int look_due(Writer *w) {
    if (w->deadline <= 0) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec >= w->deadline;
}

typedef struct {
    unsigned char *p;
    unsigned char *end;
} Enc;

#define NO_ROOM (-1)
#define NOT_TAKEN (-2)

static inline int put1(Enc *e, unsigned char b) {
    if (e->p >= e->end) return NO_ROOM;
    *e->p++ = b;
    return 0;
}

static inline int put_be(Enc *e, unsigned char lead, uint64_t v, int n) {
    if (e->end - e->p < 9) {  /* near the end: byte by byte */
        if (e->end - e->p < 1 + n) return NO_ROOM;
        *e->p++ = lead;
        for (int i = n - 1; i >= 0; i--) *e->p++ = (unsigned char)(v >> (8 * i));
        return 0;
    }
    /* lead, then the n low bytes of v big-endian: one 8-byte store of the
     * byte-swapped value shifted into place (the bytes past n are scratch) */
    uint64_t be = __builtin_bswap64(v << (8 * (8 - n)));
    e->p[0] = lead;
    memcpy(e->p + 1, &be, 8);
    e->p += 1 + n;
    return 0;
}

static inline int put_raw(Enc *e, const char *s, Py_ssize_t n) {
    if (e->end - e->p < n) return NO_ROOM;
    memcpy(e->p, s, (size_t)n);
    e->p += n;
    return 0;
}

static int put_len(Enc *e, Py_ssize_t n, unsigned char fix, Py_ssize_t fixmax,
                   unsigned char b8, unsigned char b16, unsigned char b32) {
    if (n < fixmax) return put1(e, (unsigned char)(fix | n));
    if (b8 && n < 256) return put_be(e, b8, (uint64_t)n, 1);
    if (n < 65536) return put_be(e, b16, (uint64_t)n, 2);
    if ((uint64_t)n <= 0xFFFFFFFFu) return put_be(e, b32, (uint64_t)n, 4);
    return NOT_TAKEN;
}

static int put_str(Enc *e, PyObject *o) {
    Py_ssize_t n;
    const char *s;
    if (PyUnicode_IS_COMPACT_ASCII(o)) {  /* ASCII: its characters are its UTF-8 */
        s = (const char *)PyUnicode_DATA(o);
        n = PyUnicode_GET_LENGTH(o);
    } else if ((s = PyUnicode_AsUTF8AndSize(o, &n)) == NULL) {
        PyErr_Clear();  /* lone surrogates: the careful path explains */
        return NOT_TAKEN;
    }
    int r = put_len(e, n, 0xa0, 32, 0xd9, 0xda, 0xdb);
    return r ? r : put_raw(e, s, n);
}

static int put_int(Enc *e, PyObject *o) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return NOT_TAKEN;
        }
        return put_be(e, 0xcf, u, 8);
    }
    if (overflow < 0) return NOT_TAKEN;
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return NOT_TAKEN;
    }
    if (v >= 0) {
        if (v < 128) return put1(e, (unsigned char)v);
        if (v <= 0xFF) return put_be(e, 0xcc, (uint64_t)v, 1);
        if (v <= 0xFFFF) return put_be(e, 0xcd, (uint64_t)v, 2);
        if (v <= 0xFFFFFFFFLL) return put_be(e, 0xce, (uint64_t)v, 4);
        return put_be(e, 0xcf, (uint64_t)v, 8);
    }
    if (v >= -32) return put1(e, (unsigned char)(int8_t)v);
    if (v >= -128) return put_be(e, 0xd0, (uint64_t)v & 0xFF, 1);
    if (v >= -32768) return put_be(e, 0xd1, (uint64_t)v & 0xFFFF, 2);
    if (v >= -2147483648LL) return put_be(e, 0xd2, (uint64_t)v & 0xFFFFFFFFu, 4);
    return put_be(e, 0xd3, (uint64_t)v, 8);
}

static int put_obj(Enc *e, PyObject *o, int depth);

static int put_seq(Enc *e, PyObject **items, Py_ssize_t n, int depth) {
    int r = put_len(e, n, 0x90, 16, 0, 0xdc, 0xdd);
    for (Py_ssize_t i = 0; r == 0 && i < n; i++) r = put_obj(e, items[i], depth + 1);
    return r;
}

static int put_obj(Enc *e, PyObject *o, int depth) {
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type) return put_str(e, o);
    if (t == &PyLong_Type) return put_int(e, o);
    if (o == Py_None) return put1(e, 0xc0);
    if (o == Py_True) return put1(e, 0xc3);
    if (o == Py_False) return put1(e, 0xc2);
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(o);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        return put_be(e, 0xcb, bits, 8);
    }
    if (depth >= MAX_DEPTH) return NOT_TAKEN;
    if (t == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        int r = put_len(e, PyDict_GET_SIZE(o), 0x80, 16, 0, 0xde, 0xdf);
        while (r == 0 && PyDict_Next(o, &pos, &k, &v)) {
            if (Py_TYPE(k) != &PyUnicode_Type) return NOT_TAKEN;
            r = put_str(e, k);
            if (r == 0) r = put_obj(e, v, depth + 1);
        }
        return r;
    }
    if (t == &PyList_Type) return put_seq(e, PySequence_Fast_ITEMS(o), PyList_GET_SIZE(o), depth);
    if (t == &PyTuple_Type) return put_seq(e, PySequence_Fast_ITEMS(o), PyTuple_GET_SIZE(o), depth);
    if (t == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(o);
        int r = put_len(e, n, 0, 0, 0xc4, 0xc5, 0xc6);
        return r ? r : put_raw(e, PyBytes_AS_STRING(o), n);
    }
    return NOT_TAKEN;
}

/* The frame's payload goes at off + 16; it may use up to `room` bytes. */
static inline Py_ssize_t payload_room(Writer *w) {
    Py_ssize_t room = w->stop - w->off - 16;
    return room < w->max_record ? room : w->max_record;
}

/* Pad, write the frame header, publish (release), count. */
static PyObject *publish(Writer *w, Py_ssize_t n) {
    Py_ssize_t end = w->off + 16 + ((n + 7) & ~(Py_ssize_t)7);
    if (end > w->stop) Py_RETURN_NONE;
    char *frame = w->base + w->off;
    memset(frame + 16 + n, 0, (size_t)(end - w->off - 16 - n));
    uint64_t head[2] = {(uint64_t)n | ((uint64_t)TAG << 32), (uint64_t)w->seq};
    memcpy(frame, head, 16);
    w->seq += 1;
    w->off = end;
    __atomic_store_n((uint64_t *)(w->base + TAIL_OFF), (uint64_t)(w->tbase + end),
                     __ATOMIC_RELEASE);
    __atomic_store_n((uint64_t *)(w->base + WRITTEN_OFF), (uint64_t)w->seq, __ATOMIC_RELAXED);
    Py_RETURN_TRUE;
}

static PyObject *Writer_write_record(Writer *w, PyObject *record) {
    if (w->busy || w->base == NULL || Py_TYPE(record) != &PyDict_Type || look_due(w))
        Py_RETURN_NONE;
    Py_ssize_t room = payload_room(w);
    if (room <= 0) Py_RETURN_NONE;
    unsigned char *start = (unsigned char *)w->base + w->off + 16;
    Enc e = {start, start + room};
    if (put_obj(&e, record, 0) != 0) Py_RETURN_NONE;
    return publish(w, (Py_ssize_t)(e.p - start));
}

static PyObject *Writer_write_bytes(Writer *w, PyObject *payload) {
    if (w->busy || w->base == NULL || Py_TYPE(payload) != &PyBytes_Type || look_due(w))
        Py_RETURN_NONE;
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    if (n > payload_room(w)) Py_RETURN_NONE;
    memcpy(w->base + w->off + 16, PyBytes_AS_STRING(payload), (size_t)n);
    return publish(w, n);
}

static PyObject *Writer_release(Writer *w, PyObject *unused) {
    if (w->have_view) {
        w->have_view = 0;
        w->base = NULL;
        PyBuffer_Release(&w->view);
    }
    Py_RETURN_NONE;
}

static int Writer_init(Writer *w, PyObject *args, PyObject *kw) {
    PyObject *mm;
    Py_ssize_t max_record;
    if (!PyArg_ParseTuple(args, "On", &mm, &max_record)) return -1;
    if (w->have_view) Writer_release(w, NULL);
    if (PyObject_GetBuffer(mm, &w->view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) return -1;
    w->have_view = 1;
    w->base = (char *)w->view.buf;
    w->size = w->view.len;
    w->max_record = max_record;
    if (((uintptr_t)w->base & 7) || w->size < 4096) {
        Writer_release(w, NULL);
        PyErr_SetString(PyExc_ValueError, "not a ring mapping");
        return -1;
    }
    w->off = w->stop = 4096;
    w->tbase = -4096;
    w->seq = 0;
    w->deadline = 0;
    w->busy = 0;
    return 0;
}

static void Writer_dealloc(Writer *w) {
    Writer_release(w, NULL);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef Writer_methods[] = {
    {"write_record", (PyCFunction)Writer_write_record, METH_O,
     "Encode a dict into the next frame and publish it: True, or None if not taken."},
    {"write_bytes", (PyCFunction)Writer_write_bytes, METH_O,
     "Copy bytes into the next frame and publish it: True, or None if not taken."},
    {"release", (PyCFunction)Writer_release, METH_NOARGS,
     "Give the mapping's buffer back; every later write is declined."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Writer_members[] = {
    {"off", T_PYSSIZET, offsetof(Writer, off), 0, "file offset of the next frame"},
    {"tbase", T_PYSSIZET, offsetof(Writer, tbase), 0, "tail == tbase + off"},
    {"seq", T_PYSSIZET, offsetof(Writer, seq), 0, "the next record's sequence number"},
    {"stop", T_PYSSIZET, offsetof(Writer, stop), 0, "a frame may end at or before it"},
    {"deadline", T_DOUBLE, offsetof(Writer, deadline), 0,
     "decline from this time.monotonic() on (the careful path's next look), 0: never"},
    {"busy", T_INT, offsetof(Writer, busy), 0, "nonzero while the careful path writes"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ringbuf._cring.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writer(mmap, max_record_bytes): the native producer of one ring.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
    .tp_members = Writer_members,
};

/* Hot(careful): the client's record_hit on the native path, a C callable.
 *
 * hot(record) hands the record to the installed Writer (set_writer); when
 * it declines (None), or no writer is installed, it returns careful(record),
 * the pure record_hit. No Python frame runs on the way to the frame.
 */
typedef struct {
    PyObject_HEAD
    PyObject *careful;
    Writer *writer;
    vectorcallfunc vectorcall;
} Hot;

static PyObject *Hot_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames) {
    Hot *h = (Hot *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "record_hit(record) takes one argument");
        return NULL;
    }
    Writer *w = h->writer;
    if (w != NULL) {
        PyObject *done = Writer_write_record(w, args[0]);
        if (done != Py_None) return done;
        Py_DECREF(done);
    }
    return PyObject_CallOneArg(h->careful, args[0]);
}

static PyObject *Hot_set_writer(Hot *h, PyObject *w) {
    if (w != Py_None && !PyObject_TypeCheck(w, &WriterType)) {
        PyErr_SetString(PyExc_TypeError, "set_writer(Writer or None)");
        return NULL;
    }
    Writer *old = h->writer;
    h->writer = w == Py_None ? NULL : (Writer *)Py_NewRef(w);
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static int Hot_init(Hot *h, PyObject *args, PyObject *kw) {
    PyObject *careful;
    if (!PyArg_ParseTuple(args, "O", &careful)) return -1;
    if (!PyCallable_Check(careful)) {
        PyErr_SetString(PyExc_TypeError, "Hot(careful): careful must be callable");
        return -1;
    }
    Py_XSETREF(h->careful, Py_NewRef(careful));
    h->vectorcall = Hot_vectorcall;
    return 0;
}

static int Hot_traverse(Hot *h, visitproc visit, void *arg) {
    Py_VISIT(h->careful);
    return 0;
}

static int Hot_clear(Hot *h) {
    Py_CLEAR(h->careful);
    Py_CLEAR(h->writer);
    return 0;
}

static void Hot_dealloc(Hot *h) {
    PyObject_GC_UnTrack(h);
    Hot_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyMethodDef Hot_methods[] = {
    {"set_writer", (PyCFunction)Hot_set_writer, METH_O,
     "Install the open ring's Writer (or None: every record goes to careful)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ringbuf._cring.Hot",
    .tp_basicsize = sizeof(Hot),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Hot(careful): record_hit on the native path; careful(record) takes the rest.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Hot_init,
    .tp_dealloc = (destructor)Hot_dealloc,
    .tp_traverse = (traverseproc)Hot_traverse,
    .tp_clear = (inquiry)Hot_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Hot, vectorcall),
    .tp_methods = Hot_methods,
};

/* load_acquire(buffer, offset): the aligned uint64 at byte `offset`, acquire load. */
static PyObject *load_acquire(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "load_acquire(buffer, offset)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[1]);
    if (off == -1 && PyErr_Occurred()) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) return NULL;
    if (off < 0 || off % 8 || off + 8 > v.len || ((uintptr_t)v.buf & 7)) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "offset out of the buffer or not 8-aligned");
        return NULL;
    }
    uint64_t x = __atomic_load_n((uint64_t *)((char *)v.buf + off), __ATOMIC_ACQUIRE);
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLongLong(x);
}

/* encode(obj): what write_record would put in a frame, as bytes, or None (tests). */
static PyObject *encode(PyObject *mod, PyObject *obj) {
    Py_ssize_t cap = 1 << 16;
    for (;;) {
        PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
        if (out == NULL) return NULL;
        unsigned char *start = (unsigned char *)PyBytes_AS_STRING(out);
        Enc e = {start, start + cap};
        int r = put_obj(&e, obj, 0);
        if (r == 0) {
            _PyBytes_Resize(&out, (Py_ssize_t)(e.p - start));
            return out;
        }
        Py_DECREF(out);
        if (r == NOT_TAKEN || cap >= ((Py_ssize_t)1 << 32)) Py_RETURN_NONE;
        cap *= 4;
    }
}

static PyMethodDef module_methods[] = {
    {"load_acquire", (PyCFunction)(void (*)(void))load_acquire, METH_FASTCALL,
     "The aligned uint64 at a byte offset of a buffer, loaded with acquire semantics."},
    {"encode", (PyCFunction)encode, METH_O,
     "The msgpack the fast path writes for obj, or None if it does not take it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ringbuf._cring",
    "The native fast path of a ring's producer (ringbuf/_native.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__cring(void) {
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&HotType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&HotType);
    if (PyModule_AddObject(m, "Hot", (PyObject *)&HotType) < 0) {
        Py_DECREF(&HotType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
