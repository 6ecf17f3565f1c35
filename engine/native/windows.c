/* TumblingTable: open tumbling windows of counts and integer sums per key, one pass a batch.
 *
 * Why it exists: the window steps merge a batch's rows with the open windows by a polars
 * group_by, about 4 ms a batch whatever its work; on W1, where nearly every window closes
 * in the batch that opens it, that was 0.6 µs per message. Tumbling windows whose
 * aggregates are counts and sums of integers (W1's) run here instead, row by row against a
 * hash table; `engine.operators.window` keeps every other case.
 *
 * The model is the window steps' (see engine/operators/window.py): per partition, the
 * watermark after a row is the largest event time so far minus the allowed lateness; a row
 * whose window [start, start + size) ends at or before its watermark is late; a row's
 * sequence number counts its partition's rows. After the batch, every window the
 * partition's watermark has passed is closed. Windows are kept, and closed windows emitted,
 * in the order of their first rows, open windows from earlier batches first.
 *
 * Interface (engine._native.TumblingTable(size_ms, lateness_ms, accumulators)):
 *   accumulators: one byte per accumulator, b"c" (count rows) or b"s" (sum a value).
 *   process(partitions int32, times int64, keys, first_keys, values) -> (late, closed)
 *       keys and first_keys are (offsets int64, data, validity uint8 | None), a string
 *       column each; values one int64 buffer per accumulator (a count's is ignored, pass
 *       b""). `late` has one byte per row; `closed` is the closed windows' columns.
 *   windows() -> the open windows' columns, without closing them (snapshots).
 *   add_windows(columns): open windows as `windows()` returned them (restore).
 *   progress() -> [(partition, largest event time, rows seen)]; set_progress(p, largest, seen).
 * A window's columns: (partitions int32, starts int64, keys, first_keys, first_sequence
 * int64, last_sequence int64, accumulators: list of int64), each column a bytes object and
 * keys as (offsets, data, validity).
 */
#include "keys.h"

typedef struct {
    uint64_t hash;
    int64_t start, first_seq, last_seq;
    uint64_t key_at, first_key_at;
    uint32_t key_len, first_key_len; /* UINT32_MAX: null */
    int32_t partition;
    int32_t closed;
} Window;

typedef struct {
    PyObject_HEAD
    int64_t size, lateness;
    int n_acc;
    char ops[16];
    Window *windows;
    int64_t *acc; /* n_acc per window */
    size_t count, room;
    uint32_t *slots;
    size_t capacity;
    Buf keys;
    Partitions partitions;
} TumblingTable;

static uint64_t window_hash(int32_t partition, int64_t start, const unsigned char *key,
                            uint32_t len) {
    return hash_key(mix64(((uint64_t)(uint32_t)partition << 32) ^ mix64((uint64_t)start)), key,
                    len);
}

static int rebuild_slots(TumblingTable *t, size_t capacity) {
    if (capacity != t->capacity) {
        uint32_t *slots = realloc(t->slots, capacity * sizeof(uint32_t));
        if (!slots) return -1;
        t->slots = slots;
        t->capacity = capacity;
    }
    memset(t->slots, 0, capacity * sizeof(uint32_t));
    size_t mask = capacity - 1;
    for (size_t i = 0; i < t->count; i++) {
        size_t at = (size_t)t->windows[i].hash & mask;
        while (t->slots[at]) at = (at + 1) & mask;
        t->slots[at] = (uint32_t)(i + 1);
    }
    return 0;
}

/* Room for `extra` more windows, the table at most half full; -1 when memory ran out. */
static int reserve(TumblingTable *t, size_t extra) {
    size_t need = t->count + extra;
    if (need >= UINT32_MAX / 4) return -1;
    if (need > t->room) {
        size_t room = t->room ? t->room : 1024;
        while (room < need) room *= 2;
        Window *windows = realloc(t->windows, room * sizeof(Window));
        if (!windows) return -1;
        t->windows = windows;
        int64_t *acc = realloc(t->acc, room * (size_t)(t->n_acc ? t->n_acc : 1) * 8);
        if (!acc) return -1;
        t->acc = acc;
        t->room = room;
    }
    size_t capacity = t->capacity ? t->capacity : 2048;
    while (capacity < 2 * need) capacity *= 2;
    if (capacity != t->capacity) return rebuild_slots(t, capacity);
    return 0;
}

static int same_key(const TumblingTable *t, const Window *w, const unsigned char *key,
                    uint32_t len) {
    if (w->key_len != len) return 0;
    return len == NULL_LEN || memcmp(t->keys.ptr + w->key_at, key, len) == 0;
}

