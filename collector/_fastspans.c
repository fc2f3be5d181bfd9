/* The collector's fast path for the common span message (collector.decode_spans).
 *
 * decode(payload, stream_seq, received_ns) gives the rows that the pure-Python
 * decode_traces gives for the same message, or None: "not mine, ask Python".
 * It says None for anything outside the common case (span events, links,
 * record upgrades, runs split across messages, node events, any field or
 * wire type it does not know, invalid UTF-8, any error), so the Python code
 * stays the one reference, for every dead letter and every rare shape.
 * tests/collector/test_fastspans.py runs both on generated, mutated and
 * fuzzed messages and requires equal results.
 *
 * Why C: the event loop decodes while holding the GIL, and decoding was
 * half its time per span (docs/benchmarks.md "The decoder in C").  The JSON
 * of the records is still parsed by the same msgspec decoder as in Python.
 *
 * Contract names come from emitter.contract through configure(); nothing
 * here spells a record field.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "fastspans_wire.h"

/* ------------------------------------------------------------ configuration */
/* contract names; configure() fills them from emitter.contract */
enum {
    N_R_VERSION, N_R_CLUSTER, N_R_NODE, N_R_SEQ, N_R_KIND, N_R_HOOK_ID, N_R_HASH, N_R_PREV, N_R_TS,
    N_R_CHAIN, N_R_INDEX, N_R_JOB, N_R_CONTEXT, N_R_WARNINGS, N_R_LAYOUT, N_R_DURATION_NS, N_R_STATUS,
    N_R_N_SCRIPTS, N_R_FAILED_INDEX, N_R_PATH, N_R_SHA256, N_R_SIZE, N_R_MODE, N_R_UID, N_R_MTIME,
    N_R_EXIT, N_R_SIGNAL, N_R_TIMED_OUT, N_R_REFUSED, N_R_OUTPUT, N_R_OUTPUT_TRUNCATED, N_R_CUT,
    N_R_EXPORTED, N_K_SCRIPT_STARTED, N_K_SCRIPT_ENDED, N_K_HOOK_STARTED, N_K_HOOK_ENDED,
    N_K_JOURNAL_ERROR, N_K_NODE_EVENT, N_A_RECORDS, N_A_SERVICE_NAME, N_SERVICE_NAME, N_A_ATTESTED_UID,
    N_A_KILLED, N_E_KILLED, N_NO_CHAIN, N_COUNT
};
static const char *NAMES[N_COUNT] = {
    "R_VERSION", "R_CLUSTER", "R_NODE", "R_SEQ", "R_KIND", "R_HOOK_ID", "R_HASH", "R_PREV", "R_TS",
    "R_CHAIN", "R_INDEX", "R_JOB", "R_CONTEXT", "R_WARNINGS", "R_LAYOUT", "R_DURATION_NS", "R_STATUS",
    "R_N_SCRIPTS", "R_FAILED_INDEX", "R_PATH", "R_SHA256", "R_SIZE", "R_MODE", "R_UID", "R_MTIME",
    "R_EXIT", "R_SIGNAL", "R_TIMED_OUT", "R_REFUSED", "R_OUTPUT", "R_OUTPUT_TRUNCATED", "R_CUT",
    "R_EXPORTED", "K_SCRIPT_STARTED", "K_SCRIPT_ENDED", "K_HOOK_STARTED", "K_HOOK_ENDED",
    "K_JOURNAL_ERROR", "K_NODE_EVENT", "A_RECORDS", "A_SERVICE_NAME", "SERVICE_NAME", "A_ATTESTED_UID",
    "A_KILLED", "E_KILLED", "NO_CHAIN"};
/* the job object's keys, in the order configure() gets them (decode_spans.JOB_KEYS) */
enum { J_JOB_ID, J_RESTART, J_USER, J_UID, J_PARTITION, J_NODELIST, J_ACCOUNT, J_NAME, J_ARRAY_JOB,
       J_ARRAY_TASK, J_GPUS, J_CUDA, J_ROCR, J_COUNT };
