/* A string or binary column handed over from Python as (offsets, data, validity): int64
 * offsets (rows + 1) into the data, and one validity byte per row or None (no nulls); the
 * form `engine.batch.binary_columns` gives. The window table (windows.c), the dedup index
 * (ids.c) and the Kafka batch builder (records.c) take their keys and values this way. */
#ifndef CONFLUX_STRINGS_H
#define CONFLUX_STRINGS_H

#include "buffer.h"

/* The length `string_at` gives a null value: no value's bytes are this long. */
#define NULL_LEN UINT32_MAX

typedef struct {
    Py_buffer offsets, data, validity;
    int has_validity;
} Strings;

static inline void release_strings(Strings *s) {
    PyBuffer_Release(&s->offsets);
    PyBuffer_Release(&s->data);
    if (s->has_validity) PyBuffer_Release(&s->validity);
}

/* Parse and check a column; 0, or -1 with a ValueError naming `who`. `*rows` is how many
 * rows it must have, or -1 to take them from its offsets. On success the caller releases
 * it with `release_strings`. */
static inline int strings_from(PyObject *tuple, Strings *s, Py_ssize_t *rows, const char *who) {
    memset(s, 0, sizeof(*s));
    PyObject *validity;
    if (!PyArg_ParseTuple(tuple, "y*y*O", &s->offsets, &s->data, &validity)) return -1;
    if (validity != Py_None) {
        if (PyObject_GetBuffer(validity, &s->validity, PyBUF_SIMPLE) < 0) {
            release_strings(s);
            return -1;
        }
        s->has_validity = 1;
    }
    if (*rows < 0) *rows = s->offsets.len / 8 - 1;
    int ok = *rows >= 0 && s->offsets.len == (*rows + 1) * 8 &&
             (!s->has_validity || s->validity.len == *rows);
    const int64_t *offsets = s->offsets.buf;
    for (Py_ssize_t r = 0; ok && r < *rows; r++)
        ok = offsets[r] >= 0 && offsets[r] <= offsets[r + 1] && offsets[r + 1] <= s->data.len &&
             offsets[r + 1] - offsets[r] < NULL_LEN;
    if (!ok) {
        release_strings(s);
        PyErr_Format(PyExc_ValueError,
                     "%s: a string column needs rows + 1 int64 offsets within its data and one "
                     "validity byte per row",
                     who);
        return -1;
    }
    return 0;
}

/* Row `r`'s bytes and length (NULL and NULL_LEN for a null). */
static inline const unsigned char *string_at(const Strings *s, Py_ssize_t r, uint32_t *len) {
    if (s->has_validity && !((const unsigned char *)s->validity.buf)[r]) {
        *len = NULL_LEN;
        return NULL;
    }
    const int64_t *offsets = s->offsets.buf;
    *len = (uint32_t)(offsets[r + 1] - offsets[r]);
    return (const unsigned char *)s->data.buf + offsets[r];
}

#endif