/* Store bytes in the arena; their position, or -1 when memory ran out. */
static int64_t keep_bytes(TumblingTable *t, const unsigned char *bytes, uint32_t len) {
    if (len == NULL_LEN || len == 0) return 0;
    int64_t at = (int64_t)t->keys.len;
    return buf_push(&t->keys, bytes, len) < 0 ? -1 : at;
}

/* The window of (partition, key, start), opened when new; NULL when memory ran out. */
static Window *window_for(TumblingTable *t, int32_t partition, int64_t start,
                          const unsigned char *key, uint32_t len, int *opened) {
    uint64_t hash = window_hash(partition, start, key, len);
    size_t mask = t->capacity - 1, at = (size_t)hash & mask;
    *opened = 0;
    for (;;) {
        uint32_t slot = t->slots[at];
        if (!slot) break;
        Window *w = &t->windows[slot - 1];
        if (w->hash == hash && w->partition == partition && w->start == start &&
            same_key(t, w, key, len))
            return w;
        at = (at + 1) & mask;
    }
    int64_t key_at = keep_bytes(t, key, len);
    if (key_at < 0) return NULL;
    Window *w = &t->windows[t->count];
    *w = (Window){hash, start, 0, 0, (uint64_t)key_at, 0, len, NULL_LEN, partition, 0};
    memset(&t->acc[t->count * (size_t)t->n_acc], 0, (size_t)t->n_acc * 8);
    t->slots[at] = (uint32_t)++t->count;
    *opened = 1;
    return w;
}

/* Columns of the windows chosen by `chosen` (NULL: all), in order; NULL on error. */
static PyObject *columns_of(TumblingTable *t, const char *chosen) {
    size_t n = 0, key_bytes = 0, first_bytes = 0;
    for (size_t i = 0; i < t->count; i++) {
        if (chosen && !chosen[i]) continue;
        n++;
        if (t->windows[i].key_len != NULL_LEN) key_bytes += t->windows[i].key_len;
        if (t->windows[i].first_key_len != NULL_LEN) first_bytes += t->windows[i].first_key_len;
    }
    PyObject *parts = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * 4);
    PyObject *starts = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * 8);
    PyObject *key_offsets = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n + 1) * 8);
    PyObject *key_data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)key_bytes);
    PyObject *key_valid = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    PyObject *first_offsets = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n + 1) * 8);
    PyObject *first_data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)first_bytes);
    PyObject *first_valid = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    PyObject *first_seq = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * 8);
    PyObject *last_seq = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * 8);
    PyObject *accs = PyList_New(t->n_acc);
    PyObject *all[] = {parts,      starts,        key_offsets, key_data, key_valid, first_offsets,
                       first_data, first_valid, first_seq,   last_seq, accs};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (!all[i]) goto fail;
    for (int a = 0; a < t->n_acc; a++) {
        PyObject *column = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * 8);
        if (!column) goto fail;
        PyList_SET_ITEM(accs, a, column);
    }
    int32_t *part_out = (int32_t *)PyBytes_AS_STRING(parts);
    int64_t *start_out = (int64_t *)PyBytes_AS_STRING(starts);
    int64_t *key_off = (int64_t *)PyBytes_AS_STRING(key_offsets);
    int64_t *first_off = (int64_t *)PyBytes_AS_STRING(first_offsets);
    char *key_out = PyBytes_AS_STRING(key_data), *first_out = PyBytes_AS_STRING(first_data);
    char *key_ok = PyBytes_AS_STRING(key_valid), *first_ok = PyBytes_AS_STRING(first_valid);
    int64_t *first_seq_out = (int64_t *)PyBytes_AS_STRING(first_seq);
    int64_t *last_seq_out = (int64_t *)PyBytes_AS_STRING(last_seq);
    size_t row = 0, key_at = 0, first_at = 0;
    key_off[0] = first_off[0] = 0;
    for (size_t i = 0; i < t->count; i++) {
        if (chosen && !chosen[i]) continue;
        const Window *w = &t->windows[i];
        part_out[row] = w->partition;
        start_out[row] = w->start;
        key_ok[row] = w->key_len != NULL_LEN;
        if (key_ok[row]) {
            memcpy(key_out + key_at, t->keys.ptr + w->key_at, w->key_len);
            key_at += w->key_len;
        }
        first_ok[row] = w->first_key_len != NULL_LEN;
        if (first_ok[row]) {
            memcpy(first_out + first_at, t->keys.ptr + w->first_key_at, w->first_key_len);
            first_at += w->first_key_len;
        }
        key_off[row + 1] = (int64_t)key_at;
        first_off[row + 1] = (int64_t)first_at;
        first_seq_out[row] = w->first_seq;
        last_seq_out[row] = w->last_seq;
        for (int a = 0; a < t->n_acc; a++)
            ((int64_t *)PyBytes_AS_STRING(PyList_GET_ITEM(accs, a)))[row] =
                t->acc[i * (size_t)t->n_acc + (size_t)a];
        row++;
    }
    return Py_BuildValue("(NN(NNN)(NNN)NNN)", parts, starts, key_offsets, key_data, key_valid,
                         first_offsets, first_data, first_valid, first_seq, last_seq, accs);
