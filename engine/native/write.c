/* JSON writer: Arrow columns → one JSON object per row, in one pass over the batch.
 *
 * Why it exists: polars' `struct.json_encode` cost W1 about 0.7 µs per routed record, and
 * nulls came out as `"field":null`, which the codec then removed row by row.
 *
 * What it writes: each row as an object of its non-null fields in column order; a null
 * field (or a NaN/infinite float, which JSON cannot hold) is left out, at every level of
 * nesting; inside a list a null item is written as `null`. Strings are escaped as JSON
 * requires and otherwise written as they are (Arrow strings are valid UTF-8); a float is
 * written as the shortest text that reads back as the same double (Python's repr, `.0` on
 * integral values; a fixed-point fast path covers the usual magnitudes); RAW columns hold
 * JSON text made elsewhere and are copied.
 *
 * Interface (engine._native.write): write(plan, rows) with
 *   plan: a list of (kind, key, parent, validity, offsets, values, offset) in pre-order;
 *         entry 0 is the row (kind STRUCT, parent -1); `key` is the member's JSON name with
 *         its quotes and colon (b'"id":'); validity/offsets/values are buffer addresses
 *         (0 for none) of an Arrow array whose first element is at `offset`. A struct's
 *         children are offset as the struct is (pyarrow's StructArray.field); a list's item
 *         is its whole values array. The caller keeps the arrays alive for the call.
 *   rows: how many rows.
 *   terminator: bytes written after each row, inside its value (b"\n" makes the data an
 *         NDJSON body as it is, with no join afterwards).
 * returns (offsets, data), each (address, size, owner): a large_string array's buffers.
 */
#include "buffer.h"

#include <math.h>

enum {
    W_STR = 0,    /* large_string: offsets, values */
    W_INT = 1,    /* int64: values */
    W_FLOAT = 2,  /* float64: values */
    W_BOOL = 3,   /* bitmap: values */
    W_STRUCT = 4, /* children */
    W_LIST = 5,   /* large_list: offsets, one child */
    W_RAW = 6,    /* large_string of JSON text: offsets, values */
    W_NULL = 7,   /* null type: nothing */
    W_VIEW = 8,   /* string_view: values = the views, offsets = the data buffers' addresses */
};

typedef struct {
    int kind;
    const char *key;
    Py_ssize_t key_len;
    int *children;
    int n_children;
    const uint8_t *validity;
    const int64_t *offsets;
    const char *values;
    int64_t offset;
} Column;

typedef struct {
    Column *columns;
    Buf out;
    int failed; /* memory ran out, or a float could not be formatted */
} Writer;

#define EMIT(w, src, n)                                     \
    do {                                                    \
        if (buf_push(&(w)->out, (src), (n)) < 0) {          \
            (w)->failed = 1;                                \
            return;                                         \
        }                                                   \
    } while (0)

static inline int bit(const uint8_t *bits, int64_t i) { return (bits[i >> 3] >> (i & 7)) & 1; }

static inline int is_null(const Column *c, int64_t i) {
    int64_t p = c->offset + i;
    if (c->kind == W_NULL) return 1;
    if (c->validity && !bit(c->validity, p)) return 1;
    if (c->kind == W_FLOAT && !isfinite(((const double *)c->values)[p])) return 1;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* Room for n more bytes at the end of the output, or NULL (and the writer failed). */
static inline char *reserve(Writer *w, size_t n) {
    if (buf_grow(&w->out, n) < 0) {
        w->failed = 1;
        return NULL;
    }
    return w->out.ptr + w->out.len;
}

static void write_string(Writer *w, const char *s, int64_t n) {
    char *o = reserve(w, (size_t)n * 6 + 2); /* every byte escaped as \u00XX, at worst */
    if (!o) return;
    const unsigned char *bytes = (const unsigned char *)s;
    *o++ = '"';
    int64_t i = 0;
    while (i < n) {
        size_t run = plain_run(bytes + i, bytes + n, 0);
        memcpy(o, s + i, run);
        o += run;
        i += (int64_t)run;
        if (i >= n) break;
        unsigned char ch = bytes[i++];
        *o++ = '\\';
        switch (ch) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = HEX[ch >> 4];
            *o++ = HEX[ch & 15];
        }
    }
    *o++ = '"';
    w->out.len = (size_t)(o - w->out.ptr);
}

static void write_int(Writer *w, int64_t v) {
    char text[24], *end = text + sizeof text, *p = end;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    EMIT(w, p, (size_t)(end - p));
}

