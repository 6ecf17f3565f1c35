/* JSON scanner: a batch of JSON object values → Arrow column buffers, in one pass.
 *
 * Why it exists: on W1 the columnar reader (polars `read_ndjson`) and the checks that make
 * up for its leniency (a byte screen, key counting, integer-token and escape searches) cost
 * about 1.5 µs per message, two thirds of the engine's budget. This scanner reads each value
 * once, strictly, straight into the buffers of the Arrow arrays the schema declares.
 *
 * It accepts a value only when it is sure the value is one JSON object that a conforming
 * parser (orjson) reads to exactly these columns: every declared field of the right JSON
 * type at most once, no other field, no explicit null, valid UTF-8, a Literal's value one of
 * its choices. Anything else (not JSON, a wrong type, an unknown field, a duplicate, a null,
 * a lone surrogate, an integer out of range, a value not among the choices) is not judged
 * here: the value is marked unread and the codec's per-record path gives the exact verdict
 * and reason. Fixed-width patterns are checked here too (a string of another length, or
 * with a byte outside its position's set, is not judged); other patterns, bounds and
 * lengths are checked by the codec over whole columns.
 *
 * Interface (engine._native.scan): scan(plan, data, offsets) with
 *   plan: a list of (kind, name: bytes, required: bool, parent: int, choices: tuple,
 *         pattern: bytes) in pre-order; entry 0 is the root object (kind STRUCT, parent -1);
 *         a LIST entry's one child is its item; `choices` are a Literal's values (bytes or
 *         ints), or (); `pattern` is, for a STR entry whose pattern has one width, a 256-bit
 *         set of allowed bytes per position (`engine.schema.fixed_width_classes`), or b"".
 *   data: the values' bytes (any buffer); offsets: int64 buffer of count + 1 positions.
 * returns (read, nodes): `read` one byte per value (1: read), and per plan entry a tuple
 *   (count, null_count, validity, offsets, values) where each buffer is (address, size,
 *   owner) or None; `owner` is a capsule that frees the memory when the last reference goes.
 *   A STR entry's `offsets` are Arrow string views (16 bytes per element, into `values`):
 *   polars keeps strings as views, so it takes these without copying a string, where it
 *   copied every string of offset-based arrays (~0.1 µs per W1 message).
 */
#include "buffer.h"

#include <math.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "same_name compares field names as little-endian words"
#endif

enum { K_STR = 0, K_INT = 1, K_FLOAT = 2, K_NUMBER = 3, K_BOOL = 4, K_STRUCT = 5, K_LIST = 6 };

typedef struct {
    int kind;
    int required;
    const char *name;
    Py_ssize_t name_len;
    uint64_t name_word; /* a name of up to 8 bytes as one word (zero-padded), for compares */
    int *children;
    int n_children;
    uint64_t seen; /* stamp of the object that last held this field */
    int n_choices;  /* a Literal's values (0: any value of the kind) */
    const char **choice_text;
    Py_ssize_t *choice_len;
    int64_t *choice_int;
    const unsigned char *pattern; /* 32 bytes (a set of allowed bytes) per position */
    Py_ssize_t pattern_width;
    int64_t count, nulls;
    int64_t snap_count, snap_nulls;
    size_t snap_data;
    Buf valid;   /* one byte per element: 1 present, 0 null */
    Buf offsets; /* int64, count + 1: STR (into data) and LIST (into the item) */
    Buf data;    /* STR bytes; INT/FLOAT/NUMBER 8-byte values; BOOL one byte */
} Node;

typedef struct {
    Node *nodes;
    int n_nodes;
    uint64_t stamp;
    int oom;
    Buf name; /* an escaped field name, unescaped */
} Scan;

typedef struct {
    const unsigned char *p, *end;
} Cur;

#define PUSH(scan, buf, src, n)                                   \
    do {                                                          \
        if (buf_push((buf), (src), (n)) < 0) {                    \
            (scan)->oom = 1;                                      \
            return -1;                                            \
        }                                                         \
    } while (0)

