/* engine._json: the native JSON scanner (scan.c), writer (write.c) and NDJSON line
 * splitter (lines.c). */
#include "buffer.h"

PyObject *json_scan(PyObject *self, PyObject *args);
PyObject *json_write(PyObject *self, PyObject *args);
PyObject *json_split_lines(PyObject *self, PyObject *args);

static void free_capsule(PyObject *capsule) { free(PyCapsule_GetPointer(capsule, "conflux")); }

PyObject *buf_hand_over(Buf *b) {
    if (!b->ptr) Py_RETURN_NONE;
    PyObject *owner = PyCapsule_New(b->ptr, "conflux", free_capsule);
    if (!owner) return NULL;
    unsigned long long address = (unsigned long long)(uintptr_t)b->ptr;
    b->ptr = NULL; /* the capsule frees it now */
    return Py_BuildValue("(KnN)", address, (Py_ssize_t)b->len, owner);
}

static PyMethodDef methods[] = {
    {"scan", json_scan, METH_VARARGS,
     "scan(plan, data, offsets) -> (read, nodes): JSON object values to Arrow buffers."},
    {"write", json_write, METH_VARARGS,
     "write(plan, rows) -> (offsets, data): Arrow columns to one JSON object per row."},
    {"split_lines", json_split_lines, METH_VARARGS,
     "split_lines(data, final) -> (count, consumed, offsets, values): NDJSON lines."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_json",
                                    "Conflux's native JSON scanner and writer (engine/native).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__json(void) { return PyModule_Create(&module); }