fail:
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) Py_XDECREF(all[i]);
    return NULL;
}

/* Drop the closed windows, keeping order; their keys' bytes go with them. */
static int drop_closed(TumblingTable *t) {
    Buf keys = {0};
    size_t kept = 0;
    for (size_t i = 0; i < t->count; i++) {
        Window w = t->windows[i];
        if (w.closed) continue;
        uint64_t key_at = keys.len, first_at;
        if (w.key_len != NULL_LEN && buf_push(&keys, t->keys.ptr + w.key_at, w.key_len) < 0)
            goto nomemory;
        first_at = keys.len;
        if (w.first_key_len != NULL_LEN &&
            buf_push(&keys, t->keys.ptr + w.first_key_at, w.first_key_len) < 0)
            goto nomemory;
        w.key_at = key_at;
        w.first_key_at = first_at;
        memmove(&t->acc[kept * (size_t)t->n_acc], &t->acc[i * (size_t)t->n_acc],
                (size_t)t->n_acc * 8);
        t->windows[kept++] = w;
    }
    free(t->keys.ptr);
    t->keys = keys;
    t->count = kept;
    return rebuild_slots(t, t->capacity);
nomemory:
    free(keys.ptr);
    return -1;
}

static PyObject *table_process(TumblingTable *t, PyObject *args) {
    Py_buffer partitions_buf, times_buf;
    PyObject *keys_tuple, *first_tuple, *values_list;
    if (!PyArg_ParseTuple(args, "y*y*OOO", &partitions_buf, &times_buf, &keys_tuple, &first_tuple,
                          &values_list))
        return NULL;
    Py_ssize_t rows = partitions_buf.len / 4;
    PyObject *result = NULL, *late = NULL;
    Strings keys = {0}, first_keys = {0};
    Py_buffer values[16];
    int n_values = 0, keys_ok = 0, first_ok = 0;
    if (partitions_buf.len % 4 || times_buf.len != rows * 8 || !PyList_Check(values_list) ||
        PyList_GET_SIZE(values_list) != t->n_acc) {
        PyErr_SetString(PyExc_ValueError,
                        "TumblingTable.process: expected int32 partitions, int64 times and one "
                        "value buffer per accumulator");
        goto done;
    }
    if (strings_from(keys_tuple, &keys, &rows, "TumblingTable") < 0) goto done;
    keys_ok = 1;
    if (strings_from(first_tuple, &first_keys, &rows, "TumblingTable") < 0) goto done;
    first_ok = 1;
    for (; n_values < t->n_acc; n_values++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(values_list, n_values), &values[n_values],
                               PyBUF_SIMPLE) < 0)
            goto done;
        if (t->ops[n_values] == 's' && values[n_values].len != rows * 8) {
            n_values++;
            PyErr_SetString(PyExc_ValueError, "TumblingTable.process: a sum needs int64 values");
            goto done;
        }
    }
    late = PyBytes_FromStringAndSize(NULL, rows);
    if (!late || reserve(t, (size_t)rows) < 0) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    char *is_late = PyBytes_AS_STRING(late);
    const int32_t *partitions = partitions_buf.buf;
    const int64_t *times = times_buf.buf;
    Progress *progress = NULL;
    for (Py_ssize_t r = 0; r < rows; r++) {
        if (!progress || progress->partition != partitions[r]) {
            progress = progress_of(&t->partitions, partitions[r]);
            if (!progress) {
                PyErr_NoMemory();
                goto done;
            }
        }
        int64_t time = times[r], sequence = progress->seen++;
        if (time > progress->largest) progress->largest = time;
        int64_t remainder = time % t->size;
        int64_t start = time - (remainder < 0 ? remainder + t->size : remainder);
        is_late[r] = start + t->size <= behind_largest(progress, t->lateness);
        if (is_late[r]) continue;
        uint32_t len, first_len;
        const unsigned char *key = string_at(&keys, r, &len);
        const unsigned char *first_key = string_at(&first_keys, r, &first_len);
        int opened;
        Window *w = window_for(t, partitions[r], start, key, len, &opened);
        if (!w) {
            PyErr_NoMemory();
            goto done;
        }
        if (opened) {
            int64_t first_at = keep_bytes(t, first_key, first_len);
            if (first_at < 0) {
                PyErr_NoMemory();
                goto done;
            }
            w->first_key_at = (uint64_t)first_at;
            w->first_key_len = first_len;
            w->first_seq = sequence;
        }
        w->last_seq = sequence;
        int64_t *acc = &t->acc[(size_t)(w - t->windows) * (size_t)t->n_acc];
        for (int a = 0; a < t->n_acc; a++)
            acc[a] += t->ops[a] == 'c' ? 1 : ((const int64_t *)values[a].buf)[r];
    }
    char *closing = malloc(t->count + 1);
    if (!closing) {
        PyErr_NoMemory();
        goto done;
    }
    const Progress *cached = NULL;
    for (size_t i = 0; i < t->count; i++) {
        Window *w = &t->windows[i];
        if (!cached || cached->partition != w->partition)
            cached = progress_of(&t->partitions, w->partition);
        w->closed = closing[i] = w->start + t->size <= behind_largest(cached, t->lateness);
    }
    PyObject *closed = columns_of(t, closing);
    free(closing);
    if (!closed || drop_closed(t) < 0) {
        Py_XDECREF(closed);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    result = Py_BuildValue("(ON)", late, closed);
done:
    Py_XDECREF(late);
    for (int i = 0; i < n_values; i++) PyBuffer_Release(&values[i]);
    if (keys_ok) release_strings(&keys);
    if (first_ok) release_strings(&first_keys);
    PyBuffer_Release(&partitions_buf);
    PyBuffer_Release(&times_buf);
    return result;
}

