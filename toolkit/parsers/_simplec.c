/* The two per-record loops of the QEMU simple-backend reader (toolkit/parsers/qemu_simple.py), in C.
 *
 * events(): from a byte offset, the run of event records that follow one another; the reader handles
 *           whatever stops the run (mapping records, bytes that are no record, a cut record) itself.
 * fill():   typed columns, the `args` text (name=0x.. pairs, strings as written) and the state strings of
 *           rows [lo, hi).
 *
 * Every array comes from the reader with the dtype it declares below; sizes are checked here before any
 * access. The GIL is released while a loop runs, so the reader decodes two halves on two threads.
 * Record layout (docs/formats.md 4.4): u64 type 1, u64 id, u64 time ns, u32 length, u32 pid, args
 * (length - 24 bytes); an integer argument is one u64, a string u32 length + bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t rd64(const uint8_t *b, int64_t p, int big) {
    uint64_t v;
    memcpy(&v, b + p, 8);
    return big ? __builtin_bswap64(v) : v;
}

static inline int64_t rd32(const uint8_t *b, int64_t p, int big) {
    uint32_t v;
    memcpy(&v, b + p, 4);
    return (int64_t)(big ? __builtin_bswap32(v) : v);
}

/* an event record fits at byte p: type 1, an id below max_eid (or the dropped id), a length that fits */
static inline int is_event(const uint8_t *b, int64_t L, int64_t p, int big, uint64_t max_eid,
                           uint64_t dropped) {
    if (p + 32 > L || rd64(b, p, big) != 1)
        return 0;
    uint64_t e = rd64(b, p + 8, big);
    int64_t n = rd32(b, p + 24, big);
    return (e < max_eid || e == dropped) && n >= 24 && p + 8 + n <= L;
}

static int need(Py_buffer *v, Py_ssize_t bytes, const char *what) {
    if (v->len < bytes) {
        PyErr_Format(PyExc_ValueError, "_simplec: %s has %zd bytes, %zd needed", what, v->len, bytes);
        return 0;
    }
    return 1;
}

/* events(data, big, p, max_eid, dropped, starts i64, eid u64, ts u64, pid i64, length i64, n0)
 *   -> (p, n): records written at [n0, n); p = where the run stopped (the end of the data or a byte where no
 *   event record fits). The output arrays must hold at least n0 + (len(data) - p) // 32 entries. */
static PyObject *events(PyObject *self, PyObject *args) {
    Py_buffer d, st, ei, ts, pi, ln;
    int big;
    long long p, n0;
    unsigned long long max_eid, dropped;
    if (!PyArg_ParseTuple(args, "y*pLKKw*w*w*w*w*L", &d, &big, &p, &max_eid, &dropped, &st, &ei, &ts, &pi, &ln,
                          &n0))
        return NULL;
    PyObject *ret = NULL;
    const uint8_t *b = d.buf;
    int64_t L = d.len, n = n0;
    Py_ssize_t cap = (Py_ssize_t)(n0 + (L > p ? (L - p) / 32 : 0) + 1) * 8;
    if (p < 0 || n0 < 0 || !need(&st, cap, "starts") || !need(&ei, cap, "eid") || !need(&ts, cap, "ts") ||
        !need(&pi, cap, "pid") || !need(&ln, cap, "length"))
        goto out;
    int64_t *S = st.buf, *P = pi.buf, *N = ln.buf;
    uint64_t *E = ei.buf, *T = ts.buf;
    Py_BEGIN_ALLOW_THREADS
    while (is_event(b, L, p, big, max_eid, dropped)) {
        int64_t len = rd32(b, p + 24, big);
        S[n] = p;
        E[n] = rd64(b, p + 8, big);
        T[n] = rd64(b, p + 16, big);
        P[n] = rd32(b, p + 28, big);
        N[n] = len;
        n++;
        p += 8 + len;
    }
    Py_END_ALLOW_THREADS
    ret = Py_BuildValue("LL", (long long)p, (long long)n);
out:
    PyBuffer_Release(&d), PyBuffer_Release(&st), PyBuffer_Release(&ei), PyBuffer_Release(&ts);
    PyBuffer_Release(&pi), PyBuffer_Release(&ln);
    return ret;
}

