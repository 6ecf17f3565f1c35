/* Kafka record sets (message format v2) read straight into Arrow columns, and record
 * batches built straight from them (`kafka_batch`, at the end of this file).
 *
 * Why it exists: aiokafka turns every fetched record into a Python object (its record, then
 * a ConsumerRecord) that the source then took apart again into columns: about 2 µs per
 * message, a third of W1's Kafka form. This reads a partition's fetched bytes once, batch
 * by batch, into the columns of a raw batch (values, keys, offsets, timestamps).
 *
 * It reads plain batches: magic 2, no compression, records without headers; control
 * batches are skipped. Anything else (a compressed batch, headers, an older format) is
 * reported as not read, and the caller leaves that record set to aiokafka. Each batch's
 * CRC-32C is checked, as the Java client and aiokafka do by default.
 *
 * Interface (engine._native.kafka_records): kafka_records(data, fetch_offset, max_records)
 * -> None when the set holds a batch read here does not take, else (count, next_offset,
 * exhausted, values, keys, offsets, timestamps): `values` and `keys` are (offsets, data,
 * validity bytes) of a large_binary array (a null is a tombstone or no key), `offsets` and
 * `timestamps` int64; `next_offset` is where the partition's next read starts and `exhausted`
 * whether no record is left in `data` after it. Records before `fetch_offset` are skipped,
 * at most `max_records` are read, a batch cut short at the end of `data` is left (the broker
 * sends what fits). Raises ValueError on a corrupt batch (bad CRC or lengths).
 */
#include "strings.h"

#define BATCH_HEADER 61 /* base offset .. records count, up to the first record */

static uint32_t CRC32C_TABLE[8][256];

static void crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int k = 0; k < 8; k++) crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78 : crc >> 1;
        CRC32C_TABLE[0][i] = crc;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            CRC32C_TABLE[t][i] =
                (CRC32C_TABLE[t - 1][i] >> 8) ^ CRC32C_TABLE[0][CRC32C_TABLE[t - 1][i] & 0xFF];
}

/* CRC-32C (Castagnoli), eight bytes a step (slicing-by-8). */
static uint32_t crc32c(const unsigned char *p, size_t n) {
    uint32_t crc = 0xFFFFFFFF;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        word ^= crc;
        crc = CRC32C_TABLE[7][word & 0xFF] ^ CRC32C_TABLE[6][(word >> 8) & 0xFF] ^
              CRC32C_TABLE[5][(word >> 16) & 0xFF] ^ CRC32C_TABLE[4][(word >> 24) & 0xFF] ^
              CRC32C_TABLE[3][(word >> 32) & 0xFF] ^ CRC32C_TABLE[2][(word >> 40) & 0xFF] ^
              CRC32C_TABLE[1][(word >> 48) & 0xFF] ^ CRC32C_TABLE[0][word >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ CRC32C_TABLE[0][(crc ^ *p++) & 0xFF];
    return crc ^ 0xFFFFFFFF;
}

static int64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return (int64_t)v;
}

static int32_t be32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
}

/* A zigzag varint (up to 64 bits) at *p, before end; -1 if malformed. */
static int varint(const unsigned char **p, const unsigned char *end, int64_t *out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return -1;
        unsigned char byte = *(*p)++;
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = (int64_t)(value >> 1) ^ -(int64_t)(value & 1);
            return 0;
        }
    }
    return -1;
}

typedef struct {
    Buf value_offsets, values, value_valid, key_offsets, keys, key_valid, offsets, timestamps;
} Columns;

static void free_columns(Columns *c) {
    free(c->value_offsets.ptr);
    free(c->values.ptr);
    free(c->value_valid.ptr);
    free(c->key_offsets.ptr);
    free(c->keys.ptr);
    free(c->key_valid.ptr);
    free(c->offsets.ptr);
    free(c->timestamps.ptr);
}

enum { READ_OK = 0, READ_UNSUPPORTED = 1, READ_CORRUPT = 2, READ_NOMEMORY = 3 };