static PyObject *NM[N_COUNT], *JK[J_COUNT], *LOADS, *DUMPS, *VERSION, *F1E6, *SHA256;
static long long LO_NS, FUTURE_NS, SCHEMA_VERSION;

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *names, *jobkeys, *loads, *dumps, *version;
    long long lo, future;
    if (!PyArg_ParseTuple(args, "OOO!O!OLL", &loads, &dumps, &PyDict_Type, &names, &PyTuple_Type, &jobkeys,
                          &version, &lo, &future))
        return NULL;
    if (PyTuple_GET_SIZE(jobkeys) != J_COUNT) return PyErr_Format(PyExc_ValueError, "%d job keys", J_COUNT);
    for (int i = 0; i < N_COUNT; i++) {
        PyObject *v = PyDict_GetItemString(names, NAMES[i]);
        if (v == NULL || !PyUnicode_CheckExact(v)) return PyErr_Format(PyExc_KeyError, "%s", NAMES[i]);
        Py_INCREF(v);
        Py_XSETREF(NM[i], v);
    }
    for (int i = 0; i < J_COUNT; i++) {
        Py_INCREF(PyTuple_GET_ITEM(jobkeys, i));
        Py_XSETREF(JK[i], PyTuple_GET_ITEM(jobkeys, i));
    }
    SCHEMA_VERSION = PyLong_AsLongLong(version);
    if (SCHEMA_VERSION == -1 && PyErr_Occurred()) return NULL;
    Py_INCREF(loads); Py_XSETREF(LOADS, loads);
    Py_INCREF(dumps); Py_XSETREF(DUMPS, dumps);
    Py_INCREF(version); Py_XSETREF(VERSION, version);
    if (F1E6 == NULL && (F1E6 = PyFloat_FromDouble(1e6)) == NULL) return NULL;
    if (SHA256 == NULL) {
        PyObject *hl = PyImport_ImportModule("hashlib");
        SHA256 = hl ? PyObject_GetAttrString(hl, "sha256") : NULL;
        Py_XDECREF(hl);
        if (SHA256 == NULL) return NULL;
    }
    LO_NS = lo;
    FUTURE_NS = future;
    Py_RETURN_NONE;
}

static PyObject *names(PyObject *self, PyObject *unused) {
    PyObject *t = PyTuple_New(N_COUNT);
    for (int i = 0; t && i < N_COUNT; i++) PyTuple_SET_ITEM(t, i, PyUnicode_FromString(NAMES[i]));
    return t;
}

/* ------------------------------------------------------------ one message */
typedef struct {
    uint8_t sid[8];
    int script;                  /* 1: a script run, 0: a hook run */
    PyObject *sid_s, *tid_s, *hook, *s, *e;  /* strong refs; s/e: started and ended records */
} ent_t;

typedef struct {
    ent_t *ents; Py_ssize_t n, cap;
    PyObject *journal, *events, *attested, *cluster, *stream_seq, *received;
    int attested_set;
    long long hi;
    Py_ssize_t n_spans, n_errors;
    Py_ssize_t text_bytes;
    sl_t *texts; Py_ssize_t n_texts, cap_texts;  /* each span's records, for the digest */
    sl_t *evs; Py_ssize_t cap_evs;               /* the events of the span being decoded */
} msg_t;

#define PYSTR(o, k) (PyUnicode_CheckExact(o) && PyUnicode_Compare((o), NM[k]) == 0)

static ent_t *find(msg_t *m, const uint8_t *sid, int script) {
    for (Py_ssize_t i = 0; i < m->n; i++)
        if (m->ents[i].script == script && !memcmp(m->ents[i].sid, sid, 8)) return &m->ents[i];
    return NULL;
}

static ent_t *add(msg_t *m, const uint8_t *sid, int script, PyObject *sid_s, PyObject *tid_s, PyObject *hook) {
    if (m->n == m->cap) {
        Py_ssize_t cap = m->cap ? 2 * m->cap : 16;
        ent_t *ne = PyMem_Realloc(m->ents, cap * sizeof(ent_t));
        if (ne == NULL) return NULL;
        m->ents = ne; m->cap = cap;
    }
    ent_t *e = &m->ents[m->n++];
    memcpy(e->sid, sid, 8);
    e->script = script;
    Py_INCREF(sid_s); e->sid_s = sid_s;
    Py_INCREF(tid_s); e->tid_s = tid_s;
    Py_XINCREF(hook); e->hook = hook;
    e->s = e->e = NULL;
    return e;
}

