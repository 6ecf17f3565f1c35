/* IdIndex: the dedup step's memory of emitted ids, in one pass per batch.
 *
 * Why it exists: W1's dedup kept its index as sorted numpy arrays (np.insert per batch,
 * a binary search per row) beside a polars log of the emitted ids for snapshots; with
 * ~600,000 ids within W1's 10-minute horizon that cost ~0.65 µs per message, a sixth of
 * the whole pipeline. Here the rule is applied row by row in C against a hash table.
 *
 * The rule (W1 step 4, `engine.operators.dedup.Dedup`): per partition, `largest` is the
 * largest event time seen so far, this row included. A row whose id was already emitted on
 * its partition at a time >= largest - horizon is dropped; otherwise it is kept and its time
 * becomes the one later repeats are compared with. A row marked unidentified is kept and
 * not remembered.
 *
 * Layout: emissions are appended to a dense array in emission order (a re-emission marks
 * the previous entry dead), and an open-addressing table of entry numbers finds the live
 * entry of a (partition, id). Keys are compared byte for byte, so two ids are never
 * confused; their bytes live in an arena. Once the dense array has doubled since the last
 * compaction, it is compacted: dead entries and entries past their partition's horizon
 * (which can never cause a drop again, since `largest` only grows) are dropped, keeping
 * the order. Memory is bounded by about twice the ids emitted within one horizon.
 *
 * Interface (engine._native.IdIndex(horizon_ms)):
 *   process(partitions int32, times int64, keys) -> bytes: one 0/1 per row, whether it is
 *       kept. `keys` is a string column (strings.h); a null key is an unidentified row.
 *   remember(partitions, times, keys): entries as emitted, in order (restore).
 *   entries() -> (partitions, times, offsets, keys): the live entries within the horizon,
 *       in emission order, as bytes objects of those types.
 *   largest() -> [(partition, largest time)]; set_largest(partition, time).
 *   len(index): entries held, dead and expired ones included until compaction.
 */
#include "keys.h"

typedef struct {
    uint64_t hash; /* 0: dead (superseded by a later emission) */
    int64_t time;
    uint64_t key_at;
    uint32_t key_len;
    int32_t partition;
} Entry;

typedef struct {
    PyObject_HEAD
    int64_t horizon;
    Entry *entries;
    size_t count, room;
    uint32_t *slots; /* entry number + 1; 0 is empty */
    size_t capacity; /* a power of two, >= 2 * room */
    Buf keys;
    size_t count_after_compaction;
    Partitions partitions;
} IdIndex;

static uint64_t key_hash(int32_t partition, const unsigned char *key, size_t len) {
    return hash_key(mix64((uint64_t)(uint32_t)partition), key, (uint32_t)len);
}

static int64_t floor_of(IdIndex *index, int32_t partition) {
    for (size_t i = 0; i < index->partitions.count; i++)
        if (index->partitions.items[i].partition == partition)
            return behind_largest(&index->partitions.items[i], index->horizon);
    return INT64_MIN;
}

/* Slot holding the live entry of this key, or the empty slot where it would go. */
static uint32_t *slot_of(IdIndex *index, uint64_t hash, int32_t partition,
                         const unsigned char *key, size_t len) {
    size_t mask = index->capacity - 1, at = (size_t)hash & mask;
    for (;;) {
        uint32_t *slot = &index->slots[at];
        if (!*slot) return slot;
        Entry *entry = &index->entries[*slot - 1];
        if (entry->hash == hash && entry->partition == partition && entry->key_len == len &&
            memcmp(index->keys.ptr + entry->key_at, key, len) == 0)
            return slot;
        at = (at + 1) & mask;
    }
}

/* A table of `capacity` slots over the live entries; -1 when memory ran out. */
static int rebuild_slots(IdIndex *index, size_t capacity) {
    uint32_t *slots = calloc(capacity, sizeof(uint32_t));
    if (!slots) return -1;
    free(index->slots);
    index->slots = slots;
    index->capacity = capacity;
    size_t mask = capacity - 1;
    for (size_t i = 0; i < index->count; i++) {
        if (!index->entries[i].hash) continue;
        size_t at = (size_t)index->entries[i].hash & mask;
        while (slots[at]) at = (at + 1) & mask;
        slots[at] = (uint32_t)(i + 1);
    }
    return 0;
}

/* Room for one more entry; -1 when memory ran out. */
static int make_room(IdIndex *index) {
    if (index->count < index->room) return 0;
    size_t room = index->room ? 2 * index->room : 4096;
    if (room >= UINT32_MAX / 2) return -1;
    Entry *grown = realloc(index->entries, room * sizeof(Entry));
    if (!grown) return -1;
    index->entries = grown;
    index->room = room;
    return rebuild_slots(index, 2 * room);
}