/* next_event(data, big, p, max_eid, dropped) -> the first byte q >= p where an event record fits, or len */
static PyObject *next_event(PyObject *self, PyObject *args) {
    Py_buffer d;
    int big;
    long long p;
    unsigned long long max_eid, dropped;
    if (!PyArg_ParseTuple(args, "y*pLKK", &d, &big, &p, &max_eid, &dropped))
        return NULL;
    int64_t L = d.len, q = p < 0 ? 0 : p;
    Py_BEGIN_ALLOW_THREADS
    while (q + 32 <= L && !is_event(d.buf, L, q, big, max_eid, dropped))
        q++;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&d);
    return PyLong_FromLongLong(q + 32 <= L ? q : L);
}

static const char HEX[] = "0123456789abcdef";

/* fill(data, big, starts i64, length i64, code i32, g_lo i64, g_text u8, a_string u8, a_col i64, a_bits i64,
 *      a_state u8, lab u8, lab_lo i64, cols i64[ncol*k], nulls u8[ncol*k], ncol, lo, hi,
 *      text u8, toff i64, tvalid u8, stext u8, soff i64, svalid u8, high u8)
 *   -> (text bytes, state bytes) written.
 *
 * Group g (an event id) has arguments a_*[g_lo[g]:g_lo[g+1]] in declaration order and writes text if g_text[g].
 * Integers go to typed column a_col (or nowhere: -1), sign-extended from a_bits (0/64: as is); a record shorter
 * than its declaration leaves the missing values null (0x0 or empty in the text). Offsets and flags are per row
 * of [lo, hi) (toff/soff: hi - lo + 1 entries); high: a string of the row has a byte >= 0x80. The caller sizes
 * text (labels + 18 per integer + string bytes) and stext (string bytes) for these rows. */