static inline int push_byte(Scan *s, Buf *b, unsigned char v) {
    if (buf_grow(b, 1) < 0) {
        s->oom = 1;
        return -1;
    }
    b->ptr[b->len++] = (char)v;
    return 0;
}

static inline int push_i64(Scan *s, Buf *b, int64_t v) {
    PUSH(s, b, &v, 8);
    return 0;
}

/* An element is complete: record its validity and, for STR and LIST, its end offset. */
static int close_element(Scan *s, Node *n, int present) {
    if (push_byte(s, &n->valid, (unsigned char)present) < 0) return -1;
    if (!present) n->nulls++;
    n->count++;
    if (n->kind == K_STR) return push_i64(s, &n->offsets, (int64_t)n->data.len);
    if (n->kind == K_LIST) return push_i64(s, &n->offsets, s->nodes[n->children[0]].count);
    return 0;
}

static int append_null(Scan *s, Node *n) {
    switch (n->kind) {
    case K_INT:
    case K_FLOAT:
    case K_NUMBER:
        if (push_i64(s, &n->data, 0) < 0) return -1;
        break;
    case K_BOOL:
        if (push_byte(s, &n->data, 0) < 0) return -1;
        break;
    case K_STRUCT:
        for (int i = 0; i < n->n_children; i++)
            if (append_null(s, &s->nodes[n->children[i]]) < 0) return -1;
        break;
    default:
        break;
    }
    return close_element(s, n, 0);
}

/* Field names and choices are short: a loop beats a call to memcmp. */
static inline int same_bytes(const char *a, const unsigned char *b, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if ((unsigned char)a[i] != b[i]) return 0;
    return 1;
}

/* Whether the `node->name_len` bytes at `name` are the node's name: one masked word
 * compare for names of up to 8 bytes when 8 bytes can be read there. */
static inline int same_name(const Node *node, const unsigned char *name, const unsigned char *end) {
    Py_ssize_t n = node->name_len;
    if (n <= 8 && end - name >= 8) {
        uint64_t word;
        memcpy(&word, name, 8);
        uint64_t mask = n == 8 ? ~0ULL : (1ULL << (8 * n)) - 1;
        return (word & mask) == node->name_word;
    }
    return same_bytes(node->name, name, n);
}

static inline void skip_ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

static inline int hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char ch = p[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9') v |= ch - '0';
        else if (ch >= 'a' && ch <= 'f') v |= ch - 'a' + 10;
        else if (ch >= 'A' && ch <= 'F') v |= ch - 'A' + 10;
        else return -1;
    }
    *out = v;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (lead byte ≥ 0x80), or 0 if it is not valid. */