/* Record an emission at `slot` (found by slot_of): a new entry, the old one dead. */
static int emit(IdIndex *index, uint32_t *slot, uint64_t hash, int32_t partition, int64_t time,
                const unsigned char *key, size_t len) {
    uint64_t key_at;
    if (*slot) {
        Entry *previous = &index->entries[*slot - 1];
        key_at = previous->key_at;
        previous->hash = 0;
    } else {
        key_at = index->keys.len;
        if (buf_push(&index->keys, key, len) < 0) return -1;
    }
    index->entries[index->count] = (Entry){hash, time, key_at, (uint32_t)len, partition};
    *slot = (uint32_t)++index->count;
    return 0;
}

/* Drop dead and expired entries, keeping emission order; -1 when memory ran out. */
static int compact(IdIndex *index) {
    Buf keys = {0};
    size_t kept = 0;
    int32_t last_partition = 0;
    int64_t floor = INT64_MIN;
    int have_floor = 0;
    for (size_t i = 0; i < index->count; i++) {
        Entry entry = index->entries[i];
        if (!entry.hash) continue;
        if (!have_floor || entry.partition != last_partition) {
            floor = floor_of(index, entry.partition);
            last_partition = entry.partition;
            have_floor = 1;
        }
        if (entry.time < floor) continue;
        uint64_t key_at = keys.len;
        if (buf_push(&keys, index->keys.ptr + entry.key_at, entry.key_len) < 0) {
            free(keys.ptr);
            return -1;
        }
        entry.key_at = key_at;
        index->entries[kept++] = entry;
    }
    free(index->keys.ptr);
    index->keys = keys;
    index->count = kept;
    index->count_after_compaction = kept;
    return rebuild_slots(index, index->capacity);
}

typedef struct {
    Py_buffer partitions, times;
    Strings keys;
    Py_ssize_t rows;
} Columns;

static void release(Columns *c) {
    PyBuffer_Release(&c->partitions);
    PyBuffer_Release(&c->times);
    release_strings(&c->keys);
}

/* Parse and check (partitions, times, keys); 0, or -1 with an exception set. */
static int columns_from(PyObject *args, Columns *c) {
    memset(c, 0, sizeof(*c));
    PyObject *keys;
    if (!PyArg_ParseTuple(args, "y*y*O", &c->partitions, &c->times, &keys)) return -1;
    c->rows = c->partitions.len / 4;
    if (c->partitions.len % 4 || c->times.len != c->rows * 8) {
        PyBuffer_Release(&c->partitions);
        PyBuffer_Release(&c->times);
        PyErr_SetString(PyExc_ValueError,
                        "IdIndex: expected int32 partitions and as many int64 times");
        return -1;
    }
    if (strings_from(keys, &c->keys, &c->rows, "IdIndex") < 0) {
        PyBuffer_Release(&c->partitions);
        PyBuffer_Release(&c->times);
        return -1;
    }
    return 0;
}

static PyObject *index_process(IdIndex *index, PyObject *args) {
    Columns c;
    if (columns_from(args, &c) < 0) return NULL;
    PyObject *kept = PyBytes_FromStringAndSize(NULL, c.rows);
    if (!kept) {
        release(&c);
        return NULL;
    }
    char *keep = PyBytes_AS_STRING(kept);
    const int32_t *partitions = c.partitions.buf;
    const int64_t *times = c.times.buf;
    int failed = 0;
    Progress *progress = NULL;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t row = 0; row < c.rows && !failed; row++) {
        int32_t partition = partitions[row];
        if (!progress || progress->partition != partition) {
            progress = progress_of(&index->partitions, partition);
            if (!progress) {
                failed = 1;
                break;
            }
        }
        if (times[row] > progress->largest) progress->largest = times[row];
        keep[row] = 1;
        uint32_t len;
        const unsigned char *key = string_at(&c.keys, row, &len);
        if (len == NULL_LEN) continue; /* unidentified: kept, not remembered */
        uint64_t hash = key_hash(partition, key, len);
        if (make_room(index) < 0) {
            failed = 1;
            break;
        }
        uint32_t *slot = slot_of(index, hash, partition, key, len);
        if (*slot) {
            if (index->entries[*slot - 1].time >= behind_largest(progress, index->horizon)) {
                keep[row] = 0;
                continue;
            }
        }
        failed = emit(index, slot, hash, partition, times[row], key, len) < 0;
    }
    if (!failed && index->count > 2 * index->count_after_compaction + 16384)
        failed = compact(index) < 0;
    Py_END_ALLOW_THREADS;
    release(&c);
    if (failed) {
        Py_DECREF(kept);
        return PyErr_NoMemory();
    }
    return kept;
}

