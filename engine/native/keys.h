/* What the dedup index (ids.c) and the windows' table (windows.c) share: a 64-bit hash of
 * a partition and a key's bytes, and each partition's progress (its largest event time and
 * how many rows it has seen). */
#ifndef CONFLUX_KEYS_H
#define CONFLUX_KEYS_H

#include "strings.h"

static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* A hash of `len` bytes at `key` (none for NULL_LEN) continuing `seed`; never 0, which the
 * tables use for an empty or dead entry. */
static inline uint64_t hash_key(uint64_t seed, const unsigned char *key, uint32_t len) {
    uint64_t h = seed ^ 0x9E3779B97F4A7C15ULL;
    if (len != NULL_LEN) {
        uint32_t left = len;
        while (left >= 8) {
            uint64_t word;
            memcpy(&word, key, 8);
            h = (h ^ mix64(word)) * 0x9E3779B97F4A7C15ULL;
            key += 8;
            left -= 8;
        }
        uint64_t tail = 0;
        memcpy(&tail, key, left);
        h ^= mix64(tail + left);
    }
    h = mix64(h ^ len);
    return h ? h : 1;
}

typedef struct {
    int32_t partition;
    int64_t largest; /* INT64_MIN until a row is seen */
    int64_t seen;
} Progress;

/* Partitions are few: a list searched from the front. */
typedef struct {
    Progress *items;
    size_t count, room;
} Partitions;

/* The partition's progress, added when first asked for; NULL when memory ran out. */
static inline Progress *progress_of(Partitions *partitions, int32_t partition) {
    for (size_t i = 0; i < partitions->count; i++)
        if (partitions->items[i].partition == partition) return &partitions->items[i];
    if (partitions->count == partitions->room) {
        size_t room = partitions->room ? 2 * partitions->room : 8;
        Progress *grown = realloc(partitions->items, room * sizeof(Progress));
        if (!grown) return NULL;
        partitions->items = grown;
        partitions->room = room;
    }
    Progress *fresh = &partitions->items[partitions->count++];
    *fresh = (Progress){partition, INT64_MIN, 0};
    return fresh;
}

/* `largest - back`, or INT64_MIN where that would pass below it (and before any row). */
static inline int64_t behind_largest(const Progress *progress, int64_t back) {
    if (progress->largest < INT64_MIN + back) return INT64_MIN;
    return progress->largest - back;
}

#endif