/* The records of one batch (its records section from `p`) from `fetch_offset` on. */
static int read_batch(const unsigned char *p, const unsigned char *end, int64_t base_offset,
                      int64_t base_timestamp, int64_t max_timestamp, int log_append_time,
                      int32_t count, int64_t fetch_offset, Py_ssize_t max_records, Columns *c,
                      Py_ssize_t *read, int64_t *next_offset) {
    for (int32_t i = 0; i < count; i++) {
        int64_t length, timestamp_delta, offset_delta, key_length, value_length, headers;
        if (varint(&p, end, &length) < 0 || length < 0 || length > end - p) return READ_CORRUPT;
        const unsigned char *record_end = p + length;
        p++; /* attributes, unused */
        if (varint(&p, record_end, &timestamp_delta) < 0 ||
            varint(&p, record_end, &offset_delta) < 0 || varint(&p, record_end, &key_length) < 0 ||
            key_length < -1 || key_length > record_end - p)
            return READ_CORRUPT;
        const unsigned char *key = p;
        if (key_length > 0) p += key_length;
        if (varint(&p, record_end, &value_length) < 0 || value_length < -1 ||
            value_length > record_end - p)
            return READ_CORRUPT;
        const unsigned char *value = p;
        if (value_length > 0) p += value_length;
        if (varint(&p, record_end, &headers) < 0) return READ_CORRUPT;
        if (headers != 0) return READ_UNSUPPORTED;
        p = record_end;
        int64_t offset = base_offset + offset_delta;
        if (offset < fetch_offset) continue;
        if (*read >= max_records) return READ_OK;
        int64_t timestamp = log_append_time ? max_timestamp : base_timestamp + timestamp_delta;
        unsigned char has_key = key_length >= 0, has_value = value_length >= 0;
        if ((value_length > 0 && buf_push(&c->values, value, (size_t)value_length) < 0) ||
            buf_push(&c->value_valid, &has_value, 1) < 0 ||
            (key_length > 0 && buf_push(&c->keys, key, (size_t)key_length) < 0) ||
            buf_push(&c->key_valid, &has_key, 1) < 0 || buf_push(&c->offsets, &offset, 8) < 0 ||
            buf_push(&c->timestamps, &timestamp, 8) < 0)
            return READ_NOMEMORY;
        int64_t values_end = (int64_t)c->values.len, keys_end = (int64_t)c->keys.len;
        if (buf_push(&c->value_offsets, &values_end, 8) < 0 ||
            buf_push(&c->key_offsets, &keys_end, 8) < 0)
            return READ_NOMEMORY;
        (*read)++;
        *next_offset = offset + 1;
    }
    return READ_OK;
}

static int read_records(const unsigned char *data, size_t size, int64_t fetch_offset,
                        Py_ssize_t max_records, Columns *c, Py_ssize_t *read,
                        int64_t *next_offset, int *exhausted) {
    const unsigned char *p = data, *end = data + size;
    int64_t zero = 0;
    if (buf_push(&c->value_offsets, &zero, 8) < 0 || buf_push(&c->key_offsets, &zero, 8) < 0)
        return READ_NOMEMORY;
    *next_offset = fetch_offset;
    *exhausted = 1;
    while (end - p >= 12) {
        int64_t base_offset = be64(p);
        int32_t batch_length = be32(p + 8);
        if (batch_length < BATCH_HEADER - 12) return READ_CORRUPT;
        if ((size_t)(end - p) < 12 + (size_t)batch_length) break; /* cut short: next fetch */
        const unsigned char *batch = p, *batch_end = p + 12 + batch_length;
        p = batch_end;
        if (batch[16] != 2) return READ_UNSUPPORTED;
        uint32_t crc = (uint32_t)be32(batch + 17);
        if (crc32c(batch + 21, (size_t)(batch_end - batch - 21)) != crc) return READ_CORRUPT;
        int attributes = (batch[21] << 8) | batch[22];
        int64_t last_offset = base_offset + be32(batch + 23);
        if (last_offset < *next_offset) continue; /* all before the fetch offset */
        if (attributes & 0x07) return READ_UNSUPPORTED; /* compressed */
        if (!(attributes & 0x20)) {                      /* not a control batch */
            int status = read_batch(batch + BATCH_HEADER, batch_end, base_offset,
                                    be64(batch + 27), be64(batch + 35), attributes & 0x08,
                                    be32(batch + 57), *next_offset, max_records, c, read,
                                    next_offset);
            if (status != READ_OK) return status;
            if (*next_offset <= last_offset && *read >= max_records) {
                *exhausted = 0; /* stopped inside this batch */
                return READ_OK;
            }
        }
        /* v2 keeps a batch's last offset even when compaction removed its last records */
        *next_offset = last_offset + 1;
        if (*read >= max_records) {
            *exhausted = end - p < 12;
            return READ_OK;
        }
    }
    return READ_OK;
}

