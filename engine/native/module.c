/* engine._native: the JSON scanner (scan.c), writer (write.c), NDJSON line splitter
 * (lines.c), Kafka's murmur2 (murmur2.c) and record sets (records.c), the dedup step's id
 * index (ids.c) and tumbling windows' table (windows.c). */
#include "buffer.h"

PyObject *json_scan(PyObject *self, PyObject *args);
PyObject *json_write(PyObject *self, PyObject *args);
PyObject *json_split_lines(PyObject *self, PyObject *args);
PyObject *kafka_murmur2_column(PyObject *self, PyObject *args);
PyObject *kafka_records(PyObject *self, PyObject *args);
PyObject *kafka_batch(PyObject *self, PyObject *args);
extern PyTypeObject IdIndexType;
extern PyTypeObject TumblingTableType;

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
     "write(plan, rows, terminator) -> (offsets, data): Arrow columns to JSON objects."},
    {"split_lines", json_split_lines, METH_VARARGS,
     "split_lines(data, final) -> (count, consumed, offsets, values): NDJSON lines."},
    {"kafka_records", kafka_records, METH_VARARGS,
     "kafka_records(data, fetch_offset, max_records) -> columns of a fetched record set."},
    {"kafka_batch", kafka_batch, METH_VARARGS,
     "kafka_batch(keys, values, rows, start, max_bytes, timestamp_ms) -> (record batch, end)."},
    {"murmur2", kafka_murmur2_column, METH_VARARGS,
     "murmur2(offsets, data) -> uint32 bytes: Kafka's murmur2 of each key."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "Conflux's native hot-path code (engine/native).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&IdIndexType) < 0 || PyType_Ready(&TumblingTableType) < 0) return NULL;
    PyObject *created = PyModule_Create(&module);
    if (!created) return NULL;
    if (PyModule_AddObjectRef(created, "IdIndex", (PyObject *)&IdIndexType) < 0 ||
        PyModule_AddObjectRef(created, "TumblingTable", (PyObject *)&TumblingTableType) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