static inline int utf8_sequence(const unsigned char *p, const unsigned char *end) {
    unsigned char b0 = p[0];
    int n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) n = 2;
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
        n = 3;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F; /* no UTF-16 surrogates */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        n = 4;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (end - p < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

/* A JSON string at c->p (the opening quote) appended, unescaped, to `out`. */
static int read_string(Scan *s, Cur *c, Buf *out) {
    const unsigned char *p = c->p + 1, *end = c->end;
    for (;;) {
        const unsigned char *run = p;
        p += plain_run(p, end, 1);
        if (p > run) PUSH(s, out, run, (size_t)(p - run));
        if (p >= end) return -1;
        unsigned char ch = *p;
        if (ch == '"') {
            c->p = p + 1;
            return 0;
        }
        if (ch < 0x20) return -1;
        if (ch >= 0x80) {
            int n = utf8_sequence(p, end);
            if (!n) return -1;
            PUSH(s, out, p, (size_t)n);
            p += n;
            continue;
        }
        /* backslash */
        if (end - p < 2) return -1;
        unsigned char e = p[1];
        char single = 0;
        switch (e) {
        case '"': single = '"'; break;
        case '\\': single = '\\'; break;
        case '/': single = '/'; break;
        case 'b': single = '\b'; break;
        case 'f': single = '\f'; break;
        case 'n': single = '\n'; break;
        case 'r': single = '\r'; break;
        case 't': single = '\t'; break;
        case 'u': break;
        default: return -1;
        }
        if (single) {
            if (push_byte(s, out, (unsigned char)single) < 0) return -1;
            p += 2;
            continue;
        }
        unsigned cp;
        if (end - p < 6 || hex4(p + 2, &cp) < 0) return -1;
        p += 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return -1; /* lone low surrogate */
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned low;
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &low) < 0) return -1;
            if (low < 0xDC00 || low > 0xDFFF) return -1;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            p += 6;
        }
        unsigned char u[4];
        size_t n;
        if (cp < 0x80) {
            u[0] = (unsigned char)cp;
            n = 1;
        } else if (cp < 0x800) {
            u[0] = (unsigned char)(0xC0 | (cp >> 6));
            u[1] = (unsigned char)(0x80 | (cp & 0x3F));
            n = 2;
        } else if (cp < 0x10000) {
            u[0] = (unsigned char)(0xE0 | (cp >> 12));
            u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            u[2] = (unsigned char)(0x80 | (cp & 0x3F));
            n = 3;
        } else {
            u[0] = (unsigned char)(0xF0 | (cp >> 18));
            u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
            u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            u[3] = (unsigned char)(0x80 | (cp & 0x3F));
            n = 4;
        }
        PUSH(s, out, u, n);
    }
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number at c->p. `integral`: written without fraction or exponent. For an integral
 * token that fits int64, *as_int holds it and *int_ok is set. *as_double is always set. */
static int read_number(Cur *c, int *integral, int64_t *as_int, int *int_ok, double *as_double) {
    const unsigned char *p = c->p, *end = c->end, *start = p;
    int negative = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9') return -1;
    uint64_t mantissa = 0;
    int digits = 0;        /* significant digits accumulated in mantissa */
    int dropped = 0;       /* integer digits beyond what mantissa holds exactly */
    if (*p == '0') {
        p++;
    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits < 19) {
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                if (mantissa) digits++;
            } else
                dropped++;
            p++;
        }
    }
    int fraction_digits = 0;
    *integral = 1;
    if (p < end && *p == '.') {
        *integral = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits < 19) {
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                if (mantissa) digits++;
                fraction_digits++;
            }
            p++;
        }
    }
    long exponent = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        *integral = 0;
        p++;
        int exp_negative = 0;
        if (p < end && (*p == '+' || *p == '-')) {
            exp_negative = *p == '-';
            p++;
        }
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') {
            if (exponent < 100000) exponent = exponent * 10 + (*p - '0');
            p++;
        }
        if (exp_negative) exponent = -exponent;
    }
    c->p = p;
    *int_ok = 0;
    if (*integral && !dropped) {
        if (!negative && mantissa <= (uint64_t)INT64_MAX) {
            *as_int = (int64_t)mantissa;
            *int_ok = 1;
        } else if (negative && mantissa <= (uint64_t)INT64_MAX + 1) {
            *as_int = (int64_t)(0 - mantissa);
            *int_ok = 1;
        }
    }
    long scale = exponent - fraction_digits + dropped;
    if (!dropped && digits <= 19 && mantissa < (1ULL << 53) && scale >= -22 && scale <= 22) {
        /* exact operands, one correctly rounded operation (Clinger's fast path) */
        double v = (double)mantissa;
        v = scale < 0 ? v / POW10[-scale] : v * POW10[scale];
        *as_double = negative ? -v : v;
        return 0;
    }
    char text[80];
    size_t len = (size_t)(p - start);
    if (len >= sizeof text) return -1; /* long numbers are left to the per-record path */
    memcpy(text, start, len);
    text[len] = 0;
    *as_double = strtod(text, NULL);
    return 0;
}

static int read_value(Scan *s, Node *n, Cur *c);