/* the resource of one ResourceSpans: its attested uid (None when absent); -1: not the fast path */
static int attest(msg_t *m, sl_t res) {
    rd_t r = {res.p, res.p + res.n};
    uint32_t f; int wt, rc, hv; uint64_t v; sl_t s, key, val, svc = {0}, att = {0};
    int svc_seen = 0, svc_hv = 0, att_seen = 0, att_hv = 0;
    while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1) {
        if (f == 1 && wt == 2) {
            if (walk_kv(s, 0, &key, &val, &hv)) return -1;
            /* the last one of a key wins, as in the dict Python builds */
            if (sl_eq(key, PyUnicode_AsUTF8(NM[N_A_SERVICE_NAME]), PyUnicode_GET_LENGTH(NM[N_A_SERVICE_NAME]))) {
                svc_seen = 1; svc_hv = hv; svc = val;
            } else if (sl_eq(key, PyUnicode_AsUTF8(NM[N_A_ATTESTED_UID]), PyUnicode_GET_LENGTH(NM[N_A_ATTESTED_UID]))) {
                att_seen = 1; att_hv = hv; att = val;
            }
        } else if (!(f == 2 && wt == 0)) return -1;
    }
    if (rc || !svc_seen || !svc_hv) return -1;
    any_t a;
    if (walk_any(svc, 0, &a) || a.count != 1 || a.field != 1 ||
        !sl_eq(a.s, PyUnicode_AsUTF8(NM[N_SERVICE_NAME]), PyUnicode_GET_LENGTH(NM[N_SERVICE_NAME])))
        return -1;
    PyObject *uid;
    if (!att_seen) { uid = Py_None; Py_INCREF(uid); }
    else {
        if (!att_hv || walk_any(att, 0, &a) || a.count != 1 || a.field != 3 || a.v >= ((uint64_t)1 << 32))
            return -1;
        if ((uid = PyLong_FromUnsignedLongLong(a.v)) == NULL) return -1;
    }
    if (m->attested_set) {
        int same = PyObject_RichCompareBool(uid, m->attested, Py_EQ);
        Py_DECREF(uid);
        return same == 1 ? 0 : -1;
    }
    m->attested = uid;
    m->attested_set = 1;
    return 0;
}

/* a record's field (borrowed), NULL when absent (-1 in *bad on an error) */
static inline PyObject *get(PyObject *rec, int k) { return PyDict_GetItemWithError(rec, NM[k]); }

static int name_eq(sl_t s, int k) {
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(NM[k], &n);
    return p != NULL && sl_eq(s, p, n);
}

static void hexify(const uint8_t *p, size_t n, char *out) {
    static const char HX[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) { out[2 * i] = HX[p[i] >> 4]; out[2 * i + 1] = HX[p[i] & 15]; }
}

static int set_rec(PyObject **slot, PyObject *rec) {
    Py_INCREF(rec);
    Py_XSETREF(*slot, rec);
    return 0;
}

/* script_span_id(hook, index) == sid (contract.script_span_id) */
static int script_sid_ok(PyObject *hook, PyObject *idx, PyObject *sid_s) {
    Py_ssize_t hn, sn;
    int ovf;
    const char *hb = PyUnicode_AsUTF8AndSize(hook, &hn), *sb = PyUnicode_AsUTF8AndSize(sid_s, &sn);
    long long ix = PyLong_AsLongLongAndOverflow(idx, &ovf);
    char num[32], hex[16];
    if (hb == NULL || sb == NULL || ovf || (ix == -1 && PyErr_Occurred())) return 0;
    for (Py_ssize_t i = 0; i < hn; i++)
        if ((uint8_t)hb[i] >= 0x80) return 0;  /* Python's .encode("ascii") raises: its dead letter */
    sha_t c;
    sha_init(&c);
    sha_update(&c, (const uint8_t *)hb, hn);
    int k = snprintf(num, sizeof num, ":%lld", ix);
    sha_update(&c, (const uint8_t *)num, k);
    sha_hex(&c, hex, 16);
    return sn == 16 && !memcmp(hex, sb, 16);
}

