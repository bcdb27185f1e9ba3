/* The per-line loop of the QEMU log-backend reader (toolkit/parsers/qemu_log.py), in C.
 *
 * lines(): for each line of a block of complete lines, its bounds, the `TID@SEC.USEC:` prefix (tid, time in
 *          ns), the event name and argument bounds, whether the line is one the fast path takes (a valid event
 *          name, and a prefix whose digit runs fit), and the typed columns from `key value` pairs (the first
 *          occurrence of each column's keys, value = the next token). Lines it does not take go to the
 *          reader's regex path.
 *
 * The rules are qemu_log.py's (see _parse_block, _typed_args and parse_ints there); tests compare the two on
 * real logs and damaged ones. Arrays come from the reader with the dtypes declared below; sizes are checked
 * before any access; the loop runs without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int need(Py_buffer *v, Py_ssize_t bytes, const char *what) {
    if (v->len < bytes) {
        PyErr_Format(PyExc_ValueError, "_qemulogc: %s has %zd bytes, %zd needed", what, v->len, bytes);
        return 0;
    }
    return 1;
}

/* count(block) -> number of newline bytes */
static PyObject *count(PyObject *self, PyObject *args) {
    Py_buffer d;
    if (!PyArg_ParseTuple(args, "y*", &d))
        return NULL;
    int64_t n = 0;
    const char *p = d.buf, *end = p + d.len;
    Py_BEGIN_ALLOW_THREADS
    while (p < end && (p = memchr(p, '\n', end - p)) != NULL)
        n++, p++;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&d);
    return PyLong_FromLongLong(n);
}

/* a..b all ASCII digits, 1..maxlen of them: their value in *v */
static inline int digits(const uint8_t *b, int64_t a, int64_t e, int maxlen, int64_t *v) {
    int64_t n = e - a, x = 0;
    if (n < 1 || n > maxlen)
        return 0;
    for (int64_t i = a; i < e; i++) {
        if (b[i] < '0' || b[i] > '9')
            return 0;
        x = x * 10 + (b[i] - '0');
    }
    *v = x;
    return 1;
}

/* the event-name rule [a-z][a-z0-9]*_[A-Za-z0-9_]* (whole name) */
static inline int good_name(const uint8_t *b, int64_t a, int64_t e) {
    if (e - a < 2 || b[a] < 'a' || b[a] > 'z')
        return 0;
    int seen = 0;
    for (int64_t i = a + 1; i < e; i++) {
        uint8_t c = b[i];
        if (c == '_')
            seen = 1;
        else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
            ;
        else if (seen && c >= 'A' && c <= 'Z')
            ;
        else
            return 0;
    }
    return seen;
}