static int read_object(Scan *s, Node *n, Cur *c) {
    if (c->p >= c->end || *c->p != '{') return -1;
    c->p++;
    uint64_t stamp = ++s->stamp;
    int hint = 0;
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
    } else {
        for (;;) {
            if (c->p >= c->end || *c->p != '"') return -1;
            const unsigned char *name = c->p + 1, *close = name + plain_run(name, c->end, 0);
            Py_ssize_t name_len = close - name;
            if (close < c->end && *close == '"') {
                c->p = close + 1;
            } else { /* an escaped name: unescape it first */
                s->name.len = 0;
                if (read_string(s, c, &s->name) < 0) return -1;
                name = (const unsigned char *)s->name.ptr;
                name_len = (Py_ssize_t)s->name.len;
            }
            Node *field = NULL;
            for (int k = 0, i = hint; k < n->n_children; k++, i++) {
                if (i >= n->n_children) i = 0; /* from the field after the last one found */
                Node *candidate = &s->nodes[n->children[i]];
                if (candidate->name_len == name_len && same_name(candidate, name, c->end)) {
                    field = candidate;
                    hint = i + 1;
                    break;
                }
            }
            if (!field || field->seen == stamp) return -1; /* unknown or repeated */
            field->seen = stamp;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':') return -1;
            c->p++;
            skip_ws(c);
            if (read_value(s, field, c) < 0) return -1;
            skip_ws(c);
            if (c->p < c->end && *c->p == ',') {
                c->p++;
                skip_ws(c);
                continue;
            }
            if (c->p < c->end && *c->p == '}') {
                c->p++;
                break;
            }
            return -1;
        }
    }
    for (int i = 0; i < n->n_children; i++) {
        Node *field = &s->nodes[n->children[i]];
        if (field->seen == stamp) continue;
        if (field->required) return -1;
        if (append_null(s, field) < 0) return -1;
    }
    return close_element(s, n, 1);
}

static int read_list(Scan *s, Node *n, Cur *c) {
    Node *item = &s->nodes[n->children[0]];
    c->p++; /* '[' */
    skip_ws(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return close_element(s, n, 1);
    }
    for (;;) {
        if (read_value(s, item, c) < 0) return -1;
        skip_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            skip_ws(c);
            continue;
        }
        if (c->p < c->end && *c->p == ']') {
            c->p++;
            return close_element(s, n, 1);
        }
        return -1;
    }
}

/* Whether `text` has the pattern's width and each byte is in its position's set. */
static inline int fits_pattern(const Node *n, const unsigned char *text, size_t len) {
    if (len != (size_t)n->pattern_width) return 0;
    for (size_t i = 0; i < len; i++)
        if (!(n->pattern[32 * i + text[i] / 8] >> (text[i] % 8) & 1)) return 0;
    return 1;
}