/* one record of a span: its journal row, and filed under its run; -1: not the fast path */
static int record(msg_t *m, const uint8_t *sid, PyObject *sid_s, PyObject *tid_s, PyObject *rec,
                  const uint8_t *lp, Py_ssize_t ln) {
    PyObject *v = get(rec, N_R_VERSION), *f[8], *chain, *line, *row;
    static const int K8[8] = {N_R_CLUSTER, N_R_NODE, N_R_SEQ, N_R_KIND, N_R_HOOK_ID, N_R_HASH, N_R_PREV, N_R_TS};
    int ovf;
    /* another version: upgraded by Python */
    if (v == NULL || !PyLong_CheckExact(v) || PyLong_AsLongLongAndOverflow(v, &ovf) != SCHEMA_VERSION || ovf)
        return -1;
    for (int i = 0; i < 8; i++)
        if ((f[i] = get(rec, K8[i])) == NULL) return -1;  /* no hook: node events and errors, Python's */
    PyObject *cl = f[0], *node = f[1], *seq = f[2], *kind = f[3], *hook = f[4], *h = f[5], *prev = f[6], *ts = f[7];
    chain = get(rec, N_R_CHAIN);
    if (chain == NULL) {
        if (PyErr_Occurred()) return -1;
        chain = NM[N_NO_CHAIN];
    }
    if (!PyUnicode_CheckExact(chain)) return -1;
    if (cl == Py_None || node == Py_None || seq == Py_None || kind == Py_None || h == Py_None || prev == Py_None)
        return -1;
    if (!PyLong_CheckExact(ts)) return -1;
    long long t = PyLong_AsLongLongAndOverflow(ts, &ovf);
    if (ovf || (t == -1 && PyErr_Occurred()) || t < LO_NS || t > m->hi) return -1;
    if ((line = PyUnicode_DecodeUTF8((const char *)lp, ln, NULL)) == NULL) return -1;
    row = PyTuple_Pack(10, cl, node, chain, seq, kind, hook, h, prev, line, m->attested);
    Py_DECREF(line);
    if (row == NULL || PyList_Append(m->journal, row)) { Py_XDECREF(row); return -1; }
    Py_DECREF(row);
    Py_INCREF(cl);
    Py_XSETREF(m->cluster, cl);
    if (!PyUnicode_CheckExact(kind)) return 0;  /* not a kind Python files either */
    int started;
    if ((started = PYSTR(kind, N_K_SCRIPT_STARTED)) || PYSTR(kind, N_K_SCRIPT_ENDED)) {
        PyObject *idx = get(rec, N_R_INDEX);
        if (idx == NULL || !PyUnicode_CheckExact(hook) || !PyLong_CheckExact(idx) || !script_sid_ok(hook, idx, sid_s))
            return -1;
        ent_t *e = find(m, sid, 1);
        if (e == NULL && (e = add(m, sid, 1, sid_s, tid_s, hook)) == NULL) return -1;
        return set_rec(started ? &e->s : &e->e, rec);
    }
    if ((started = PYSTR(kind, N_K_HOOK_STARTED)) || PYSTR(kind, N_K_HOOK_ENDED)) {
        if (!PyUnicode_CheckExact(hook) || PyUnicode_Compare(hook, sid_s) != 0) return -1;
        ent_t *e = find(m, sid, 0);
        if (e == NULL && (e = add(m, sid, 0, sid_s, tid_s, hook)) == NULL) return -1;
        return set_rec(started ? &e->s : &e->e, rec);
    }
    if (PYSTR(kind, N_K_JOURNAL_ERROR)) m->n_errors++;
    else if (PYSTR(kind, N_K_NODE_EVENT)) return -1;
    return 0;
}

/* the records of one span: one JSON parse (msgspec, as in Python) */
static int records(msg_t *m, const uint8_t *sid, PyObject *sid_s, PyObject *tid_s, sl_t text) {
    Py_ssize_t nlines = 1;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)text.n + 2), *recs;
    if (b == NULL) return -1;
    char *q = PyBytes_AS_STRING(b);
    q[0] = '[';
    for (size_t i = 0; i < text.n; i++) {
        char c = (char)text.p[i];
        if (c == '\n') { c = ','; nlines++; }
        q[i + 1] = c;
    }
    q[text.n + 1] = ']';
    recs = PyObject_CallOneArg(LOADS, b);
    Py_DECREF(b);
    if (recs == NULL) return -1;
    int rc = -1;
    if (PyList_CheckExact(recs) && PyList_GET_SIZE(recs) == nlines) {
        const uint8_t *lp = text.p, *end = text.p + text.n;
        rc = 0;
        for (Py_ssize_t i = 0; i < nlines && !rc; i++) {
            const uint8_t *nl = memchr(lp, '\n', end - lp);
            if (nl == NULL) nl = end;
            PyObject *rec = PyList_GET_ITEM(recs, i);
            rc = PyDict_CheckExact(rec) ? record(m, sid, sid_s, tid_s, rec, lp, nl - lp) : -1;
            lp = nl + 1;
        }
    }
    Py_DECREF(recs);
    return rc;
}

