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
 * The encoder (ringbuf/_cenc.h) writes what msgpack.packb and
 * ormsgpack.packb write for the types it takes (exact types only, no
 * subclasses): None, bool, int (the smallest of fixint/uint8..64/int8..64),
 * float (float64), str (fixstr, str8/16/32 of its UTF-8), bytes
 * (bin8/16/32), list and tuple (arrays), dict with str keys (maps, in
 * iteration order).
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
#include <sys/stat.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ring layout is little-endian; the native path is built on little-endian CPUs only"
#endif

#define TAG 0xC0113C70u
#define TAIL_OFF 128
#define WRITTEN_OFF 136

typedef struct {
    PyObject_HEAD
    /* what a write reads, together after the object's head */
    char *base;
    Py_ssize_t off, stop, seq, tbase;
    Py_ssize_t max_record;
    double deadline;  /* CLOCK_MONOTONIC seconds (time.monotonic()); 0: none */
    int busy;
    int have_view;
    Py_ssize_t size;
    Py_buffer view;
    /* the look at the file (watch()): its device and inode, path, size; every `interval` s */
    dev_t watch_dev;
    ino_t watch_ino;
    char *watch_path;
    Py_ssize_t watch_size;
    double interval;
} Writer;

/* Whether the ring's file is still the one mapped, as ringbuf._files.
 * ring_file_problem decides it (the open file's size unchanged, and the path
 * names the same file), in one system call: the path's device and inode are
 * the open file's (taken once by watch()), so its size is the open file's. */
static int file_ok(Writer *w) {
    struct stat b;
    if (stat(w->watch_path, &b) != 0) return 0;
    return b.st_dev == w->watch_dev && b.st_ino == w->watch_ino && b.st_size == w->watch_size;
}

/* Whether the write must go the careful way for a look at the ring's file:
 * a coarse clock read (vDSO, a few ns; at most one tick late) against
 * `deadline`. When due and watch() was called, the look is made here and,
 * when the file is fine, the next one is due `interval` later: the record
 * stays on the native path (the careful Python path would cost some 10 us,
 * in the request it lands in). Only a file that is not fine declines: the
 * careful path then finds out what happened (ringbuf._writepath, on_gone). */
static inline int look_due(Writer *w) {
    if (w->deadline <= 0) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    double now = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    if (now < w->deadline) return 0;
    if (w->watch_path == NULL || !file_ok(w)) return 1;
    w->deadline = now + w->interval;
    return 0;
}

#include "_cenc.h"

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
    Py_ssize_t part = n & 7;
    if (part) {  /* zero the padding: keep the low `part` bytes of the last word */
        unsigned char *last = (unsigned char *)frame + 16 + (n - part);
        uint64_t word;
        __builtin_memcpy(&word, last, 8);
        word &= ((uint64_t)1 << (8 * part)) - 1;
        __builtin_memcpy(last, &word, 8);
    }
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
    int why;
    unsigned char *p = put_record(start, start + room, record, &why);
    if (p == NULL) Py_RETURN_NONE;
    return publish(w, (Py_ssize_t)(p - start));
}

static PyObject *Writer_write_bytes(Writer *w, PyObject *payload) {
    if (w->busy || w->base == NULL || Py_TYPE(payload) != &PyBytes_Type || look_due(w))
        Py_RETURN_NONE;
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    if (n > payload_room(w)) Py_RETURN_NONE;
    memcpy(w->base + w->off + 16, PyBytes_AS_STRING(payload), (size_t)n);
    return publish(w, n);
}

/* watch(fd, path, size, interval): make the look at the file in C (look_due):
 * the file open as fd, at path, of size bytes. */
static PyObject *Writer_watch(Writer *w, PyObject *args) {
    int fd;
    const char *path;
    Py_ssize_t size;
    double interval;
    if (!PyArg_ParseTuple(args, "isnd", &fd, &path, &size, &interval)) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    char *copy = PyMem_RawMalloc(strlen(path) + 1);
    if (copy == NULL) return PyErr_NoMemory();
    strcpy(copy, path);
    PyMem_RawFree(w->watch_path);
    w->watch_path = copy;
    w->watch_dev = st.st_dev;
    w->watch_ino = st.st_ino;
    w->watch_size = size;
    w->interval = interval;
    Py_RETURN_NONE;
}

static PyObject *Writer_release(Writer *w, PyObject *unused) {
    PyMem_RawFree(w->watch_path);
    w->watch_path = NULL;
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
    {"watch", (PyCFunction)Writer_watch, METH_VARARGS,
     "watch(fd, path, size, interval_s): look at the ring's file in C when deadline is due."},
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
        int r = 0;
        unsigned char *p = Py_TYPE(obj) == &PyDict_Type
            ? put_record(start, start + cap, obj, &r) : put_obj(start, start + cap, obj, 0, &r);
        if (p != NULL) {
            _PyBytes_Resize(&out, (Py_ssize_t)(p - start));
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

#if DICT_WALK
/* Sets dict_walk_ok when walking entries in place (ringbuf/_cenc.h) gives
 * what PyDict_Next gives, for dicts of 0 to 300 str keys with a deleted
 * one: the layout there is this interpreter's. -1 with an exception set. */
static int check_dict_walk(void) {
    static const int sizes[] = {0, 1, 5, 9, 40, 300};
    int ok = 1;
    dict_walk_ok = 1;
    for (size_t s = 0; ok && s < sizeof sizes / sizeof sizes[0]; s++) {
        PyObject *d = PyDict_New(), *k, *v;
        if (d == NULL) return -1;
        for (int i = 0; ok && i < sizes[s]; i++) {
            k = PyUnicode_FromFormat("k%d", i);
            v = PyLong_FromLong(i);
            ok = k != NULL && v != NULL && PyDict_SetItem(d, k, v) == 0;
            Py_XDECREF(k);
            Py_XDECREF(v);
        }
        if (ok && sizes[s] > 2) ok = PyDict_DelItemString(d, "k1") == 0;
        Py_ssize_t n = 0, pos = 0, i = 0;
        DictEntry *ent = ok ? dict_entries(d, &n) : NULL;
        ok = ok && ent != NULL;
        while (ok && PyDict_Next(d, &pos, &k, &v)) {
            while (i < n && ent[i].me_value == NULL) i++;
            ok = i < n && ent[i].me_key == k && ent[i].me_value == v;
            i++;
        }
        while (ok && i < n && ent[i].me_value == NULL) i++;
        ok = ok && i == n;
        Py_DECREF(d);
    }
    dict_walk_ok = ok;
    return PyErr_Occurred() ? -1 : 0;
}
#endif

PyMODINIT_FUNC PyInit__cring(void) {
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&HotType) < 0) return NULL;
#if DICT_WALK
    if (check_dict_walk() < 0) return NULL;
    int walk = dict_walk_ok;
#else
    int walk = 0;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "dict_walk", walk) < 0) {
        Py_DECREF(m);
        return NULL;
    }
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