static int read_value(Scan *s, Node *n, Cur *c) {
    if (c->p >= c->end) return -1;
    unsigned char ch = *c->p;
    switch (n->kind) {
    case K_STR: {
        size_t start = n->data.len;
        if (ch != '"' || read_string(s, c, &n->data) < 0) return -1;
        if (n->n_choices) {
            size_t len = n->data.len - start;
            int k = 0;
            const unsigned char *text = (const unsigned char *)n->data.ptr + start;
            while (k < n->n_choices && !((size_t)n->choice_len[k] == len &&
                                         same_bytes(n->choice_text[k], text, (Py_ssize_t)len)))
                k++;
            if (k == n->n_choices) return -1;
        }
        if (n->pattern && !fits_pattern(n, (const unsigned char *)n->data.ptr + start,
                                        n->data.len - start))
            return -1;
        return close_element(s, n, 1);
    }
    case K_INT:
    case K_FLOAT:
    case K_NUMBER: {
        if (ch != '-' && (ch < '0' || ch > '9')) return -1;
        int integral, int_ok;
        int64_t as_int = 0;
        double as_double = 0;
        if (read_number(c, &integral, &as_int, &int_ok, &as_double) < 0) return -1;
        if (n->kind == K_INT) {
            if (!int_ok) return -1;
            if (n->n_choices) {
                int k = 0;
                while (k < n->n_choices && n->choice_int[k] != as_int) k++;
                if (k == n->n_choices) return -1;
            }
            if (push_i64(s, &n->data, as_int) < 0) return -1;
        } else {
            /* an integer reads as a conforming parser's int converted: -0 is 0 */
            if (integral && int_ok) as_double = (double)as_int;
            if (n->kind == K_FLOAT && integral) return -1;
            if (!isfinite(as_double)) return -1;
            PUSH(s, &n->data, &as_double, 8);
        }
        return close_element(s, n, 1);
    }
    case K_BOOL:
        if (c->end - c->p >= 4 && !memcmp(c->p, "true", 4)) {
            c->p += 4;
            if (push_byte(s, &n->data, 1) < 0) return -1;
        } else if (c->end - c->p >= 5 && !memcmp(c->p, "false", 5)) {
            c->p += 5;
            if (push_byte(s, &n->data, 0) < 0) return -1;
        } else
            return -1;
        return close_element(s, n, 1);
    case K_STRUCT:
        return read_object(s, n, c);
    case K_LIST:
        if (ch != '[') return -1;
        return read_list(s, n, c);
    }
    return -1;
}

static void snapshot(Scan *s) {
    for (int i = 0; i < s->n_nodes; i++) {
        Node *n = &s->nodes[i];
        n->snap_count = n->count;
        n->snap_nulls = n->nulls;
        n->snap_data = n->data.len;
    }
}

static void rollback(Scan *s) {
    for (int i = 0; i < s->n_nodes; i++) {
        Node *n = &s->nodes[i];
        n->count = n->snap_count;
        n->nulls = n->snap_nulls;
        n->data.len = n->snap_data;
        n->valid.len = (size_t)n->count;
        if (n->kind == K_STR || n->kind == K_LIST) n->offsets.len = (size_t)(n->count + 1) * 8;
    }
}

/* A STR node's offsets replaced by Arrow string views into its data: strings of up to 12
 * bytes inline, longer ones as (length, 4-byte prefix, buffer 0, offset). 0, or -1 when
 * memory ran out. The data must stay under 2 GiB (views hold 32-bit offsets). */
static int offsets_to_views(Node *n) {
    Buf views = {0};
    if (buf_grow(&views, (size_t)n->count * 16 + 1) < 0) return -1;
    const int64_t *offsets = (const int64_t *)n->offsets.ptr;
    for (int64_t i = 0; i < n->count; i++) {
        unsigned char *view = (unsigned char *)views.ptr + i * 16;
        int32_t length = (int32_t)(offsets[i + 1] - offsets[i]), offset = (int32_t)offsets[i];
        memset(view, 0, 16);
        memcpy(view, &length, 4);
        if (length <= 12) {
            memcpy(view + 4, n->data.ptr + offset, (size_t)length);
        } else {
            memcpy(view + 4, n->data.ptr + offset, 4);
            memcpy(view + 12, &offset, 4); /* buffer index 0 stays 0 at view + 8 */
        }
    }
    views.len = (size_t)n->count * 16;
    free(n->offsets.ptr);
    n->offsets = views;
    return 0;
}

/* Read every value; 0, or -1 when memory ran out. */
static int scan_values(Scan *s, const unsigned char *data, const int64_t *offsets,
                       Py_ssize_t count, unsigned char *read) {
    Node *root = &s->nodes[0];
    for (Py_ssize_t r = 0; r < count; r++) {
        Cur c = {data + offsets[r], data + offsets[r + 1]};
        snapshot(s);
        skip_ws(&c);
        int ok = read_object(s, root, &c) == 0;
        if (ok) {
            skip_ws(&c);
            ok = c.p == c.end;
        }
        if (s->oom) return -1;
        read[r] = (unsigned char)ok;
        if (!ok) {
            rollback(s);
            if (append_null(s, root) < 0) return -1;
        }
    }
    return 0;
}