static PyObject *table_windows(TumblingTable *t, PyObject *unused) { return columns_of(t, NULL); }

static PyObject *table_add_windows(TumblingTable *t, PyObject *args) {
    Py_buffer parts, starts, first_seq, last_seq;
    PyObject *keys_tuple, *first_tuple, *accs;
    if (!PyArg_ParseTuple(args, "(y*y*OOy*y*O)", &parts, &starts, &keys_tuple, &first_tuple,
                          &first_seq, &last_seq, &accs))
        return NULL;
    Py_ssize_t rows = parts.len / 4;
    PyObject *result = NULL;
    Strings keys, first_keys;
    int keys_ok = 0, first_ok = 0, n_acc = 0;
    Py_buffer acc_bufs[16];
    if (starts.len != rows * 8 || first_seq.len != rows * 8 || last_seq.len != rows * 8 ||
        !PyList_Check(accs) || PyList_GET_SIZE(accs) != t->n_acc) {
        PyErr_SetString(PyExc_ValueError, "TumblingTable.add_windows: columns do not match");
        goto done;
    }
    if (strings_from(keys_tuple, &keys, &rows, "TumblingTable") < 0) goto done;
    keys_ok = 1;
    if (strings_from(first_tuple, &first_keys, &rows, "TumblingTable") < 0) goto done;
    first_ok = 1;
    for (; n_acc < t->n_acc; n_acc++)
        if (PyObject_GetBuffer(PyList_GET_ITEM(accs, n_acc), &acc_bufs[n_acc], PyBUF_SIMPLE) < 0)
            goto done;
    for (int a = 0; a < t->n_acc; a++)
        if (acc_bufs[a].len != rows * 8) {
            PyErr_SetString(PyExc_ValueError, "TumblingTable.add_windows: accumulator length");
            goto done;
        }
    if (reserve(t, (size_t)rows) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        uint32_t len, first_len;
        const unsigned char *key = string_at(&keys, r, &len);
        const unsigned char *first_key = string_at(&first_keys, r, &first_len);
        int opened;
        Window *w = window_for(t, ((int32_t *)parts.buf)[r], ((int64_t *)starts.buf)[r], key,
                               len, &opened);
        int64_t first_at = w ? keep_bytes(t, first_key, first_len) : -1;
        if (first_at < 0) {
            PyErr_NoMemory();
            goto done;
        }
        if (!opened) {
            PyErr_SetString(PyExc_ValueError, "TumblingTable.add_windows: a window twice");
            goto done;
        }
        w->first_key_at = (uint64_t)first_at;
        w->first_key_len = first_len;
        w->first_seq = ((int64_t *)first_seq.buf)[r];
        w->last_seq = ((int64_t *)last_seq.buf)[r];
        for (int a = 0; a < t->n_acc; a++)
            t->acc[(size_t)(w - t->windows) * (size_t)t->n_acc + (size_t)a] =
                ((int64_t *)acc_bufs[a].buf)[r];
    }
    result = Py_NewRef(Py_None);
done:
    for (int a = 0; a < n_acc; a++) PyBuffer_Release(&acc_bufs[a]);
    if (keys_ok) release_strings(&keys);
    if (first_ok) release_strings(&first_keys);
    PyBuffer_Release(&parts);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&first_seq);
    PyBuffer_Release(&last_seq);
    return result;
}

