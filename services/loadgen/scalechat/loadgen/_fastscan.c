/* The load generator's receive hot path in C: frames -> receipts, no Python object per message.
 *
 *   tally = Tally(latencies, echoes, on_full)   one per stage: counters, the window; the buffers
 *                                               are the caller's writable int64 arrays
 *   scanner = Scanner(tally, highest, idx)  one per connection
 *   scanner.scan(data, pos=0) -> int        account plain frames from pos; return where it stopped
 *
 * scan() walks the server-to-client WebSocket frames of ``data`` from byte
 * ``pos`` and accounts every frame that is *plain*: a final unmasked text
 * frame (0x81) with a 7- or 16-bit length, wholly inside ``data``, whose
 * payload starts with {"type":"message" and whose "text" starts with the
 * measurement header "<sender> <msgno> <scheduled_ns> " (at most 9, 18 and 18
 * digits), sent by a sender whose next message it is (msgno ==
 * highest[sender] + 1). A sender index >= len(highest) is someone else's
 * message: counted as a frame, otherwise ignored (as the Python path does).
 *
 * For each plain frame, in order: highest[sender] = msgno; frames += 1; if
 * start_ns <= scheduled < end_ns: received += 1 and the latency now - scheduled
 * (integer ns; now read once per call from CLOCK_MONOTONIC, the clock of
 * time.monotonic_ns) is appended to the tally's latencies (and echoes when
 * sender == idx). A full buffer calls ``on_full()``, which must read the
 * buffers and take() (resetting them), and goes on; an exception there stops
 * the scan and propagates.
 *
 * It stops, returning the offset of the first frame it did not account, at
 * anything else: an incomplete frame, a control or fragmented frame, another
 * frame type, a header that does not parse, a gap or a repeat in msgnos. Once
 * now > deadline_ns it accounts nothing (late receipts are the Python path's).
 * The caller hands the rest to the general (Python) parser, which counts those
 * cases exactly: this module changes no outcome, only the cost
 * (tests/loadgen/test_fastscan.py feeds both paths the same wire bytes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"
#include <stdint.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const char MESSAGE_PREFIX[] = "{\"type\":\"message\"";
#define MESSAGE_PREFIX_LEN (sizeof(MESSAGE_PREFIX) - 1)
static const char TEXT_KEY[] = "\"text\":\"";

/* Digits then one space; at most ``max_digits`` digits. 0 when it does not parse. */
static inline int
parse_number(const unsigned char **cursor, const unsigned char *end, int max_digits, int64_t *out)
{
    const unsigned char *p = *cursor;
    int64_t value = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (++digits > max_digits)
            return 0;
        value = value * 10 + (*p - '0');
        p++;
    }
    if (digits == 0 || p >= end || *p != ' ')
        return 0;
    *cursor = p + 1;
    *out = value;
    return 1;
}

/* The first "text":" in [p, end) (a JSON string value cannot contain it unescaped, so the
 * first hit is the key). With SSE2, 16 positions at a time: only where a quote is followed by
 * a 't' is the 8-byte key compared. */
static inline const unsigned char *
find_text_key(const unsigned char *p, const unsigned char *end)
{
    uint64_t key, word;
    memcpy(&key, TEXT_KEY, 8);
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), t = _mm_set1_epi8('t');
    for (; end - p >= 24; p += 16) { /* a hit at p + 15 needs 8 bytes: p + 23 < end */
        const __m128i a = _mm_loadu_si128((const __m128i *)p);
        const __m128i b = _mm_loadu_si128((const __m128i *)(p + 1));
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(a, quote), _mm_cmpeq_epi8(b, t)));
        while (mask) {
            const int i = __builtin_ctz(mask);
            memcpy(&word, p + i, 8);
            if (word == key)
                return p + i + 8;
            mask &= mask - 1;
        }
    }
#endif
    for (; end - p >= 8; p++) {
        if (*p != '"')
            continue;
        memcpy(&word, p, 8);
        if (word == key)
            return p + 8;
    }
    return NULL;
}

/* ------------------------------------------------------------------ Tally */

typedef struct {
    PyObject_HEAD
    Py_buffer latencies_view, echoes_view;
    int has_views;
    int64_t *latencies, *echoes;
    Py_ssize_t capacity, n_latencies, n_echoes;
    long long frames, received;
    long long start_ns, end_ns, deadline_ns, fixed_now_ns;
    PyObject *on_full;
} Tally;