static PyObject *index_remember(IdIndex *index, PyObject *args) {
    Columns c;
    if (columns_from(args, &c) < 0) return NULL;
    const int32_t *partitions = c.partitions.buf;
    const int64_t *times = c.times.buf;
    int failed = 0;
    for (Py_ssize_t row = 0; row < c.rows && !failed; row++) {
        uint32_t len;
        const unsigned char *key = string_at(&c.keys, row, &len);
        if (len == NULL_LEN) continue; /* an unidentified row was never remembered */
        uint64_t hash = key_hash(partitions[row], key, len);
        failed = make_room(index) < 0 ||
                 emit(index, slot_of(index, hash, partitions[row], key, len), hash,
                      partitions[row], times[row], key, len) < 0;
    }
    release(&c);
    if (failed) return PyErr_NoMemory();
    index->count_after_compaction = index->count;
    Py_RETURN_NONE;
}

static PyObject *index_entries(IdIndex *index, PyObject *unused) {
    size_t live = 0, key_bytes = 0;
    for (size_t i = 0; i < index->count; i++) {
        Entry *entry = &index->entries[i];
        if (entry->hash && entry->time >= floor_of(index, entry->partition)) {
            live++;
            key_bytes += entry->key_len;
        }
    }
    PyObject *partitions = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)live * 4);
    PyObject *times = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)live * 8);
    PyObject *offsets = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(live + 1) * 8);
    PyObject *keys = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)key_bytes);
    if (!partitions || !times || !offsets || !keys) {
        Py_XDECREF(partitions);
        Py_XDECREF(times);
        Py_XDECREF(offsets);
        Py_XDECREF(keys);
        return NULL;
    }
    int32_t *partition_out = (int32_t *)PyBytes_AS_STRING(partitions);
    int64_t *time_out = (int64_t *)PyBytes_AS_STRING(times);
    int64_t *offset_out = (int64_t *)PyBytes_AS_STRING(offsets);
    char *key_out = PyBytes_AS_STRING(keys);
    size_t row = 0, at = 0;
    offset_out[0] = 0;
    for (size_t i = 0; i < index->count; i++) {
        Entry *entry = &index->entries[i];
        if (!entry->hash || entry->time < floor_of(index, entry->partition)) continue;
        partition_out[row] = entry->partition;
        time_out[row] = entry->time;
        memcpy(key_out + at, index->keys.ptr + entry->key_at, entry->key_len);
        at += entry->key_len;
        offset_out[++row] = (int64_t)at;
    }
    return Py_BuildValue("(NNNN)", partitions, times, offsets, keys);
}

static PyObject *index_largest(IdIndex *index, PyObject *unused) {
    PyObject *result = PyList_New((Py_ssize_t)index->partitions.count);
    if (!result) return NULL;
    for (size_t i = 0; i < index->partitions.count; i++) {
        PyObject *pair = Py_BuildValue("(iL)", index->partitions.items[i].partition,
                                       (long long)index->partitions.items[i].largest);
        if (!pair) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, pair);
    }
    return result;
}

static PyObject *index_set_largest(IdIndex *index, PyObject *args) {
    int partition;
    long long largest;
    if (!PyArg_ParseTuple(args, "iL", &partition, &largest)) return NULL;
    Progress *progress = progress_of(&index->partitions, partition);
    if (!progress) return PyErr_NoMemory();
    progress->largest = largest;
    Py_RETURN_NONE;
}

static Py_ssize_t index_len(IdIndex *index) { return (Py_ssize_t)index->count; }

static int index_init(IdIndex *index, PyObject *args, PyObject *kwargs) {
    long long horizon;
    if (!PyArg_ParseTuple(args, "L", &horizon)) return -1;
    if (horizon < 0) {
        PyErr_SetString(PyExc_ValueError, "IdIndex: horizon_ms must be >= 0");
        return -1;
    }
    index->horizon = horizon;
    return 0;
}

static void index_dealloc(IdIndex *index) {
    free(index->entries);
    free(index->slots);
    free(index->keys.ptr);
    free(index->partitions.items);
    Py_TYPE(index)->tp_free((PyObject *)index);
}

static PyMethodDef index_methods[] = {
    {"process", (PyCFunction)index_process, METH_VARARGS,
     "process(partitions, times, keys) -> bytes: 1 per kept row."},
    {"remember", (PyCFunction)index_remember, METH_VARARGS,
     "remember(partitions, times, keys): add emissions, in order."},
    {"entries", (PyCFunction)index_entries, METH_NOARGS,
     "entries() -> (partitions, times, offsets, keys) of the live entries, in order."},
    {"largest", (PyCFunction)index_largest, METH_NOARGS,
     "largest() -> [(partition, largest event time)]."},
    {"set_largest", (PyCFunction)index_set_largest, METH_VARARGS,
     "set_largest(partition, time): a partition's largest event time."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods index_sequence = {.sq_length = (lenfunc)index_len};

PyTypeObject IdIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "engine._native.IdIndex",
    .tp_basicsize = sizeof(IdIndex),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The dedup step's emitted ids within a horizon (engine/native/ids.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)index_init,
    .tp_dealloc = (destructor)index_dealloc,
    .tp_methods = index_methods,
    .tp_as_sequence = &index_sequence,
};