static const double POW10[] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,
                               1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17};

/* `v` in fixed notation if some m / 10^k (m < 2^53, k <= 17) reads back as exactly v: the
 * smallest such k gives the shortest such text. Reading "m/10^k" back is one correctly
 * rounded division (both operands exact), so the text round-trips by construction. */
static int write_fixed(Writer *w, double v) {
    double magnitude = fabs(v);
    if (!(magnitude >= 1e-4 && magnitude < 1e15)) return 0;
    for (int k = 0; k <= 17; k++) {
        double scaled = magnitude * POW10[k];
        if (scaled >= 9007199254740992.0) return 0;
        double m = nearbyint(scaled);
        if (m / POW10[k] != magnitude) continue;
        char text[40], *end = text + sizeof text, *p = end;
        uint64_t digits = (uint64_t)m;
        int decimals = k ? k : 1; /* an integral value is written with ".0" */
        for (int d = 0; d < decimals; d++) {
            *--p = (char)('0' + (k ? digits % 10 : 0));
            if (k) digits /= 10;
        }
        *--p = '.';
        do {
            *--p = (char)('0' + digits % 10);
            digits /= 10;
        } while (digits);
        if (v < 0) *--p = '-';
        if (buf_push(&w->out, p, (size_t)(end - p)) < 0) w->failed = 1;
        return 1;
    }
    return 0;
}

static void write_float(Writer *w, double v) {
    if (write_fixed(w, v)) return;
    char *text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!text) {
        w->failed = 1;
        return;
    }
    size_t n = strlen(text);
    int pushed = buf_push(&w->out, text, n);
    PyMem_Free(text);
    if (pushed < 0) w->failed = 1;
}

static void write_value(Writer *w, const Column *c, int64_t i);

static void write_object(Writer *w, const Column *c, int64_t i) {
    EMIT(w, "{", 1);
    int first = 1;
    for (int k = 0; k < c->n_children && !w->failed; k++) {
        const Column *field = &w->columns[c->children[k]];
        if (is_null(field, i)) continue;
        char *o = reserve(w, (size_t)field->key_len + 1);
        if (!o) return;
        if (!first) *o++ = ',';
        first = 0;
        memcpy(o, field->key, (size_t)field->key_len);
        w->out.len = (size_t)(o + field->key_len - w->out.ptr);
        write_value(w, field, i);
    }
    EMIT(w, "}", 1);
}

static void write_value(Writer *w, const Column *c, int64_t i) {
    int64_t p = c->offset + i;
    switch (c->kind) {
    case W_STR:
        write_string(w, c->values + c->offsets[p], c->offsets[p + 1] - c->offsets[p]);
        return;
    case W_VIEW: {
        /* Arrow's 16-byte view: length, then the bytes inline (up to 12) or a 4-byte
         * prefix, the index of the data buffer and the offset in it */
        const char *view = c->values + p * 16;
        int32_t length, buffer, offset;
        memcpy(&length, view, 4);
        if (length <= 12) {
            write_string(w, view + 4, length);
            return;
        }
        memcpy(&buffer, view + 8, 4);
        memcpy(&offset, view + 12, 4);
        write_string(w, (const char *)(uintptr_t)c->offsets[buffer] + offset, length);
        return;
    }
    case W_RAW:
        EMIT(w, c->values + c->offsets[p], (size_t)(c->offsets[p + 1] - c->offsets[p]));
        return;
    case W_INT:
        write_int(w, ((const int64_t *)c->values)[p]);
        return;
    case W_FLOAT:
        write_float(w, ((const double *)c->values)[p]);
        return;
    case W_BOOL:
        if (bit((const uint8_t *)c->values, p)) EMIT(w, "true", 4);
        else EMIT(w, "false", 5);
        return;
    case W_STRUCT:
        write_object(w, c, i); /* children come offset like their struct (pyarrow .field) */
        return;
    case W_LIST: {
        const Column *item = &w->columns[c->children[0]];
        EMIT(w, "[", 1);
        for (int64_t j = c->offsets[p]; j < c->offsets[p + 1] && !w->failed; j++) {
            if (j > c->offsets[p]) EMIT(w, ",", 1);
            if (is_null(item, j)) EMIT(w, "null", 4);
            else write_value(w, item, j);
        }
        EMIT(w, "]", 1);
        return;
    }
    default:
        EMIT(w, "null", 4);
    }
}

