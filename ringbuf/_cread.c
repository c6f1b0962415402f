/* ringbuf._cread: the native frame scanner of a ring's reader (glue: ringbuf/_scan.py).
 *
 * scan_packed(mm, off, seg_end, seq, count, nbytes, budget, limit, nonempty, append)
 *
 * is ringbuf._scan._scan_tagged for the flusher: the same frames taken, the
 * same stops and the same returned (off, seq, nbytes, why), but instead of
 * one bytes object per record it calls append(packed) at most once, with
 * ONE bytes object holding every record taken, each as a msgpack bin
 * (bin8/16/32 header, then the payload), exactly what msgpack.packb writes
 * for each element of a list of those payloads. A stream entry's ``recs``
 * is then a msgpack array header followed by these bytes
 * (collector.common.stream.encode_packed_entry): one copy per record, out of
 * the ring, and no Python object per record.
 *
 * Two passes over the segment: the frame headers alone decide what is taken
 * (the checks of _scan_tagged: inside the segment, length <= limit, the
 * expected seq, the check word TAG; the byte budget), then the payloads are
 * copied into a bytes object of exactly the right size. Rings with CRC-32
 * check words use the Python scanner (ringbuf/_scan.py).
 *
 * It reads the mapping only, never writes it, and runs no Python code
 * between the checks and the copy, so the frames it checked are the frames
 * it copies (the producer never rewrites a published frame before head
 * passes it, and head moves only on the reader's commit).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ring layout is little-endian; the native path is built on little-endian CPUs only"
#endif

#define TAG 0xC0113C70u
#define FRAME_HEADER 16

enum { STOP_DONE = 0, STOP_END = 1, STOP_ODD = 2 };

static inline Py_ssize_t bin_header_size(uint32_t n) {
    return n < 256 ? 2 : n < 65536 ? 3 : 5;
}

static PyObject *scan_packed(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "scan_packed(mm, off, seg_end, seq, count, nbytes, "
                                         "budget, limit, nonempty, append)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[1]);
    Py_ssize_t seg_end = PyLong_AsSsize_t(args[2]);
    long long seq = PyLong_AsLongLong(args[3]);
    Py_ssize_t count = PyLong_AsSsize_t(args[4]);
    long long nbytes = PyLong_AsLongLong(args[5]);
    long long budget = PyLong_AsLongLong(args[6]);
    long long limit = PyLong_AsLongLong(args[7]);
    int nonempty = PyObject_IsTrue(args[8]);
    if (PyErr_Occurred() || nonempty < 0) return NULL;
    PyObject *append = args[9];

    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *base = (const unsigned char *)view.buf;
    if (off < 0 || seg_end < off || seg_end > view.len || ((uintptr_t)base & 7) || (off & 7)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan_packed: segment out of the buffer or unaligned");
        return NULL;
    }

    /* pass 1: the headers decide what is taken */
    const Py_ssize_t start = off;
    const long long seq0 = seq;
    Py_ssize_t out_size = 0;
    int why = STOP_DONE;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (off + FRAME_HEADER > seg_end) {  /* only padding (or nothing) fits here */
            why = STOP_ODD;
            break;
        }
        uint64_t w[2];
        memcpy(w, base + off, 16);
        uint32_t length = (uint32_t)w[0], check = (uint32_t)(w[0] >> 32);
        Py_ssize_t end = off + FRAME_HEADER + (Py_ssize_t)(((uint64_t)length + 7) & ~(uint64_t)7);
        if (end > seg_end || (long long)length > limit || (long long)w[1] != seq
                || check != TAG) {
            why = STOP_ODD;
            break;
        }
        if (nbytes + (long long)length > budget && (nonempty || off != start)) {
            why = STOP_DONE;
            break;
        }
        out_size += bin_header_size(length) + (Py_ssize_t)length;
        nbytes += length;
        seq += 1;
        off = end;
        if (end == seg_end) {
            why = STOP_END;
            break;
        }
    }

    /* pass 2: one bytes object, each payload as a msgpack bin */
    if (seq != seq0) {
        PyObject *packed = PyBytes_FromStringAndSize(NULL, out_size);
        if (packed == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(packed);
        Py_ssize_t at = start;
        for (long long k = seq0; k < seq; k++) {
            uint32_t length;
            memcpy(&length, base + at, 4);
            if (length < 256) {
                p[0] = 0xc4;
                p[1] = (unsigned char)length;
                p += 2;
            } else if (length < 65536) {
                p[0] = 0xc5;
                p[1] = (unsigned char)(length >> 8);
                p[2] = (unsigned char)length;
                p += 3;
            } else {
                uint32_t be = __builtin_bswap32(length);
                p[0] = 0xc6;
                memcpy(p + 1, &be, 4);
                p += 5;
            }
            memcpy(p, base + at + FRAME_HEADER, length);
            p += length;
            at += FRAME_HEADER + (Py_ssize_t)(((uint64_t)length + 7) & ~(uint64_t)7);
        }
        PyBuffer_Release(&view);
        PyObject *r = PyObject_CallOneArg(append, packed);
        Py_DECREF(packed);
        if (r == NULL) return NULL;
        Py_DECREF(r);
    } else {
        PyBuffer_Release(&view);
    }
    return Py_BuildValue("(nLLi)", off, seq, nbytes, why);
}

static PyMethodDef module_methods[] = {
    {"scan_packed", (PyCFunction)(void (*)(void))scan_packed, METH_FASTCALL,
     "Take the valid frames of a ring segment as ONE bytes of msgpack bins (see the source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ringbuf._cread",
    "The native frame scanner of a ring's reader (ringbuf/_scan.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__cread(void) {
    return PyModule_Create(&module);
}
