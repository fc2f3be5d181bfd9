/* The row side of collector/_fastspans.c: _hook_rows and _script_rows of
 * collector/decode_spans.py, over the records filed per run.  Included by
 * _fastspans.c after the message state it reads (msg_t, ent_t, the names). */

/* ------------------------------------------------------------ rows */
static PyObject *or_none(PyObject *o) { return o != NULL ? o : Py_None; }

/* decode_util._int_or_none (new reference) */
static PyObject *int_or_none(PyObject *x) {
    if (x == NULL || x == Py_None || PyLong_CheckExact(x)) { x = or_none(x); Py_INCREF(x); return x; }
    if (PyUnicode_CheckExact(x)) {
        PyObject *r = PyLong_FromUnicodeObject(x, 10);
        if (r != NULL || !PyErr_ExceptionMatches(PyExc_ValueError)) return r;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

/* x.get(k) or dflt (borrowed), NULL on an error */
static PyObject *get_or(PyObject *d, PyObject *key, PyObject *dflt) {
    PyObject *o = d != NULL ? PyDict_GetItemWithError(d, key) : NULL;
    if (o == NULL) return PyErr_Occurred() ? NULL : dflt;
    int t = PyObject_IsTrue(o);
    return t < 0 ? NULL : t ? o : dflt;
}

/* list(a or []) + (b or []), when both are lists or false; NULL otherwise */
static PyObject *warnings(PyObject *s, PyObject *e) {
    PyObject *out = PyList_New(0), *parts[2] = {get_or(s, NM[N_R_WARNINGS], Py_None),
                                                 get_or(e, NM[N_R_WARNINGS], Py_None)};
    for (int i = 0; out && i < 2; i++) {
        if (parts[i] == NULL || (parts[i] != Py_None && !PyList_CheckExact(parts[i]))) { Py_CLEAR(out); break; }
        if (parts[i] != Py_None && PyList_SetSlice(out, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, parts[i])) Py_CLEAR(out);
    }
    return out;
}

static PyObject *ms(PyObject *dur) {  /* dur / 1e6 if type(dur) is int else None */
    if (dur != NULL && PyLong_CheckExact(dur)) return PyNumber_TrueDivide(dur, F1E6);
    Py_RETURN_NONE;
}

/* _hook_rows: one row per hook; its (context, job_id, user) kept on the entry */
typedef struct { PyObject *context, *job_id, *user; } ctx_t;

static PyObject *hook_row(msg_t *m, ent_t *h, ctx_t *cx, PyObject **max_end) {
    PyObject *s = h->s, *e = h->e, *job = get_or(s, NM[N_R_JOB], NULL), *jv[J_COUNT];
    if (PyErr_Occurred() || (job != NULL && !PyDict_CheckExact(job))) return NULL;
    for (int i = 0; i < J_COUNT; i++) {
        jv[i] = job != NULL ? PyDict_GetItemWithError(job, JK[i]) : NULL;
        if (jv[i] == NULL && PyErr_Occurred()) return NULL;
        jv[i] = or_none(jv[i]);
    }
    PyObject *context = get(s, N_R_CONTEXT), *start = get(s, N_R_TS), *end = get(e, N_R_TS);
    if (context == NULL || !PyUnicode_CheckExact(context) || start == NULL || end == NULL) return NULL;
    cx->context = context; cx->job_id = jv[J_JOB_ID]; cx->user = jv[J_USER];
    PyObject *gpus = jv[J_GPUS];
    for (int i = J_CUDA; i <= J_ROCR; i++) {
        int t = PyObject_IsTrue(gpus);
        if (t < 0) return NULL;
        if (!t) gpus = jv[i];
    }
    if (*max_end == NULL || PyObject_RichCompareBool(end, *max_end, Py_GT) == 1) *max_end = end;
    if (PyErr_Occurred()) return NULL;
    PyObject *restart = int_or_none(jv[J_RESTART]), *uid = int_or_none(jv[J_UID]), *warn = warnings(s, e);
    PyObject *dur = ms(get(e, N_R_DURATION_NS)), *age = PyNumber_Subtract(m->received, end), *lag = NULL;
    if (age != NULL) lag = PyNumber_TrueDivide(age, F1E6);
    PyObject *row = NULL;
    if (restart && uid && warn && dur && lag && !PyErr_Occurred())
        row = PyTuple_Pack(30, h->sid_s, h->tid_s, get(s, N_R_CLUSTER), get(s, N_R_NODE), context,
                           or_none(get(s, N_R_LAYOUT)), jv[J_JOB_ID], restart, jv[J_USER], uid, jv[J_PARTITION],
                           jv[J_NODELIST], jv[J_ACCOUNT], jv[J_NAME], jv[J_ARRAY_JOB], jv[J_ARRAY_TASK], gpus,
                           start, end, dur, or_none(get(e, N_R_STATUS)), or_none(get(e, N_R_N_SCRIPTS)),
                           or_none(get(e, N_R_FAILED_INDEX)), Py_False, warn, VERSION, m->received, lag,
                           m->stream_seq, m->attested);
    Py_XDECREF(restart); Py_XDECREF(uid); Py_XDECREF(warn); Py_XDECREF(dur); Py_XDECREF(age); Py_XDECREF(lag);
    return row;
}

/* _script_rows' complete path (both records, every field) */
static PyObject *script_row(msg_t *m, ent_t *sc, ctx_t *cx) {
    static const int SG[10] = {N_R_CLUSTER, N_R_NODE, N_R_INDEX, N_R_PATH, N_R_SHA256, N_R_SIZE, N_R_MODE,
                               N_R_UID, N_R_MTIME, N_R_TS};
    static const int XG[8] = {N_R_TS, N_R_DURATION_NS, N_R_EXIT, N_R_SIGNAL, N_R_TIMED_OUT, N_R_REFUSED,
                              N_R_OUTPUT, N_R_OUTPUT_TRUNCATED};
    PyObject *sv[10], *xv[8];
    for (int i = 0; i < 10; i++) if ((sv[i] = get(sc->s, SG[i])) == NULL) return NULL;
    for (int i = 0; i < 8; i++) if ((xv[i] = get(sc->e, XG[i])) == NULL) return NULL;
    if (!PyUnicode_CheckExact(sv[3])) return NULL;
    PyObject *trunc = xv[7], *cut = get_or(sc->e, NM[N_R_CUT], NULL);
    if (PyErr_Occurred()) return NULL;
    if (cut != NULL) trunc = Py_True;  /* cut in transit (the digest covers the full text) */
    PyObject *exported = get_or(sc->e, NM[N_R_EXPORTED], Py_None);
    if (exported == NULL) return NULL;
    PyObject *dur = ms(xv[1]);
    if (dur == NULL) return NULL;
    PyObject *row = PyTuple_Pack(28, sc->sid_s, sc->hook, sc->tid_s, sv[0], sv[1], cx->context, cx->job_id,
                                 cx->user, sv[2], sv[3], sv[4], sv[5], sv[6], sv[7], sv[8], sv[9], xv[0], dur,
                                 xv[2], xv[3], xv[4], xv[5], Py_False, xv[6], trunc, exported, m->stream_seq,
                                 m->attested);
    Py_DECREF(dur);
    return row;
}

/* (hook rows, script rows, max end) into out[3]; -1: not the fast path */
static int rows(msg_t *m, PyObject **out) {
    ctx_t *cx = PyMem_Calloc(m->n ? m->n : 1, sizeof(ctx_t));
    PyObject *hooks = PyList_New(0), *scripts = PyList_New(0), *max_end = NULL, *row;
    int rc = cx && hooks && scripts ? 0 : -1;
    for (Py_ssize_t i = 0; !rc && i < m->n; i++) {
        ent_t *h = &m->ents[i];
        if (h->script) continue;
        /* only the ending here: Python's (no run row, and its scripts' context from their spans) */
        if (h->s == NULL || (row = hook_row(m, h, &cx[i], &max_end)) == NULL) { rc = -1; break; }
        rc = PyList_Append(hooks, row);
        Py_DECREF(row);
    }
    for (Py_ssize_t i = 0; !rc && i < m->n; i++) {
        ent_t *sc = &m->ents[i];
        if (!sc->script) continue;
        ctx_t *c = NULL;
        for (Py_ssize_t j = 0; j < m->n && c == NULL; j++)
            if (!m->ents[j].script && PyUnicode_Compare(m->ents[j].sid_s, sc->hook) == 0) c = &cx[j];
        if (c == NULL || sc->s == NULL || (row = script_row(m, sc, c)) == NULL) { rc = -1; break; }
        rc = PyList_Append(scripts, row);
        Py_DECREF(row);
    }
    PyMem_Free(cx);
    if (rc) { Py_XDECREF(hooks); Py_XDECREF(scripts); return -1; }
    out[0] = hooks;
    out[1] = scripts;
    out[2] = or_none(max_end);
    Py_INCREF(out[2]);
    return 0;
}

