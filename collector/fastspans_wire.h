/* The wire side of collector/_fastspans.c: SHA-256 (for script span IDs),
 * the protobuf reader, strict UTF-8 and the OTLP value walkers.  No Python
 * objects here, except Py_ssize_t and PyMem for the slice arrays. */
#ifndef HOOKSCOPE_FASTSPANS_WIRE_H
#define HOOKSCOPE_FASTSPANS_WIRE_H
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------ sha256 */
typedef struct { uint32_t h[8]; uint64_t len; uint8_t buf[64]; size_t n; } sha_t;
static const uint32_t SK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(sha_t *c, const uint8_t *p) {
    uint32_t w[64], a, b, d, e, f, g, h, cc, t1, t2;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = c->h[0]; b = c->h[1]; cc = c->h[2]; d = c->h[3]; e = c->h[4]; f = c->h[5]; g = c->h[6]; h = c->h[7];
    for (int i = 0; i < 64; i++) {
        t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + SK[i] + w[i];
        t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g; g = f; f = e; e = d + t1; d = cc; cc = b; b = a; a = t1 + t2;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d; c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}

static void sha_init(sha_t *c) {
    static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, H0, sizeof H0);
    c->len = 0;
    c->n = 0;
}

static void sha_update(sha_t *c, const uint8_t *p, size_t n) {
    c->len += n;
    while (n) {
        size_t k = 64 - c->n < n ? 64 - c->n : n;
        memcpy(c->buf + c->n, p, k);
        c->n += k; p += k; n -= k;
        if (c->n == 64) { sha_block(c, c->buf); c->n = 0; }
    }
}

/* the first nhex lowercase hex digits of the digest */
static void sha_hex(sha_t *c, char *out, int nhex) {
    static const char HX[] = "0123456789abcdef";
    uint64_t bits = c->len * 8;
    uint8_t pad[64] = {0x80}, dig[32], lenb[8];
    sha_update(c, pad, 1 + (c->n < 56 ? 55 - c->n : 119 - c->n));
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(c, lenb, 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) dig[4 * i + j] = (uint8_t)(c->h[i] >> (24 - 8 * j));
    for (int i = 0; i < nhex; i++) out[i] = HX[(dig[i / 2] >> (i % 2 ? 0 : 4)) & 15];
}

/* ------------------------------------------------------------ protobuf wire */
typedef struct { const uint8_t *p, *end; } rd_t;
typedef struct { const uint8_t *p; size_t n; } sl_t;   /* a slice of the payload */

static int rd_varint(rd_t *r, uint64_t *v) {
    uint64_t x = 0;
    for (int s = 0; s < 70; s += 7) {
        if (r->p >= r->end) return -1;
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) { *v = x; return s == 63 && b > 1 ? -1 : 0; }
    }
    return -1;
}

/* next field: 1, 0 at the end, -1 on bad input; LEN fields come back in *s */
static int rd_field(rd_t *r, uint32_t *field, int *wt, uint64_t *v, sl_t *s) {
    uint64_t tag;
    if (r->p == r->end) return 0;
    if (rd_varint(r, &tag) || tag >> 32 || (tag >> 3) == 0) return -1;
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    switch (*wt) {
    case 0: return rd_varint(r, v) ? -1 : 1;
    case 1: if (r->end - r->p < 8) return -1; r->p += 8; return 1;
    case 5: if (r->end - r->p < 4) return -1; r->p += 4; return 1;
    case 2:
        if (rd_varint(r, v) || *v > (uint64_t)(r->end - r->p)) return -1;
        s->p = r->p; s->n = (size_t)*v; r->p += *v;
        return 1;
    default: return -1;  /* groups: not in OTLP */
    }
}