static void free_nodes(Node *nodes, int count) {
    for (int i = 0; i < count; i++) {
        free(nodes[i].children);
        free(nodes[i].choice_text);
        free(nodes[i].choice_len);
        free(nodes[i].choice_int);
        free(nodes[i].valid.ptr);
        free(nodes[i].offsets.ptr);
        free(nodes[i].data.ptr);
    }
    free(nodes);
}

/* A Literal's values: bytes for a STR node, ints for an INT node (borrowed from the plan,
 * which the caller keeps alive). */
static int load_choices(Node *n, PyObject *choices) {
    Py_ssize_t count = PyTuple_GET_SIZE(choices);
    if (!count) return 0;
    if ((n->kind != K_STR && n->kind != K_INT) || count > 100000) {
        PyErr_SetString(PyExc_ValueError, "choices are for str and int fields, at most 100000");
        return -1;
    }
    n->n_choices = (int)count;
    if (n->kind == K_STR) {
        n->choice_text = malloc(sizeof(char *) * (size_t)count);
        n->choice_len = malloc(sizeof(Py_ssize_t) * (size_t)count);
        if (!n->choice_text || !n->choice_len) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t k = 0; k < count; k++) {
            char *text;
            if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(choices, k), &text, &n->choice_len[k]))
                return -1;
            n->choice_text[k] = text;
        }
        return 0;
    }
    n->choice_int = malloc(sizeof(int64_t) * (size_t)count);
    if (!n->choice_int) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        n->choice_int[k] = PyLong_AsLongLong(PyTuple_GET_ITEM(choices, k));
        if (n->choice_int[k] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

static int load_plan(PyObject *plan, Scan *s) {
    PyObject *items = PySequence_Fast(plan, "plan must be a sequence");
    if (!items) return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
    if (count < 1 || count > 100000) {
        Py_DECREF(items);
        PyErr_SetString(PyExc_ValueError, "plan must hold a root and at most 100000 nodes");
        return -1;
    }
    s->nodes = calloc((size_t)count, sizeof(Node));
    s->n_nodes = (int)count;
    if (!s->nodes) {
        Py_DECREF(items);
        PyErr_NoMemory();
        return -1;
    }
    int *parents = calloc((size_t)count, sizeof(int));
    if (!parents) goto nomemory;
    for (Py_ssize_t i = 0; i < count; i++) {
        Node *n = &s->nodes[i];
        int required;
        PyObject *choices;
        const char *pattern;
        Py_ssize_t pattern_len;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(items, i), "iy#piO!y#", &n->kind, &n->name,
                              &n->name_len, &required, &parents[i], &PyTuple_Type, &choices,
                              &pattern, &pattern_len))
            goto fail;
        if (pattern_len % 32 || (pattern_len && n->kind != K_STR)) {
            PyErr_Format(PyExc_ValueError, "plan entry %zd: a pattern is 32 bytes a position, "
                                           "for str fields", i);
            goto fail;
        }
        n->pattern = pattern_len ? (const unsigned char *)pattern : NULL;
        n->pattern_width = pattern_len / 32;
        n->required = required;
        if (n->name_len <= 8) memcpy(&n->name_word, n->name, (size_t)n->name_len);
        if (load_choices(n, choices) < 0) goto fail;
        if (n->kind < K_STR || n->kind > K_LIST || parents[i] >= i || (i > 0) != (parents[i] >= 0)) {
            PyErr_Format(PyExc_ValueError, "plan entry %zd is malformed", i);
            goto fail;
        }
    }
    for (Py_ssize_t i = 1; i < count; i++) s->nodes[parents[i]].n_children++;
    for (Py_ssize_t i = 0; i < count; i++) {
        Node *n = &s->nodes[i];
        if (n->kind == K_LIST && n->n_children != 1) {
            PyErr_Format(PyExc_ValueError, "plan entry %zd: a list needs exactly one item", i);
            goto fail;
        }
        if (n->kind != K_STRUCT && n->kind != K_LIST && n->n_children) {
            PyErr_Format(PyExc_ValueError, "plan entry %zd: only structs and lists nest", i);
            goto fail;
        }
        if (n->n_children && !(n->children = malloc(sizeof(int) * (size_t)n->n_children)))
            goto nomemory;
        n->n_children = 0;
        if ((n->kind == K_STR || n->kind == K_LIST) && buf_grow(&n->offsets, 8) < 0)
            goto nomemory;
        if (n->kind == K_STR || n->kind == K_LIST) {
            memset(n->offsets.ptr, 0, 8);
            n->offsets.len = 8;
        }
    }
    for (Py_ssize_t i = 1; i < count; i++) {
        Node *parent = &s->nodes[parents[i]];
        parent->children[parent->n_children++] = (int)i;
    }
    if (s->nodes[0].kind != K_STRUCT) {
        PyErr_SetString(PyExc_ValueError, "plan entry 0 must be the root struct");
        goto fail;
    }
    free(parents);
    Py_DECREF(items);
    return 0;