/* an event attribute's value as _any_value gives it: NULL for the kinds
 * left to Python (double, array, kvlist, bytes) */
static PyObject *scalar_any(sl_t val, int has_val) {
    any_t a;
    if (!has_val) Py_RETURN_NONE;
    if (walk_any(val, 0, &a) || a.count > 1) return NULL;
    if (a.count == 0) Py_RETURN_NONE;
    switch (a.field) {
    case 1: return PyUnicode_DecodeUTF8((const char *)a.s.p, a.s.n, NULL);
    case 2: return PyBool_FromLong(a.v != 0);
    case 3: return PyLong_FromLongLong((long long)a.v);
    default: return NULL;
    }
}

/* _span_events for one event: its row, its attributes as JSON (the same
 * json.dumps call); -1 for the kinds Python decodes */
static int event_row(msg_t *m, PyObject *sid_s, PyObject *span_hook, PyObject *span_node, sl_t ev, Py_ssize_t eidx) {
    rd_t r = {ev.p, ev.p + ev.n};
    uint32_t f; int wt, rc, hv, n_name = 0; uint64_t v, ts = 0; sl_t s, key, val, name = {0};
    PyObject *attrs = PyDict_New(), *k = NULL, *x = NULL, *row = NULL;
    if (attrs == NULL) return -1;
    while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1) {
        if (f == 1 && wt == 1) {  /* fixed64, little-endian on the wire */
            ts = 0;
            for (int i = 7; i >= 0; i--) ts = ts << 8 | r.p[i - 8];
        }
        else if (f == 2 && wt == 2 && !n_name++ && utf8_ok(s.p, s.n)) name = s;
        else if (f == 3 && wt == 2 && !walk_kv(s, 0, &key, &val, &hv)) {
            k = PyUnicode_DecodeUTF8((const char *)key.p, key.n, NULL);
            x = k ? scalar_any(val, hv) : NULL;
            rc = x ? PyDict_SetItem(attrs, k, x) : -1;  /* the last of a key wins, as in Python's dict */
            Py_CLEAR(k); Py_CLEAR(x);
            if (rc) break;
        } else if (!(f == 4 && wt == 0)) { rc = -1; break; }
    }
    PyObject *nm = rc ? NULL : PyUnicode_DecodeUTF8((const char *)(name.p ? name.p : ev.p), name.n, NULL);
    if (nm != NULL && ts >= (uint64_t)LO_NS && ts <= (uint64_t)m->hi && !PYSTR(nm, N_E_KILLED)) {
        PyObject *js = PyObject_CallOneArg(DUMPS, attrs), *t = PyLong_FromUnsignedLongLong(ts);
        PyObject *i = PyLong_FromSsize_t(eidx);
        if (js && t && i) row = PyTuple_Pack(7, sid_s, span_hook, span_node, t, nm, js, i);
        Py_XDECREF(js); Py_XDECREF(t); Py_XDECREF(i);
    }
    Py_XDECREF(nm);
    Py_DECREF(attrs);
    rc = row != NULL && !PyList_Append(m->events, row) ? 0 : -1;
    Py_XDECREF(row);
    return rc;
}

/* _span_events: a row per event; the span's hook is the first one its
 * records name (not None), its node the last record's */
static int span_events(msg_t *m, PyObject *sid_s, Py_ssize_t first, sl_t *evs, Py_ssize_t n) {
    Py_ssize_t end = PyList_GET_SIZE(m->journal);
    PyObject *jl = PyList_GET_ITEM(m->journal, end - 1), *hook = Py_None;
    for (Py_ssize_t j = first; j < end && hook == Py_None; j++)
        hook = PyTuple_GET_ITEM(PyList_GET_ITEM(m->journal, j), 5);
    for (Py_ssize_t i = 0; i < n; i++)
        if (event_row(m, sid_s, hook, PyTuple_GET_ITEM(jl, 1), evs[i], i)) return -1;
    return 0;
}