static PyObject *fill(PyObject *self, PyObject *args) {
    Py_buffer d, st, ln, cd, glo, gtx, ast, acol, abit, asta, lab, lablo, cols, nulls, tx, toff, tval, stx, soff,
        sval, high;
    int big;
    long long ncol, lo, hi;
    if (!PyArg_ParseTuple(args, "y*py*y*y*y*y*y*y*y*y*y*y*w*w*LLLw*w*w*w*w*w*w*", &d, &big, &st, &ln, &cd, &glo,
                          &gtx, &ast, &acol, &abit, &asta, &lab, &lablo, &cols, &nulls, &ncol, &lo, &hi, &tx,
                          &toff, &tval, &stx, &soff, &sval, &high))
        return NULL;
    PyObject *ret = NULL;
    Py_buffer *all[] = {&d, &st, &ln, &cd, &glo, &gtx, &ast, &acol, &abit, &asta, &lab, &lablo, &cols, &nulls,
                        &tx, &toff, &tval, &stx, &soff, &sval, &high};
    int64_t k = st.len / 8, ng = gtx.len, na = ast.len, nr = hi - lo;
    if (lo < 0 || hi < lo || hi > k || ncol < 0 || !need(&ln, k * 8, "length") || !need(&cd, k * 4, "code") ||
        !need(&glo, (ng + 1) * 8, "g_lo") || !need(&acol, na * 8, "a_col") || !need(&abit, na * 8, "a_bits") ||
        !need(&asta, na, "a_state") || !need(&lablo, (na + 1) * 8, "lab_lo") ||
        !need(&cols, ncol * k * 8, "cols") || !need(&nulls, ncol * k, "nulls") ||
        !need(&toff, (nr + 1) * 8, "toff") || !need(&tval, nr, "tvalid") || !need(&soff, (nr + 1) * 8, "soff") ||
        !need(&sval, nr, "svalid") || !need(&high, nr, "high"))
        goto out;
    const uint8_t *b = d.buf, *gtext = gtx.buf, *astr = ast.buf, *astate = asta.buf, *lb = lab.buf;
    const int64_t *S = st.buf, *N = ln.buf, *glo_ = glo.buf, *acol_ = acol.buf, *abits = abit.buf,
                  *lablo_ = lablo.buf;
    for (int64_t a = 0; a < na; a++)  /* label a is lab[lab_lo[a]:lab_lo[a + 1]] */
        if (lablo_[a] < 0 || lablo_[a + 1] < lablo_[a] || lablo_[a + 1] > lab.len) {
            PyErr_SetString(PyExc_ValueError, "_simplec.fill: labels out of range");
            goto out;
        }
    const int32_t *code = cd.buf;
    int64_t *C = cols.buf, *TO = toff.buf, *SO = soff.buf;
    uint8_t *NU = nulls.buf, *T = tx.buf, *TV = tval.buf, *ST = stx.buf, *SV = sval.buf, *HI = high.buf;
    int64_t L = d.len, tcap = tx.len, scap = stx.len, t = 0, s = 0;
    const char *err = NULL;
    int64_t i_err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < nr && !err; r++) {
        int64_t i = lo + r, p = S[i], n_i = N[i];
        int32_t g = code[i];
        if (g < 0 || g >= ng || p < 0 || p > L || n_i < 24 || n_i > L - p - 8 || glo_[g] < 0 || glo_[g + 1] > na) {
            err = "record or group out of range", i_err = i;
            break;
        }
        int64_t q = p + 32, end = p + 8 + n_i;
        int write = gtext[g], broken = 0;
        TO[r] = t, SO[r] = s, TV[r] = write, SV[r] = 0, HI[r] = 0;
        for (int64_t c = 0; c < ncol; c++)
            C[c * k + i] = 0, NU[c * k + i] = 1;
        for (int64_t a = glo_[g]; a < glo_[g + 1]; a++) {
            int64_t l0 = lablo_[a], l1 = lablo_[a + 1];
            if (write) {
                if (t + (l1 - l0) + 18 > tcap) {
                    err = "text buffer too small", i_err = i;
                    break;
                }
                memcpy(T + t, lb + l0, l1 - l0);
                t += l1 - l0;
            }
            if (!astr[a]) {
                uint64_t v = 0;
                int64_t c = acol_[a];
                if (!broken && q + 8 <= end) {
                    v = rd64(b, q, big);
                    q += 8;
                    if (c >= 0 && c < ncol) {
                        int64_t bits = abits[a], x = (int64_t)v;
                        if (bits > 0 && bits < 64) {
                            x = (int64_t)(v & ((1ULL << bits) - 1));
                            if (x >= (1LL << (bits - 1)))
                                x -= 1LL << bits;
                        }
                        C[c * k + i] = x, NU[c * k + i] = 0;
                    }
                } else
                    broken = 1;
                if (write) {
                    int nd = v ? (67 - __builtin_clzll(v)) >> 2 : 1;
                    T[t++] = '0', T[t++] = 'x';
                    for (int j = nd - 1; j >= 0; j--, v >>= 4)
                        T[t + j] = HEX[v & 15];
                    t += nd;
                }
                continue;
            }
            int64_t n = -1;
            if (!broken && q + 4 <= end) {
                n = rd32(b, q, big);
                if (q + 4 + n > end)
                    n = -1;
            }
            if (n < 0) {
                broken = 1;
                continue;
            }
            for (int64_t j = 0; j < n; j++)
                if (b[q + 4 + j] & 0x80) {
                    HI[r] = 1;
                    break;
                }
            if (write) {
                if (t + n > tcap) {
                    err = "text buffer too small", i_err = i;
                    break;
                }
                memcpy(T + t, b + q + 4, n);
                t += n;
            }
            if (astate[a]) {
                if (s + n > scap) {
                    err = "state buffer too small", i_err = i;
                    break;
                }
                memcpy(ST + s, b + q + 4, n);
                s += n, SV[r] = 1;
            }
            q += 4 + n;
        }
    }
    Py_END_ALLOW_THREADS
    if (err) {
        PyErr_Format(PyExc_ValueError, "_simplec.fill: %s at row %lld", err, (long long)i_err);
        goto out;
    }
    TO[nr] = t, SO[nr] = s;
    ret = Py_BuildValue("LL", (long long)t, (long long)s);
out:
    for (size_t j = 0; j < sizeof(all) / sizeof(all[0]); j++)
        PyBuffer_Release(all[j]);
    return ret;
}

static PyMethodDef methods[] = {
    {"events", events, METH_VARARGS, "Run of event records from a byte offset: (stop offset, rows)."},
    {"next_event", next_event, METH_VARARGS, "First byte at or after p where an event record fits."},
    {"fill", fill, METH_VARARGS, "Typed columns, args text and states of rows [lo, hi)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_simplec", .m_doc = "Per-record loops of the QEMU simple-backend reader.",
    .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__simplec(void) { return PyModule_Create(&module); }