nomemory:
    PyErr_NoMemory();
fail:
    free(parents);
    Py_DECREF(items);
    return -1;
}

PyObject *json_scan(PyObject *self, PyObject *args) {
    PyObject *plan;
    Py_buffer data, offsets;
    if (!PyArg_ParseTuple(args, "Oy*y*", &plan, &data, &offsets)) return NULL;
    PyObject *result = NULL, *read_obj = NULL, *node_list = NULL;
    Scan s = {0};
    Py_ssize_t count = offsets.len / 8 - 1;
    if (offsets.len % 8 || count < 0) {
        PyErr_SetString(PyExc_ValueError, "offsets must hold count + 1 int64 positions");
        goto done;
    }
    const int64_t *positions = (const int64_t *)offsets.buf;
    for (Py_ssize_t r = 0; r < count; r++) {
        if (positions[r] < 0 || positions[r] > positions[r + 1] || positions[r + 1] > data.len) {
            PyErr_Format(PyExc_ValueError, "offsets %zd..%zd are outside the data", r, r + 1);
            goto done;
        }
    }
    if (load_plan(plan, &s) < 0) goto done;
    read_obj = PyBytes_FromStringAndSize(NULL, count);
    if (!read_obj) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = scan_values(&s, (const unsigned char *)data.buf, positions, count,
                         (unsigned char *)PyBytes_AS_STRING(read_obj));
    Py_END_ALLOW_THREADS;
    for (int i = 0; status == 0 && i < s.n_nodes; i++) {
        Node *n = &s.nodes[i];
        if (n->kind != K_STR) continue;
        if (n->data.len > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError,
                            "a batch's text in one field passes 2 GiB: make batches smaller");
            goto done;
        }
        status = offsets_to_views(n);
    }
    if (status < 0) {
        PyErr_NoMemory();
        goto done;
    }
    node_list = PyList_New(s.n_nodes);
    if (!node_list) goto done;
    for (int i = 0; i < s.n_nodes; i++) {
        Node *n = &s.nodes[i];
        PyObject *valid = buf_hand_over(&n->valid);
        PyObject *offs = valid ? buf_hand_over(&n->offsets) : NULL;
        PyObject *values = offs ? buf_hand_over(&n->data) : NULL;
        if (!values) {
            Py_XDECREF(valid);
            Py_XDECREF(offs);
            goto done;
        }
        PyObject *entry = Py_BuildValue("(LLNNN)", (long long)n->count, (long long)n->nulls,
                                        valid, offs, values);
        if (!entry) goto done;
        PyList_SET_ITEM(node_list, i, entry);
    }
    result = PyTuple_Pack(2, read_obj, node_list);
done:
    Py_XDECREF(read_obj);
    Py_XDECREF(node_list);
    if (s.nodes) free_nodes(s.nodes, s.n_nodes);
    free(s.name.ptr);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    return result;
}