static int
get_int64_buffer(PyObject *obj, Py_buffer *view, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len % 8 != 0 || view->len == 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-empty writable int64 buffer", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void
Tally_release(Tally *self)
{
    if (self->has_views) {
        PyBuffer_Release(&self->latencies_view);
        PyBuffer_Release(&self->echoes_view);
        self->has_views = 0;
    }
}

static int
Tally_init(Tally *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"latencies", "echoes", "on_full", NULL};
    PyObject *latencies, *echoes, *on_full;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO", kwlist, &latencies, &echoes, &on_full))
        return -1;
    if (!PyCallable_Check(on_full)) {
        PyErr_SetString(PyExc_TypeError, "on_full must be callable");
        return -1;
    }
    Tally_release(self);
    if (get_int64_buffer(latencies, &self->latencies_view, "latencies") < 0)
        return -1;
    if (get_int64_buffer(echoes, &self->echoes_view, "echoes") < 0) {
        PyBuffer_Release(&self->latencies_view);
        return -1;
    }
    self->has_views = 1;
    self->latencies = self->latencies_view.buf;
    self->echoes = self->echoes_view.buf;
    self->capacity = Py_MIN(self->latencies_view.len, self->echoes_view.len) / 8;
    self->n_latencies = self->n_echoes = 0;
    self->frames = self->received = 0;
    self->start_ns = self->end_ns = self->deadline_ns = (long long)1 << 62;
    self->fixed_now_ns = 0;
    Py_INCREF(on_full);
    Py_XSETREF(self->on_full, on_full);
    return 0;
}

static int
Tally_traverse(Tally *self, visitproc visit, void *arg)
{
    Py_VISIT(self->on_full);
    if (self->has_views) {
        Py_VISIT(self->latencies_view.obj);
        Py_VISIT(self->echoes_view.obj);
    }
    return 0;
}

static int
Tally_clear(Tally *self)
{
    Py_CLEAR(self->on_full);
    Tally_release(self);
    return 0;
}

