/* Growable byte buffers whose memory is handed to Python without a copy. */
#ifndef CONFLUX_BUFFER_H
#define CONFLUX_BUFFER_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *ptr;
    size_t len, cap;
} Buf;

/* Room for `extra` more bytes; 0, or -1 when memory ran out. */
static inline int buf_grow(Buf *b, size_t extra) {
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < need) cap *= 2;
    char *p = realloc(b->ptr, cap);
    if (!p) return -1;
    b->ptr = p;
    b->cap = cap;
    return 0;
}

static inline int buf_push(Buf *b, const void *src, size_t n) {
    if (buf_grow(b, n) < 0) return -1;
    memcpy(b->ptr + b->len, src, n);
    b->len += n;
    return 0;
}

/* How many bytes from p (up to end) are plain string content: not a quote, backslash or
 * control character, nor (if `ascii`) a byte of a multi-byte UTF-8 sequence. Eight bytes
 * are tested at a time (SWAR: a byte-wise "has zero" and "has less than" over a word). */
static inline size_t plain_run(const unsigned char *p, const unsigned char *end, int ascii) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    const unsigned char *start = p;
    while (end - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t quote = x ^ (ones * '"'), backslash = x ^ (ones * '\\');
        uint64_t special = ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) |
                           ((x - ones * 0x20) & ~x);
        special &= highs;
        if (ascii) special |= x & highs;
        if (special) break;
        p += 8;
    }
    while (p < end && *p >= 0x20 && *p != '"' && *p != '\\' && (!ascii || *p < 0x80)) p++;
    return (size_t)(p - start);
}

/* The buffer as (address, size, owner), or None if it never held memory. The memory now
 * belongs to `owner`, a capsule that frees it when its last reference goes (pyarrow's
 * foreign_buffer keeps it as the base of the Arrow buffer). */
PyObject *buf_hand_over(Buf *b);

#endif