static int load_columns(PyObject *plan, Writer *w, Py_ssize_t *count) {
    PyObject *items = PySequence_Fast(plan, "plan must be a sequence");
    if (!items) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    int *parents = NULL;
    if (n < 1 || n > 100000) {
        PyErr_SetString(PyExc_ValueError, "plan must hold a row and at most 100000 columns");
        goto fail;
    }
    w->columns = calloc((size_t)n, sizeof(Column));
    parents = calloc((size_t)n, sizeof(int));
    if (!w->columns || !parents) {
        PyErr_NoMemory();
        goto fail;
    }
    *count = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Column *c = &w->columns[i];
        unsigned long long validity, offsets, values;
        long long offset;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(items, i), "iy#iKKKL", &c->kind, &c->key,
                              &c->key_len, &parents[i], &validity, &offsets, &values, &offset))
            goto fail;
        c->validity = (const uint8_t *)(uintptr_t)validity;
        c->offsets = (const int64_t *)(uintptr_t)offsets;
        c->values = (const char *)(uintptr_t)values;
        c->offset = offset;
        int needs_values = c->kind != W_STRUCT && c->kind != W_LIST && c->kind != W_NULL;
        int needs_offsets = c->kind == W_STR || c->kind == W_RAW || c->kind == W_LIST;
        if (c->kind < W_STR || c->kind > W_VIEW || parents[i] >= i ||
            (i > 0) != (parents[i] >= 0) || (needs_values && !c->values) ||
            (needs_offsets && !c->offsets) || offset < 0) {
            PyErr_Format(PyExc_ValueError, "plan entry %zd is malformed", i);
            goto fail;
        }
        if (i > 0) w->columns[parents[i]].n_children++;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Column *c = &w->columns[i];
        if ((c->kind == W_LIST && c->n_children != 1) ||
            (c->n_children && c->kind != W_STRUCT && c->kind != W_LIST)) {
            PyErr_Format(PyExc_ValueError, "plan entry %zd: wrong number of children", i);
            goto fail;
        }
        if (c->n_children && !(c->children = malloc(sizeof(int) * (size_t)c->n_children))) {
            PyErr_NoMemory();
            goto fail;
        }
        c->n_children = 0;
    }
    for (Py_ssize_t i = 1; i < n; i++) {
        Column *parent = &w->columns[parents[i]];
        parent->children[parent->n_children++] = (int)i;
    }
    if (w->columns[0].kind != W_STRUCT) {
        PyErr_SetString(PyExc_ValueError, "plan entry 0 must be the row (a struct)");
        goto fail;
    }
    free(parents);
    Py_DECREF(items);
    return 0;
fail:
    free(parents);
    Py_DECREF(items);
    return -1;
}

PyObject *json_write(PyObject *self, PyObject *args) {
    PyObject *plan, *result = NULL;
    Py_ssize_t rows, count = 0, terminator_len;
    const char *terminator;
    if (!PyArg_ParseTuple(args, "Ony#", &plan, &rows, &terminator, &terminator_len)) return NULL;
    Writer w = {0};
    Buf offsets = {0};
    if (rows < 0) {
        PyErr_SetString(PyExc_ValueError, "rows must be >= 0");
        return NULL;
    }
    if (load_columns(plan, &w, &count) < 0) goto done;
    if (buf_grow(&offsets, (size_t)(rows + 1) * 8) < 0 || buf_grow(&w.out, (size_t)rows * 256 + 1) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *ends = (int64_t *)offsets.ptr;
    ends[0] = 0;
    const Column *row = &w.columns[0];
    for (Py_ssize_t r = 0; r < rows && !w.failed; r++) {
        write_object(&w, row, r);
        if (terminator_len && buf_push(&w.out, terminator, (size_t)terminator_len) < 0)
            w.failed = 1;
        ends[r + 1] = (int64_t)w.out.len;
    }
    if (w.failed) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    offsets.len = (size_t)(rows + 1) * 8;
    PyObject *offsets_obj = buf_hand_over(&offsets);
    PyObject *data_obj = offsets_obj ? buf_hand_over(&w.out) : NULL;
    if (data_obj) result = PyTuple_Pack(2, offsets_obj, data_obj);
    Py_XDECREF(offsets_obj);
    Py_XDECREF(data_obj);
done:
    if (w.columns) {
        for (Py_ssize_t i = 0; i < count; i++) free(w.columns[i].children);
        free(w.columns);
    }
    free(w.out.ptr);
    free(offsets.ptr);
    return result;
}