static PyObject *hand_over_all(Buf *buffers[], int n) {
    PyObject *tuple = PyTuple_New(n);
    if (!tuple) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *item = buffers[i]->ptr ? buf_hand_over(buffers[i]) : PyBytes_FromString("");
        if (!item) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, item);
    }
    return tuple;
}

PyObject *kafka_records(PyObject *self, PyObject *args) {
    Py_buffer data;
    long long fetch_offset;
    Py_ssize_t max_records;
    if (!PyArg_ParseTuple(args, "y*Ln", &data, &fetch_offset, &max_records)) return NULL;
    static int crc_ready = 0;
    if (!crc_ready) {
        crc32c_init();
        crc_ready = 1;
    }
    Columns c = {0};
    Py_ssize_t read = 0;
    int64_t next_offset;
    int exhausted, status;
    Py_BEGIN_ALLOW_THREADS;
    status = read_records(data.buf, (size_t)data.len, fetch_offset, max_records, &c, &read,
                          &next_offset, &exhausted);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    PyObject *result = NULL;
    if (status == READ_UNSUPPORTED) {
        result = Py_NewRef(Py_None);
    } else if (status == READ_CORRUPT) {
        PyErr_SetString(PyExc_ValueError, "corrupt Kafka record batch (CRC or lengths)");
    } else if (status == READ_NOMEMORY) {
        PyErr_NoMemory();
    } else {
        Buf *value_buffers[] = {&c.value_offsets, &c.values, &c.value_valid};
        Buf *key_buffers[] = {&c.key_offsets, &c.keys, &c.key_valid};
        PyObject *values = hand_over_all(value_buffers, 3);
        PyObject *keys = values ? hand_over_all(key_buffers, 3) : NULL;
        PyObject *offsets = keys ? (c.offsets.ptr ? buf_hand_over(&c.offsets)
                                                  : PyBytes_FromString(""))
                                 : NULL;
        PyObject *timestamps = offsets ? (c.timestamps.ptr ? buf_hand_over(&c.timestamps)
                                                           : PyBytes_FromString(""))
                                       : NULL;
        if (timestamps)
            result = Py_BuildValue("(nLONNNN)", read, (long long)next_offset,
                                   exhausted ? Py_True : Py_False, values, keys, offsets,
                                   timestamps);
        else {
            Py_XDECREF(values);
            Py_XDECREF(keys);
            Py_XDECREF(offsets);
        }
    }
    free_columns(&c);
    return result;
}

/* ---- building record batches ------------------------------------------------------------ */

static int push_varint(Buf *b, int64_t value) {
    uint64_t zigzag = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    unsigned char bytes[10];
    int n = 0;
    do {
        bytes[n] = zigzag & 0x7F;
        zigzag >>= 7;
        if (zigzag) bytes[n] |= 0x80;
        n++;
    } while (zigzag);
    return buf_push(b, bytes, (size_t)n);
}

static int varint_size(int64_t value) {
    uint64_t zigzag = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    int n = 1;
    while (zigzag >>= 7) n++;
    return n;
}

static void put_be(unsigned char *p, uint64_t value, int bytes) {
    for (int i = bytes - 1; i >= 0; i--, value >>= 8) p[i] = value & 0xFF;
}

/* Why: aiokafka's producer appends a record at a time from Python (~0.5 µs per output row
 * on W1); this builds a partition's batch from its key and value columns in one pass.
 *
 * Interface (engine._native.kafka_batch): kafka_batch(keys, values, rows, start, max_bytes,
 * timestamp_ms) -> (batch, end): one uncompressed v2 record batch, as aiokafka's producer
 * builds it (no producer id, every record stamped `timestamp_ms`, no headers). `rows` (int64
 * row numbers, a partition's rows in their order) says which rows of the columns it holds,
 * so a sink splits a whole batch into partitions without copying a column per partition; the
 * batch takes rows[start], rows[start + 1], ... while it stays within `max_bytes` (the first
 * always goes in), and `end` is the first index into `rows` left out. `keys` and `values` are
 * string columns (strings.h); a null key or value is written as Kafka's null. */