/* one Span; -1: not the fast path (events and links are Python's) */
static int span(msg_t *m, sl_t sp) {
    rd_t r = {sp.p, sp.p + sp.n};
    uint32_t f; int wt, rc, hv, n_rec = 0, rec_hv = 0, n_tid = 0, n_sid = 0, n_killed = 0;
    Py_ssize_t n_ev = 0;
    uint64_t v; sl_t s, key, val, tid = {0}, sid = {0}, recv = {0};
    while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1) {
        int ok;
        switch (f) {
        case 1: ok = wt == 2 && !n_tid++; tid = s; break;
        case 2: ok = wt == 2 && !n_sid++; sid = s; break;
        case 3: case 5: ok = wt == 2 && utf8_ok(s.p, s.n); break;
        case 4: ok = wt == 2; break;
        case 6: case 10: case 12: case 14: ok = wt == 0; break;
        case 7: case 8: ok = wt == 1; break;
        case 16: ok = wt == 5; break;
        case 9:
            ok = wt == 2 && !walk_kv(s, 0, &key, &val, &hv);
            if (ok && name_eq(key, N_A_RECORDS)) { n_rec++; rec_hv = hv; recv = val; }
            else if (ok && name_eq(key, N_A_KILLED)) n_killed++;
            break;
        case 11:  /* walked after the records (span_events) */
            ok = wt == 2 && !push_slice(&m->evs, &n_ev, &m->cap_evs, s);
            break;
        case 15: ok = wt == 2 && !walk_status(s); break;
        default: ok = 0;
        }
        if (!ok) return -1;
    }
    any_t a;
    if (rc || n_rec != 1 || !rec_hv || sid.n != 8 || tid.n != 16) return -1;
    if (walk_any(recv, 0, &a) || a.count != 1 || a.field != 1 || a.s.n == 0) return -1;
    char hx[32];
    hexify(sid.p, 8, hx);
    PyObject *sid_s = PyUnicode_FromStringAndSize(hx, 16);
    hexify(tid.p, 16, hx);
    PyObject *tid_s = PyUnicode_FromStringAndSize(hx, 32);
    Py_ssize_t first = PyList_GET_SIZE(m->journal);
    rc = sid_s && tid_s ? records(m, sid.p, sid_s, tid_s, a.s) : -1;
    /* events: the runner-killed ones (event or attribute) are Python's */
    if (!rc && n_ev) rc = n_killed ? -1 : span_events(m, sid_s, first, m->evs, n_ev);
    Py_XDECREF(sid_s);
    Py_XDECREF(tid_s);
    if (rc) return -1;
    m->n_spans++;
    if (push_slice(&m->texts, &m->n_texts, &m->cap_texts, a.s)) return -1;
    m->text_bytes += a.s.n + 1;
    /* a run whose end is not in its span: the killed attribute, Python's */
    ent_t *e = find(m, sid.p, 1);
    if (e == NULL) e = find(m, sid.p, 0);
    return e != NULL && e->e == NULL ? -1 : 0;
}

static int scope_spans(msg_t *m, sl_t ss) {
    rd_t r = {ss.p, ss.p + ss.n};
    uint32_t f; int wt, rc; uint64_t v; sl_t s;
    while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1) {
        if (wt != 2) return -1;
        if (f == 1) { if (walk_scope(s)) return -1; }
        else if (f == 2) { if (span(m, s)) return -1; }
        else if (f == 3) { if (!utf8_ok(s.p, s.n)) return -1; }
        else return -1;
    }
    return rc;
}

static int resource_spans(msg_t *m, sl_t rs) {
    rd_t r = {rs.p, rs.p + rs.n};
    uint32_t f; int wt, rc, n_res = 0; uint64_t v; sl_t s, res = {0};
    /* the resource first (Python attests it before the spans), whatever the wire order */
    while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1) {
        if (wt != 2) return -1;
        if (f == 1) { if (n_res++) return -1; res = s; }  /* twice: protobuf merges them */
        else if (f == 3) { if (!utf8_ok(s.p, s.n)) return -1; }
        else if (f != 2) return -1;
    }
    if (rc || !n_res || attest(m, res)) return -1;
    r.p = rs.p;
    while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1)
        if (f == 2 && scope_spans(m, s)) return -1;
    return rc;
}