static void
Tally_dealloc(Tally *self)
{
    PyObject_GC_UnTrack(self);
    Tally_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Tally_take(Tally *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *result = Py_BuildValue("(nnLL)", self->n_latencies, self->n_echoes, self->frames, self->received);
    if (result != NULL) {
        self->n_latencies = self->n_echoes = 0;
        self->frames = self->received = 0;
    }
    return result;
}

static PyMethodDef Tally_methods[] = {
    {"take", (PyCFunction)Tally_take, METH_NOARGS,
     "take() -> (n_latencies, n_echoes, frames, received) since the last take(); resets them\n"
     "(the first n values of each buffer are the latencies in ns)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Tally_members[] = {
    {"start_ns", T_LONGLONG, offsetof(Tally, start_ns), 0, "measurement window start (scheduled time)"},
    {"end_ns", T_LONGLONG, offsetof(Tally, end_ns), 0, "measurement window end (exclusive)"},
    {"deadline_ns", T_LONGLONG, offsetof(Tally, deadline_ns), 0, "after it, scan() accounts nothing"},
    {"fixed_now_ns", T_LONGLONG, offsetof(Tally, fixed_now_ns), 0, "if not 0, the clock reading (tests)"},
    {"capacity", T_PYSSIZET, offsetof(Tally, capacity), READONLY, "values a buffer holds before on_full()"},
    {"n_latencies", T_PYSSIZET, offsetof(Tally, n_latencies), READONLY, "latencies buffered since take()"},
    {"n_echoes", T_PYSSIZET, offsetof(Tally, n_echoes), READONLY, "echo latencies buffered since take()"},
    {"frames", T_LONGLONG, offsetof(Tally, frames), READONLY, "frames accounted since take()"},
    {"received", T_LONGLONG, offsetof(Tally, received), READONLY, "receipts in the window since take()"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TallyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scalechat.loadgen._fastscan.Tally",
    .tp_doc = "Tally(latencies, echoes, on_full): one stage's receipts accounted in C, until take().",
    .tp_basicsize = sizeof(Tally),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tally_init,
    .tp_dealloc = (destructor)Tally_dealloc,
    .tp_traverse = (traverseproc)Tally_traverse,
    .tp_clear = (inquiry)Tally_clear,
    .tp_methods = Tally_methods,
    .tp_members = Tally_members,
};

/* ------------------------------------------------------------------ Scanner */

typedef struct {
    PyObject_HEAD
    Tally *tally;
    Py_buffer highest;
    int has_highest;
    long long idx;
} Scanner;

static int
Scanner_init(Scanner *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tally", "highest", "idx", NULL};
    PyObject *tally, *highest;
    long long idx;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OL", kwlist, &TallyType, &tally, &highest, &idx))
        return -1;
    if (self->has_highest) {
        PyBuffer_Release(&self->highest);
        self->has_highest = 0;
    }
    if (get_int64_buffer(highest, &self->highest, "highest") < 0)
        return -1;
    self->has_highest = 1;
    Py_INCREF(tally);
    Py_XSETREF(self->tally, (Tally *)tally);
    self->idx = idx;
    return 0;
}

static int
Scanner_traverse(Scanner *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tally);
    if (self->has_highest)
        Py_VISIT(self->highest.obj);
    return 0;
}

static int
Scanner_clear(Scanner *self)
{
    Py_CLEAR(self->tally);
    if (self->has_highest) {
        PyBuffer_Release(&self->highest);
        self->has_highest = 0;
    }
    return 0;
}

static void
Scanner_dealloc(Scanner *self)
{
    PyObject_GC_UnTrack(self);
    Scanner_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Scanner_scan(Scanner *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "scan(data, pos=0) takes 1 or 2 arguments, got %zd", nargs);
        return NULL;
    }
    Tally *tally = self->tally;
    if (tally == NULL || !self->has_highest) {
        PyErr_SetString(PyExc_ValueError, "Scanner not initialised");
        return NULL;
    }
    Py_ssize_t pos = 0;
    if (nargs == 2) {
        pos = PyLong_AsSsize_t(args[1]);
        if (pos == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (pos < 0 || pos > data.len) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "pos outside data");
        return NULL;
    }
    long long now = tally->fixed_now_ns;
    if (now == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    if (now > tally->deadline_ns) {
        PyBuffer_Release(&data);
        return PyLong_FromSsize_t(pos);
    }

    const unsigned char *buf = data.buf;
    const Py_ssize_t n = data.len;
    int64_t *highest = self->highest.buf;
    const int64_t clients = self->highest.len / 8;
    const long long idx = self->idx, start_ns = tally->start_ns, end_ns = tally->end_ns;
    int failed = 0;

    while (pos + 2 <= n) {
        const unsigned char *frame = buf + pos;
        if (frame[0] != 0x81)
            break;
        Py_ssize_t length = frame[1], start;
        if (length < 126) {
            start = pos + 2;
        } else if (length == 126) {
            if (pos + 4 > n)
                break;
            length = ((Py_ssize_t)frame[2] << 8) | frame[3];
            start = pos + 4;
        } else {
            break; /* 64-bit length or the MASK bit: the general parser decides */
        }
        const Py_ssize_t end = start + length;
        if (end > n)
            break;
        const unsigned char *payload = buf + start, *payload_end = buf + end;
        if (length < (Py_ssize_t)MESSAGE_PREFIX_LEN || memcmp(payload, MESSAGE_PREFIX, MESSAGE_PREFIX_LEN) != 0)
            break;
        const unsigned char *cursor = find_text_key(payload + MESSAGE_PREFIX_LEN, payload_end);
        int64_t sender, msgno, scheduled;
        if (cursor == NULL || !parse_number(&cursor, payload_end, 9, &sender) ||
            !parse_number(&cursor, payload_end, 18, &msgno) || !parse_number(&cursor, payload_end, 18, &scheduled))
            break;
        if (sender < clients) {
            if (msgno != highest[sender] + 1)
                break; /* a gap or a repeat: the general path remembers and classifies it */
            if (scheduled >= start_ns && scheduled < end_ns) {
                const int is_echo = sender == idx;
                if (tally->n_latencies >= tally->capacity || (is_echo && tally->n_echoes >= tally->capacity)) {
                    PyObject *r = PyObject_CallNoArgs(tally->on_full);
                    if (r == NULL) {
                        failed = 1;
                        break;
                    }
                    Py_DECREF(r);
                    if (tally->n_latencies >= tally->capacity || tally->n_echoes >= tally->capacity) {
                        PyErr_SetString(PyExc_RuntimeError, "on_full() must take() the buffers");
                        failed = 1;
                        break;
                    }
                }
                const int64_t latency = now - scheduled;
                tally->latencies[tally->n_latencies++] = latency;
                if (is_echo)
                    tally->echoes[tally->n_echoes++] = latency;
                tally->received++;
            }
            highest[sender] = msgno;
        }
        tally->frames++;
        pos = end;
    }
    PyBuffer_Release(&data);
    if (failed)
        return NULL;
    return PyLong_FromSsize_t(pos);
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))Scanner_scan, METH_FASTCALL,
     "scan(data, pos=0) -> int: account the plain message frames of data from pos; return where it stopped."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scalechat.loadgen._fastscan.Scanner",
    .tp_doc = "Scanner(tally, highest, idx): one connection's C receive path (see the module).",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_traverse = (traverseproc)Scanner_traverse,
    .tp_clear = (inquiry)Scanner_clear,
    .tp_methods = Scanner_methods,
};

/* ------------------------------------------------------------------ module */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastscan",
    .m_doc = "The load generator's receive hot path (see _fastscan.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__fastscan(void)
{
    if (PyType_Ready(&TallyType) < 0 || PyType_Ready(&ScannerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Tally", (PyObject *)&TallyType) < 0 ||
        PyModule_AddObjectRef(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