PyObject *kafka_batch(PyObject *self, PyObject *args) {
    PyObject *keys_tuple, *values_tuple;
    Py_buffer picked;
    Py_ssize_t start, max_bytes, rows = -1;
    long long timestamp;
    if (!PyArg_ParseTuple(args, "OOy*nnL", &keys_tuple, &values_tuple, &picked, &start,
                          &max_bytes, &timestamp))
        return NULL;
    Strings keys, values;
    if (strings_from(values_tuple, &values, &rows, "kafka_batch") < 0) {
        PyBuffer_Release(&picked);
        return NULL;
    }
    if (strings_from(keys_tuple, &keys, &rows, "kafka_batch") < 0) {
        release_strings(&values);
        PyBuffer_Release(&picked);
        return NULL;
    }
    PyObject *result = NULL;
    Buf out = {0};
    const int64_t *order = picked.buf;
    Py_ssize_t count = picked.len / 8;
    int ok = picked.len % 8 == 0 && start >= 0 && start < count;
    for (Py_ssize_t i = 0; ok && i < count; i++) ok = order[i] >= 0 && order[i] < rows;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError,
                        "kafka_batch: expected int64 row numbers within the columns and "
                        "0 <= start < their count");
        goto done;
    }
    static int crc_ready = 0;
    if (!crc_ready) {
        crc32c_init();
        crc_ready = 1;
    }
    if (buf_grow(&out, BATCH_HEADER) < 0) goto nomemory;
    memset(out.ptr, 0, BATCH_HEADER);
    out.len = BATCH_HEADER;
    Py_ssize_t end = start;
    for (; end < count; end++) {
        uint32_t key_len, value_len;
        const unsigned char *key = string_at(&keys, order[end], &key_len);
        const unsigned char *value = string_at(&values, order[end], &value_len);
        int64_t key_length = key_len == NULL_LEN ? -1 : (int64_t)key_len;
        int64_t value_length = value_len == NULL_LEN ? -1 : (int64_t)value_len;
        int64_t delta = end - start;
        int64_t body = 1 + varint_size(0) + varint_size(delta) + varint_size(key_length) +
                       (key_length > 0 ? key_length : 0) + varint_size(value_length) +
                       (value_length > 0 ? value_length : 0) + varint_size(0);
        if (end > start && (Py_ssize_t)(out.len + varint_size(body) + body) > max_bytes) break;
        unsigned char attributes = 0;
        if (push_varint(&out, body) < 0 || buf_push(&out, &attributes, 1) < 0 ||
            push_varint(&out, 0) < 0 || push_varint(&out, delta) < 0 ||
            push_varint(&out, key_length) < 0 ||
            (key_length > 0 && buf_push(&out, key, (size_t)key_length) < 0) ||
            push_varint(&out, value_length) < 0 ||
            (value_length > 0 && buf_push(&out, value, (size_t)value_length) < 0) ||
            push_varint(&out, 0) < 0)
            goto nomemory;
    }
    unsigned char *h = (unsigned char *)out.ptr;
    put_be(h + 8, out.len - 12, 4);             /* batch length */
    put_be(h + 12, 0, 4);                       /* partition leader epoch */
    h[16] = 2;                                  /* magic */
    put_be(h + 23, (uint64_t)(end - start - 1), 4);
    put_be(h + 27, (uint64_t)timestamp, 8);     /* first timestamp */
    put_be(h + 35, (uint64_t)timestamp, 8);     /* max timestamp */
    put_be(h + 43, (uint64_t)-1, 8);            /* producer id */
    put_be(h + 51, 0xFFFF, 2);                  /* producer epoch */
    put_be(h + 53, 0xFFFFFFFF, 4);              /* base sequence */
    put_be(h + 57, (uint64_t)(end - start), 4); /* records */
    put_be(h + 17, crc32c(h + 21, out.len - 21), 4);
    result = Py_BuildValue("(y#n)", out.ptr, (Py_ssize_t)out.len, end);
    goto done;
nomemory:
    PyErr_NoMemory();
done:
    free(out.ptr);
    release_strings(&keys);
    release_strings(&values);
    PyBuffer_Release(&picked);
    return result;
}