static inline int hexval(uint8_t c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* parse_ints(unsigned=True) of one token: (nil) = 0, 0x + at most 16 hex digits, decimal with at most one
 * '-' (down to -2**63, two's complement) up to 2**64 - 1; 1 if valid */
static inline int value(const uint8_t *p, int64_t n, uint64_t *out) {
    uint64_t v = 0;
    if (n == 5 && memcmp(p, "(nil)", 5) == 0) {
        *out = 0;
        return 1;
    }
    if (n >= 2 && p[0] == '0' && p[1] == 'x') {
        if (n - 2 > 16)
            return 0;
        for (int64_t i = 2; i < n; i++) {
            int h = hexval(p[i]);
            if (h < 0)
                return 0;
            v = (v << 4) | (uint64_t)h;
        }
        *out = v;
        return 1;
    }
    int neg = n > 0 && p[0] == '-';
    int64_t nd = n - neg;
    if (nd < 1 || nd > (neg ? 19 : 20))
        return 0;
    for (int64_t i = neg; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        uint64_t d = p[i] - '0';
        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (1ULL << 63))
            return 0;
        v = 0 - v;
    }
    *out = v;
    return 1;
}

/* lines(block, keys, keycol, ncol, s i64, e i64, ev_s i64, sp i64, fast u8, legacy u8, tid i64, t i64,
 *       cols i64[ncol*cap], nulls u8[ncol*cap]) -> lines
 * keys: the argument names joined by '\0' (keycol[j]: column of key j). cap = len(s) must be at least the
 * number of newlines of the block; bytes after the last newline are not read. */
static PyObject *lines(PyObject *self, PyObject *args) {
    Py_buffer d, ky, kc, S, E, EV, SP, F, LG, TD, T, C, NU;
    long long ncol;
    if (!PyArg_ParseTuple(args, "y*y*y*Lw*w*w*w*w*w*w*w*w*w*", &d, &ky, &kc, &ncol, &S, &E, &EV, &SP, &F, &LG, &TD,
                          &T, &C, &NU))
        return NULL;
    Py_buffer *all[] = {&d, &ky, &kc, &S, &E, &EV, &SP, &F, &LG, &TD, &T, &C, &NU};
    PyObject *ret = NULL;
    int64_t cap = S.len / 8;
    enum { MAXKEYS = 64 };
    const uint8_t *kstart[MAXKEYS];
    int64_t klen[MAXKEYS], kcol[MAXKEYS], nk = 0;
    const uint8_t *kb = ky.buf;
    for (int64_t i = 0, a = 0; i <= ky.len; i++)
        if (i == ky.len || kb[i] == 0) {
            if (nk == MAXKEYS) {
                PyErr_SetString(PyExc_ValueError, "_qemulogc: too many keys");
                goto out;
            }
            kstart[nk] = kb + a, klen[nk] = i - a, nk++, a = i + 1;
        }
    if (ncol < 0 || ncol > 64 || !need(&kc, nk * 8, "keycol") || !need(&E, cap * 8, "e") ||
        !need(&EV, cap * 8, "ev_s") || !need(&SP, cap * 8, "sp") || !need(&F, cap, "fast") ||
        !need(&LG, cap, "legacy") || !need(&TD, cap * 8, "tid") || !need(&T, cap * 8, "t") ||
        !need(&C, ncol * cap * 8, "cols") || !need(&NU, ncol * cap, "nulls"))
        goto out;
    for (int64_t j = 0; j < nk; j++) {
        kcol[j] = ((const int64_t *)kc.buf)[j];
        if (kcol[j] < 0 || kcol[j] >= ncol) {
            PyErr_SetString(PyExc_ValueError, "_qemulogc: key column out of range");
            goto out;
        }
    }
    const uint8_t *b = d.buf;
    int64_t L = d.len, n = 0, *s_ = S.buf, *e_ = E.buf, *ev_ = EV.buf, *sp_ = SP.buf, *tid_ = TD.buf, *t_ = T.buf,
            *cols = C.buf;
    uint8_t *fast_ = F.buf, *leg_ = LG.buf, *nulls = NU.buf;
    int over = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t s = 0;
    while (s < L) {
        const uint8_t *nl = memchr(b + s, '\n', L - s);
        if (!nl)
            break;
        if (n == cap) {
            over = 1;
            break;
        }
        int64_t e = nl - b, sp = e, co = -1, at = -1, dot = -1;
        for (int64_t i = s; i < e; i++) {  /* first space; before it the first ':', '@' before that, '.' after '@' */
            uint8_t c = b[i];
            if (c == ' ') {
                sp = i;
                break;
            }
            if (co < 0) {
                if (c == ':')
                    co = i;
                else if (c == '@' && at < 0)
                    at = i;
                else if (c == '.' && at >= 0 && dot < 0)
                    dot = i;
            }
        }
        if (co < 0)
            co = sp;
        if (at < 0)
            at = co;
        if (dot < 0)
            dot = co;
        int legacy = co < sp && at > s && dot > at + 1 && co > dot + 1;
        int64_t evs = legacy ? co + 1 : s;
        int fast = good_name(b, evs, sp);
        int64_t tid = 0, t = 0;
        if (fast && legacy) {
            int64_t sec, usec;
            fast = digits(b, s, at, 18, &tid) && digits(b, at + 1, dot, 10, &sec) && digits(b, dot + 1, co, 9, &usec);
            if (fast) {
                int64_t scale = 1;
                for (int64_t k = co - dot - 1; k < 9; k++)
                    scale *= 10;
                /* wraps like numpy's int64 for a 10-digit second count beyond 2**63 ns (no UB: unsigned) */
                t = (int64_t)((uint64_t)sec * 1000000000ULL + (uint64_t)usec * (uint64_t)scale);
            }
        }
        s_[n] = s, e_[n] = e, ev_[n] = evs, sp_[n] = sp, fast_[n] = fast, leg_[n] = legacy && fast;
        tid_[n] = tid, t_[n] = t;
        for (int64_t c = 0; c < ncol; c++)
            cols[c * cap + n] = 0, nulls[c * cap + n] = 1;
        if (fast) {  /* tokens of the arguments [sp + 1, e), split at every space */
            uint64_t done = 0;
            int64_t a = sp + 1 < e ? sp + 1 : e;
            while (1) {
                const uint8_t *q = memchr(b + a, ' ', e - a);
                int64_t z = q ? q - b : e;
                if (!q)
                    break;  /* the last token is no key (it has no value) */
                int64_t len = z - a;
                for (int64_t j = 0; j < nk; j++)
                    if (klen[j] == len && memcmp(kstart[j], b + a, len) == 0) {
                        int64_t c = kcol[j];
                        if (!(done & (1ULL << c))) {
                            done |= 1ULL << c;
                            const uint8_t *vq = memchr(b + z + 1, ' ', e - z - 1);
                            int64_t ve = vq ? vq - b : e;
                            uint64_t v;
                            if (value(b + z + 1, ve - z - 1, &v))
                                cols[c * cap + n] = (int64_t)v, nulls[c * cap + n] = 0;
                        }
                        break;
                    }
                a = z + 1;
            }
        }
        n++;
        s = e + 1;
    }
    Py_END_ALLOW_THREADS
    if (over) {
        PyErr_SetString(PyExc_ValueError, "_qemulogc: more lines than the arrays hold");
        goto out;
    }
    ret = PyLong_FromLongLong(n);
out:
    for (size_t j = 0; j < sizeof(all) / sizeof(all[0]); j++)
        PyBuffer_Release(all[j]);
    return ret;
}

static PyMethodDef methods[] = {
    {"count", count, METH_VARARGS, "Number of newline bytes."},
    {"lines", lines, METH_VARARGS, "Bounds, prefix, event name, fast-path flag and typed columns of each line."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_qemulogc", .m_doc = "Per-line loop of the QEMU log-backend reader.",
    .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__qemulogc(void) { return PyModule_Create(&module); }