#include "fastspans_rows.h"

/* ------------------------------------------------------------ entry point */
/* contract.records_digest: hashlib's sha256 (OpenSSL's, several times faster
 * than the portable one above on a message's kilobytes) of the spans'
 * records joined by newlines */
static PyObject *records_digest(msg_t *m) {
    PyObject *b = PyBytes_FromStringAndSize(NULL, m->text_bytes ? m->text_bytes - 1 : 0), *h, *hex = NULL;
    if (b == NULL) return NULL;
    char *q = PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0; i < m->n_texts; i++) {
        if (i) *q++ = '\n';
        memcpy(q, m->texts[i].p, m->texts[i].n);
        q += m->texts[i].n;
    }
    h = PyObject_CallOneArg(SHA256, b);
    Py_DECREF(b);
    if (h != NULL) hex = PyObject_CallMethod(h, "hexdigest", NULL);
    Py_XDECREF(h);
    return hex;
}

static void msg_free(msg_t *m) {
    for (Py_ssize_t i = 0; i < m->n; i++) {
        ent_t *e = &m->ents[i];
        Py_XDECREF(e->sid_s); Py_XDECREF(e->tid_s); Py_XDECREF(e->hook); Py_XDECREF(e->s); Py_XDECREF(e->e);
    }
    PyMem_Free(m->ents);
    PyMem_Free(m->texts);
    PyMem_Free(m->evs);
    Py_XDECREF(m->journal); Py_XDECREF(m->events); Py_XDECREF(m->attested); Py_XDECREF(m->cluster);
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *stream_seq, *received, *res = NULL, *out[3] = {NULL, NULL, NULL};
    if (LOADS == NULL) return PyErr_Format(PyExc_RuntimeError, "_fastspans.configure() was not called");
    if (!PyArg_ParseTuple(args, "y*OO", &buf, &stream_seq, &received)) return NULL;
    msg_t m = {0};
    m.stream_seq = stream_seq;
    m.received = received;
    int ovf, rc = -1, n_rs = 0;
    long long rns = PyLong_AsLongLongAndOverflow(received, &ovf);
    if (!ovf && !(rns == -1 && PyErr_Occurred()) && rns <= LLONG_MAX - FUTURE_NS && (m.journal = PyList_New(0))
        && (m.events = PyList_New(0))) {
        m.hi = rns + FUTURE_NS;
        rd_t r = {buf.buf, (const uint8_t *)buf.buf + buf.len};
        uint32_t f; int wt; uint64_t v; sl_t s;
        while ((rc = rd_field(&r, &f, &wt, &v, &s)) == 1) {
            n_rs++;
            if (f != 1 || wt != 2 || resource_spans(&m, s)) { rc = -1; break; }
        }
        /* no span at all: Python's dead letter ("no journal records") */
        if (!rc && (!n_rs || !m.n_spans || rows(&m, out))) rc = -1;
    }
    PyBuffer_Release(&buf);
    PyObject *digest = rc ? NULL : records_digest(&m);
    if (digest != NULL)
        res = Py_BuildValue("(nOOnOOOOO)", m.n_spans, m.cluster, digest, m.n_errors, m.journal, m.events,
                            out[0], out[1], out[2]);
    Py_XDECREF(digest);
    Py_XDECREF(out[0]); Py_XDECREF(out[1]); Py_XDECREF(out[2]);
    msg_free(&m);
    if (res == NULL) {  /* not the fast path, or a failure here: Python decodes it (and says why) */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return res;
}

static PyMethodDef METHODS[] = {
    {"configure", configure, METH_VARARGS,
     "configure(loads, dumps, names, job_keys, schema_version, min_ts_ns, max_future_ns): the contract's "
     "names, the records' JSON parser and the event attributes' JSON writer"},
    {"names", names, METH_NOARGS, "the emitter.contract names configure() needs"},
    {"decode", decode, METH_VARARGS,
     "decode(payload, stream_seq, received_ns) -> (n_spans, cluster, records_digest, n_journal_errors, "
     "journal, span_events, hook_runs, script_runs, max_end_ns), or None: decode it in Python"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_fastspans",
                                    "The common span message, decoded in C (collector.decode_spans).", -1, METHODS};

PyMODINIT_FUNC PyInit__fastspans(void) { return PyModule_Create(&MODULE); }
