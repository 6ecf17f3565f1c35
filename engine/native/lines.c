/* NDJSON line splitting: a block of text → the values of its lines, in one pass.
 *
 * Why it exists: splitting 8 MiB blocks with numpy and `bytes.replace` made several passes
 * over the bytes and cost W1 about 0.3 µs per line; this is one memchr and one copy.
 *
 * Interface (engine._native.split_lines): split_lines(data, final) → (count, consumed,
 * offsets, values): the lines of `data` ended by '\n' (a '\r' before it is dropped too),
 * as a large_binary array's int64 offsets and values, each (address, size, owner). With
 * `final`, text after the last newline is a line as well. `consumed` is how many bytes of
 * `data` the lines took: the rest begins the next block's first line.
 */
#include "buffer.h"

PyObject *json_split_lines(PyObject *self, PyObject *args) {
    Py_buffer data;
    int final;
    if (!PyArg_ParseTuple(args, "y*p", &data, &final)) return NULL;
    const char *start = data.buf, *end = start + data.len, *p = start;
    Buf offsets = {0}, values = {0};
    Py_ssize_t count = 0;
    int failed = buf_grow(&values, (size_t)data.len + 1) < 0;
    int64_t zero = 0;
    failed = failed || buf_push(&offsets, &zero, 8) < 0;
    Py_BEGIN_ALLOW_THREADS;
    while (!failed && p < end) {
        const char *newline = memchr(p, '\n', (size_t)(end - p));
        if (!newline && !final) break;
        const char *line_end = newline ? newline : end;
        if (line_end > p && line_end[-1] == '\r') line_end--;
        memcpy(values.ptr + values.len, p, (size_t)(line_end - p));
        values.len += (size_t)(line_end - p);
        int64_t position = (int64_t)values.len;
        failed = buf_push(&offsets, &position, 8) < 0;
        count++;
        p = newline ? newline + 1 : end;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    if (failed) {
        free(offsets.ptr);
        free(values.ptr);
        return PyErr_NoMemory();
    }
    PyObject *offsets_obj = buf_hand_over(&offsets);
    PyObject *values_obj = offsets_obj ? buf_hand_over(&values) : NULL;
    free(values.ptr);
    if (!values_obj) {
        Py_XDECREF(offsets_obj);
        return NULL;
    }
    return Py_BuildValue("(nnNN)", count, (Py_ssize_t)(p - start), offsets_obj, values_obj);
}