static PyObject *table_progress(TumblingTable *t, PyObject *unused) {
    PyObject *result = PyList_New((Py_ssize_t)t->partitions.count);
    if (!result) return NULL;
    for (size_t i = 0; i < t->partitions.count; i++) {
        const Progress *p = &t->partitions.items[i];
        PyObject *largest = p->largest == INT64_MIN ? Py_NewRef(Py_None)
                                                     : PyLong_FromLongLong(p->largest);
        PyObject *entry = largest ? Py_BuildValue("(iNL)", p->partition, largest,
                                                  (long long)p->seen)
                                  : NULL;
        if (!entry) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, entry);
    }
    return result;
}

static PyObject *table_set_progress(TumblingTable *t, PyObject *args) {
    int partition;
    PyObject *largest;
    long long seen;
    if (!PyArg_ParseTuple(args, "iOL", &partition, &largest, &seen)) return NULL;
    long long value = INT64_MIN;
    if (largest != Py_None) {
        value = PyLong_AsLongLong(largest);
        if (value == -1 && PyErr_Occurred()) return NULL;
    }
    Progress *p = progress_of(&t->partitions, partition);
    if (!p) return PyErr_NoMemory();
    p->largest = value;
    p->seen = seen;
    Py_RETURN_NONE;
}

static int table_init(TumblingTable *t, PyObject *args, PyObject *kwargs) {
    long long size, lateness;
    const char *ops;
    Py_ssize_t n_ops;
    if (!PyArg_ParseTuple(args, "LLy#", &size, &lateness, &ops, &n_ops)) return -1;
    if (size <= 0 || lateness < 0 || n_ops > 16) {
        PyErr_SetString(PyExc_ValueError,
                        "TumblingTable: size_ms > 0, lateness_ms >= 0, at most 16 accumulators");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n_ops; i++)
        if (ops[i] != 'c' && ops[i] != 's') {
            PyErr_SetString(PyExc_ValueError, "TumblingTable: accumulators are b'c' or b's'");
            return -1;
        }
    t->size = size;
    t->lateness = lateness;
    t->n_acc = (int)n_ops;
    memcpy(t->ops, ops, (size_t)n_ops);
    return 0;
}

static void table_dealloc(TumblingTable *t) {
    free(t->windows);
    free(t->acc);
    free(t->slots);
    free(t->keys.ptr);
    free(t->partitions.items);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t table_len(TumblingTable *t) { return (Py_ssize_t)t->count; }

static PyMethodDef table_methods[] = {
    {"process", (PyCFunction)table_process, METH_VARARGS,
     "process(partitions, times, keys, first_keys, values) -> (late, closed windows)."},
    {"windows", (PyCFunction)table_windows, METH_NOARGS, "windows() -> the open windows."},
    {"add_windows", (PyCFunction)table_add_windows, METH_VARARGS,
     "add_windows(columns): open windows, as windows() returns them."},
    {"progress", (PyCFunction)table_progress, METH_NOARGS,
     "progress() -> [(partition, largest event time or None, rows seen)]."},
    {"set_progress", (PyCFunction)table_set_progress, METH_VARARGS,
     "set_progress(partition, largest, seen)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods table_sequence = {.sq_length = (lenfunc)table_len};

PyTypeObject TumblingTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "engine._native.TumblingTable",
    .tp_basicsize = sizeof(TumblingTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Open tumbling windows of counts and integer sums (engine/native/windows.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)table_init,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_methods = table_methods,
    .tp_as_sequence = &table_sequence,
};