/* strict UTF-8, as protobuf requires of string fields */
static int utf8_ok(const uint8_t *p, size_t n) {
    const uint8_t *e = p + n;
    while (p < e) {
        uint64_t w;
        if (e - p >= 8 && (memcpy(&w, p, 8), !(w & 0x8080808080808080ULL))) { p += 8; continue; }
        uint8_t c = *p;
        if (c < 0x80) { p++; continue; }
        int k; uint32_t cp;
        if ((c & 0xe0) == 0xc0) { k = 1; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { k = 2; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { k = 3; cp = c & 0x07; }
        else return 0;
        if (e - p <= k) return 0;
        for (int i = 1; i <= k; i++) {
            if ((p[i] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        p += k + 1;
    }
    return 1;
}

/* One AnyValue: 0 when valid (nested values walked), its set field count and
 * the last one (field number, varint, slice). */
typedef struct { int count; uint32_t field; uint64_t v; sl_t s; } any_t;
static int walk_kv(sl_t m, int depth, sl_t *key, sl_t *val, int *has_val);

static int walk_any(sl_t m, int depth, any_t *a) {
    rd_t r = {m.p, m.p + m.n};
    uint32_t f; int wt, rc; uint64_t v; sl_t s;
    a->count = 0;
    if (depth > 16) return -1;
    while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1) {
        if ((f == 2 || f == 3) && wt == 0) { a->v = v; }
        else if (f == 4 && wt == 1) { }
        else if ((f == 1 || f == 7) && wt == 2) { if (f == 1 && !utf8_ok(s.p, s.n)) return -1; a->s = s; }
        else if (f == 5 && wt == 2) {  /* ArrayValue { repeated AnyValue values = 1; } */
            rd_t r2 = {s.p, s.p + s.n}; uint32_t f2; int wt2, rc2; uint64_t v2; sl_t s2; any_t inner;
            while ((rc2 = rd_field(&r2, &f2, &wt2, &v2, &s2)) == 1)
                if (f2 != 1 || wt2 != 2 || walk_any(s2, depth + 1, &inner)) return -1;
            if (rc2) return -1;
        } else if (f == 6 && wt == 2) {  /* KeyValueList { repeated KeyValue values = 1; } */
            rd_t r2 = {s.p, s.p + s.n}; uint32_t f2; int wt2, rc2, hv; uint64_t v2; sl_t s2, k, val;
            while ((rc2 = rd_field(&r2, &f2, &wt2, &v2, &s2)) == 1)
                if (f2 != 1 || wt2 != 2 || walk_kv(s2, depth + 1, &k, &val, &hv)) return -1;
            if (rc2) return -1;
        } else return -1;
        a->count++;
        a->field = f;
    }
    return rc;
}

/* One KeyValue: its key and (unwalked) value; 0 when valid.  A value is
 * walked by the caller when it matters, else here. */
static int walk_kv(sl_t m, int depth, sl_t *key, sl_t *val, int *has_val) {
    rd_t r = {m.p, m.p + m.n};
    uint32_t f; int wt, rc, nk = 0; uint64_t v; sl_t s;
    any_t a;
    key->p = m.p; key->n = 0; *has_val = 0;
    while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1) {
        if (f == 1 && wt == 2 && !nk++) { if (!utf8_ok(s.p, s.n)) return -1; *key = s; }
        else if (f == 2 && wt == 2 && !*has_val) { *val = s; *has_val = 1; }
        else return -1;  /* a repeated key or value: protobuf merges, leave it to Python */
    }
    if (rc) return -1;
    return *has_val ? walk_any(*val, depth, &a) : 0;
}

static int push_slice(sl_t **arr, Py_ssize_t *n, Py_ssize_t *cap, sl_t s) {
    if (*n == *cap) {
        Py_ssize_t nc = *cap ? 2 * *cap : 16;
        sl_t *na = PyMem_Realloc(*arr, nc * sizeof(sl_t));
        if (na == NULL) return -1;
        *arr = na; *cap = nc;
    }
    (*arr)[(*n)++] = s;
    return 0;
}

static int sl_eq(sl_t s, const char *p, Py_ssize_t n) { return (Py_ssize_t)s.n == n && !memcmp(s.p, p, n); }

/* Status and InstrumentationScope: walked for validity only */
static int walk_status(sl_t s) {
    rd_t r = {s.p, s.p + s.n};
    uint32_t f; int wt, rc; uint64_t v; sl_t x;
    while ((rc = rd_field(&r, &f, &wt, &v, &x)) == 1)
        if (!((f == 2 && wt == 2 && utf8_ok(x.p, x.n)) || (f == 3 && wt == 0))) return -1;
    return rc;
}

static int walk_scope(sl_t s) {
    rd_t r = {s.p, s.p + s.n};
    uint32_t f; int wt, rc, hv; uint64_t v; sl_t x, k, val;
    while ((rc = rd_field(&r, &f, &wt, &v, &x)) == 1) {
        if ((f == 1 || f == 2) && wt == 2) { if (!utf8_ok(x.p, x.n)) return -1; }
        else if (f == 3 && wt == 2) { if (walk_kv(x, 0, &k, &val, &hv)) return -1; }
        else if (!(f == 4 && wt == 0)) return -1;
    }
    return rc;
}

#endif
