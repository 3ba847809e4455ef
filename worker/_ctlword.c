/*
 * worker._ctlword -- C11 atomics and shared futexes over a writable buffer.
 *
 * The private native layer under worker.block / worker.api. It is compiled
 * from ctlblock.h and exports that header's constants (the layout v1 offsets,
 * sizes, magic, codes and environment names) as module attributes named
 * without the PYVISOR_ prefix, so the layout is defined once, in C.
 *
 * A View holds a Py_buffer on some object (normally the mmap of a control
 * block) for its whole life and performs single atomic operations at byte
 * offsets inside it. Rules this file follows, and why:
 *
 *  - One atomic per call, never with the GIL released: releasing and taking
 *    the GIL costs far more than the atomic itself.
 *  - Loads are acquire, stores release (plus a seq_cst variant for the
 *    command word), read-modify-writes seq_cst. Only the operations the
 *    library uses exist: add one here when a caller needs it.
 *  - Alignment is checked on the ABSOLUTE address (buffer base + offset), and
 *    bounds on offset + width: a misaligned atomic may tear or split a lock.
 *  - Futexes are SHARED (no FUTEX_PRIVATE_FLAG): a private futex is keyed by
 *    (mm, address), so every wake from another process would be lost.
 *  - Blocking waits release the GIL and sleep in FINITE slices of at most
 *    WAIT_SLICE_NS. Python runs signal handlers only in the main thread when
 *    it re-enters the eval loop. A process-directed signal normally goes to
 *    the sleeping main thread and interrupts the futex wait (EINTR: handlers
 *    run at once), but a handler installed with SA_RESTART
 *    (signal.siginterrupt(sig, False)) or a signal delivered to another thread
 *    does not interrupt it, and an untimed wait would then delay Ctrl-C /
 *    SIGTERM handlers until the next wake. The slice bounds that corner-case
 *    delay. Its length is a trade: every slice wakes an idle worker, so the
 *    slice is as long as it can be while keeping that delay well under a
 *    second: 250 ms, 4 wake-ups/s. On EINTR and after every slice
 *    PyErr_CheckSignals() runs, so an exception raised by a handler
 *    (KeyboardInterrupt) ends the wait.
 *  - close() is refused (BufferError) while a wait is in flight: the waiter
 *    is sleeping on an address inside the buffer.
 *  - A read-only buffer may be loaded from, waited and woken on; any write
 *    raises TypeError("... read-only ..."), as memoryview does.
 *
 * Besides View there is Poller, a tiny base class for worker.api.Worker: its
 * `should_stop` getter is the hot path (one acquire load and one compare, no
 * Python frame), and it calls back into Python (self._on_command(word)) only
 * when the sequence number of the command word has changed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ctlblock.h"

#define WAIT_SLICE_NS 250000000LL /* 250 ms: see the header comment */
#define NS_PER_SEC 1000000000LL

typedef struct {
    PyObject_HEAD
    Py_buffer buf;      /* valid while buf.buf != NULL */
    int readonly;
    Py_ssize_t waiters; /* waits in flight (GIL released) */
    PyObject *weakreflist;
} ViewObject;

typedef struct {
    PyTypeObject *view_type;
    PyTypeObject *poller_type;
    PyTypeObject *metric_type;
} module_state;

static struct PyModuleDef ctlword_module;

static inline module_state *
get_state(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

/* ------------------------------------------------------------------ helpers */

static int
view_check_open(ViewObject *self)
{
    if (self->buf.buf == NULL) {
        PyErr_SetString(PyExc_ValueError, "operation on a closed ctlword View");
        return -1;
    }
    return 0;
}

/* Resolve `offset` for an access of `width` bytes; NULL with an exception set
 * on error. */
static void *
view_addr(ViewObject *self, PyObject *offset_obj, Py_ssize_t width, int write)
{
    if (view_check_open(self) < 0) {
        return NULL;
    }
    Py_ssize_t off = PyNumber_AsSsize_t(offset_obj, PyExc_IndexError);
    if (off == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (off < 0 || off > self->buf.len - width) {
        PyErr_Format(PyExc_IndexError,
                     "offset %zd out of range for a %zd-byte access in a "
                     "%zd-byte buffer",
                     off, width, self->buf.len);
        return NULL;
    }
    char *p = (char *)self->buf.buf + off;
    if (((uintptr_t)p) % (uintptr_t)width != 0) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd is misaligned for a %zd-byte atomic "
                     "(absolute address %p)",
                     off, width, (void *)p);
        return NULL;
    }
    if (write && self->readonly) {
        PyErr_SetString(PyExc_TypeError,
                        "cannot write: the ctlword View is over read-only "
                        "memory");
        return NULL;
    }
    return p;
}

static int
as_u32(PyObject *obj, uint32_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError,
                        "value out of range for an unsigned 32-bit word");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int
as_u64(PyObject *obj, uint64_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int
as_u8(PyObject *obj, uint8_t *out)
{
    uint32_t v;
    if (as_u32(obj, &v) < 0) {
        return -1;
    }
    if (v > UINT8_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value out of range for a byte");
        return -1;
    }
    *out = (uint8_t)v;
    return 0;
}

#define CHECK_NARGS(name, n)                                                  \
    if (nargs != (n)) {                                                       \
        PyErr_Format(PyExc_TypeError, name "() takes exactly %d arguments "   \
                     "(%zd given)", (n), nargs);                              \
        return NULL;                                                          \
    }

/* ------------------------------------------------------------- View: basics */

static PyObject *
view_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", NULL};
    PyObject *obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:View", kwlist, &obj)) {
        return NULL;
    }
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "View() needs an object with the buffer protocol "
                     "(an mmap, bytearray, ...), got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    ViewObject *self = (ViewObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(obj, &self->buf, PyBUF_WRITABLE) == 0) {
        self->readonly = 0;
    }
    else {
        PyErr_Clear();
        if (PyObject_GetBuffer(obj, &self->buf, PyBUF_SIMPLE) < 0) {
            self->buf.buf = NULL;
            Py_DECREF(self);
            return NULL;
        }
        self->readonly = 1;
    }
    if (self->buf.buf == NULL) { /* a zero-length buffer may have no base */
        PyBuffer_Release(&self->buf);
        self->buf.buf = NULL;
        Py_DECREF(self);
        PyErr_SetString(PyExc_BufferError, "View() over an empty buffer");
        return NULL;
    }
    return (PyObject *)self;
}

static void
view_dealloc(ViewObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->buf.buf != NULL) {
        PyBuffer_Release(&self->buf);
        self->buf.buf = NULL;
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
view_close(ViewObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->waiters > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot close a ctlword View while %zd wait(s) are in "
                     "flight on it", self->waiters);
        return NULL;
    }
    if (self->buf.buf != NULL) {
        PyBuffer_Release(&self->buf);
        self->buf.buf = NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
view_enter(ViewObject *self, PyObject *Py_UNUSED(ignored))
{
    if (view_check_open(self) < 0) {
        return NULL;
    }
    return Py_NewRef(self);
}

static PyObject *
view_exit(ViewObject *self, PyObject *Py_UNUSED(args))
{
    PyObject *r = view_close(self, NULL);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *
view_get_closed(ViewObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->buf.buf == NULL);
}

static PyObject *
view_get_readonly(ViewObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->readonly);
}

static PyObject *
view_get_nbytes(ViewObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->buf.buf == NULL ? 0 : self->buf.len);
}

static PyObject *
view_get_waiters(ViewObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->waiters);
}

/* ------------------------------------------------------------ View: atomics */

#define U32P(p) ((_Atomic uint32_t *)(p))
#define U64P(p) ((_Atomic uint64_t *)(p))
#define U8P(p) ((_Atomic uint8_t *)(p))

static PyObject *
view_load_u32(ViewObject *self, PyObject *off)
{
    void *p = view_addr(self, off, 4, 0);
    if (p == NULL) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(
        atomic_load_explicit(U32P(p), memory_order_acquire));
}

static PyObject *
view_load_u64(ViewObject *self, PyObject *off)
{
    void *p = view_addr(self, off, 8, 0);
    if (p == NULL) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(
        atomic_load_explicit(U64P(p), memory_order_acquire));
}

/* STORE(name, width, type, conv, order) */
#define DEF_STORE(NAME, W, T, CONV, ORDER, PTR)                               \
    static PyObject *view_##NAME(ViewObject *self, PyObject *const *args,     \
                                 Py_ssize_t nargs)                            \
    {                                                                         \
        CHECK_NARGS(#NAME, 2);                                                \
        void *p = view_addr(self, args[0], W, 1);                             \
        T v;                                                                  \
        if (p == NULL || CONV(args[1], &v) < 0) {                             \
            return NULL;                                                      \
        }                                                                     \
        atomic_store_explicit(PTR(p), v, ORDER);                              \
        Py_RETURN_NONE;                                                       \
    }

DEF_STORE(store_u32, 4, uint32_t, as_u32, memory_order_release, U32P)
DEF_STORE(store_u64, 8, uint64_t, as_u64, memory_order_release, U64P)
DEF_STORE(store_u32_seq_cst, 4, uint32_t, as_u32, memory_order_seq_cst, U32P)
DEF_STORE(store_u8, 1, uint8_t, as_u8, memory_order_release, U8P)

/* Read-modify-write returning the previous value (seq_cst). */
#define DEF_RMW(NAME, W, T, CONV, OP, PTR, FROM)                              \
    static PyObject *view_##NAME(ViewObject *self, PyObject *const *args,     \
                                 Py_ssize_t nargs)                            \
    {                                                                         \
        CHECK_NARGS(#NAME, 2);                                                \
        void *p = view_addr(self, args[0], W, 1);                             \
        T v;                                                                  \
        if (p == NULL || CONV(args[1], &v) < 0) {                             \
            return NULL;                                                      \
        }                                                                     \
        return FROM(OP(PTR(p), v));                                           \
    }

DEF_RMW(exchange_u32, 4, uint32_t, as_u32, atomic_exchange, U32P,
        PyLong_FromUnsignedLong)
DEF_RMW(fetch_add_u64, 8, uint64_t, as_u64, atomic_fetch_add, U64P,
        PyLong_FromUnsignedLongLong)

/* --------------------------------------------------------- View: futexes */

static long
futex(void *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static int64_t
mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

/* wait_u32(offset, expected, timeout=None) -> bool
 * True once the word differs from `expected` (checked before sleeping and
 * after every wake-up: spurious and no-change wake-ups keep waiting), False
 * when `timeout` seconds (None = forever) pass with the word unchanged. */
static PyObject *
view_wait_u32(ViewObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"offset", "expected", "timeout", NULL};
    PyObject *off, *exp_obj, *timeout_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:wait_u32", kwlist, &off,
                                     &exp_obj, &timeout_obj)) {
        return NULL;
    }
    void *p = view_addr(self, off, 4, 0);
    uint32_t expected;
    if (p == NULL || as_u32(exp_obj, &expected) < 0) {
        return NULL;
    }
    int64_t deadline = -1; /* -1 = none */
    if (timeout_obj != Py_None) {
        double t = PyFloat_AsDouble(timeout_obj);
        if (t == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (isnan(t) || t < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "timeout must be a non-negative number or None");
            return NULL;
        }
        if (t < 9.0e9) { /* ~285 years: anything longer is forever */
            deadline = mono_ns() + (int64_t)(t * 1e9);
        }
    }
    _Atomic uint32_t *word = U32P(p);
    if (atomic_load_explicit(word, memory_order_acquire) != expected) {
        Py_RETURN_TRUE;
    }
    self->waiters++;
    PyObject *result = NULL;
    for (;;) {
        int64_t slice = WAIT_SLICE_NS;
        if (deadline >= 0) {
            int64_t left = deadline - mono_ns();
            if (left <= 0) {
                result = Py_False;
                break;
            }
            if (left < slice) {
                slice = left;
            }
        }
        struct timespec ts = {.tv_sec = slice / NS_PER_SEC,
                              .tv_nsec = slice % NS_PER_SEC};
        long rc;
        int err;
        Py_BEGIN_ALLOW_THREADS
        rc = futex((void *)word, FUTEX_WAIT, expected, &ts);
        err = errno;
        Py_END_ALLOW_THREADS
        if (rc == -1 && err != EAGAIN && err != ETIMEDOUT && err != EINTR) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            break;
        }
        /* Run signal handlers after every slice, not only on EINTR: the
         * signal may have been delivered to another thread. */
        if (PyErr_CheckSignals() < 0) {
            break;
        }
        if (atomic_load_explicit(word, memory_order_acquire) != expected) {
            result = Py_True;
            break;
        }
    }
    self->waiters--;
    return result == NULL ? NULL : Py_NewRef(result);
}

/* wake(offset, n=INT_MAX) -> number of waiters woken */
static PyObject *
view_wake(ViewObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"offset", "n", NULL};
    PyObject *off;
    int n = INT_MAX;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|i:wake", kwlist, &off,
                                     &n)) {
        return NULL;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "wake(): n must be >= 0");
        return NULL;
    }
    void *p = view_addr(self, off, 4, 0);
    if (p == NULL) {
        return NULL;
    }
    long rc = futex(p, FUTEX_WAKE, (uint32_t)n, NULL);
    if (rc == -1) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(rc);
}

static PyObject *
view_nop(ViewObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored))
{
    Py_RETURN_NONE;
}

#define FAST(name, doc)                                                       \
    {#name, (PyCFunction)(void (*)(void))view_##name, METH_FASTCALL, doc}

static PyMethodDef view_methods[] = {
    {"load_u32", (PyCFunction)view_load_u32, METH_O,
     "load_u32(offset) -> int: acquire load of a u32."},
    {"load_u64", (PyCFunction)view_load_u64, METH_O,
     "load_u64(offset) -> int: acquire load of a u64."},
    FAST(store_u32, "store_u32(offset, value): release store."),
    FAST(store_u64, "store_u64(offset, value): release store."),
    FAST(store_u32_seq_cst, "store_u32_seq_cst(offset, value): seq_cst store."),
    FAST(store_u8, "store_u8(offset, value): release store of a byte."),
    FAST(exchange_u32, "exchange_u32(offset, value) -> old value."),
    FAST(fetch_add_u64, "fetch_add_u64(offset, value) -> old (wraps mod 2**64)."),
    {"wait_u32", (PyCFunction)(void (*)(void))view_wait_u32,
     METH_VARARGS | METH_KEYWORDS,
     "wait_u32(offset, expected, timeout=None) -> bool: sleep on a shared "
     "futex until the word differs from expected (True) or the timeout "
     "passes (False). Releases the GIL; runs signal handlers."},
    {"wake", (PyCFunction)(void (*)(void))view_wake,
     METH_VARARGS | METH_KEYWORDS,
     "wake(offset, n=INT_MAX) -> int: wake up to n waiters (shared futex)."},
    {"close", (PyCFunction)view_close, METH_NOARGS,
     "Release the buffer. BufferError while a wait is in flight."},
    {"nop", (PyCFunction)view_nop, METH_NOARGS,
     "Do nothing (a bare C method call, for benchmarks)."},
    {"__enter__", (PyCFunction)view_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)view_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef view_getset[] = {
    {"closed", (getter)view_get_closed, NULL, "True once closed.", NULL},
    {"readonly", (getter)view_get_readonly, NULL,
     "True if the buffer is read-only.", NULL},
    {"nbytes", (getter)view_get_nbytes, NULL, "Buffer length (0 if closed).",
     NULL},
    {"waiters", (getter)view_get_waiters, NULL, "Waits in flight.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef view_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ViewObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot view_slots[] = {
    {Py_tp_new, view_new},
    {Py_tp_dealloc, view_dealloc},
    {Py_tp_methods, view_methods},
    {Py_tp_getset, view_getset},
    {Py_tp_members, view_members},
    {Py_tp_doc, "View(buffer): atomic operations and shared futexes at byte "
                "offsets of a buffer (held until close())."},
    {0, NULL},
};

static PyType_Spec view_spec = {
    .name = "worker._ctlword.View",
    .basicsize = sizeof(ViewObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = view_slots,
};

/* ------------------------------------------------------------------ Poller */

/* ------------------------------------------------------------------ Metric */

/* One named counter or gauge in a status page: a u64 at a fixed offset of a View (a gauge's
 * value is an i64 in two's complement). inc/dec/set are one relaxed atomic each and check
 * only that the View is still open: the slot (name, kind byte) was claimed by the Python
 * side (worker.api), which also made the offset's alignment and bounds checks. */
typedef struct {
    PyObject_HEAD
    ViewObject *view;       /* strong ref: keeps the buffer's owner alive */
    _Atomic uint64_t *value;
    int kind;               /* PYVISOR_METRIC_COUNTER or PYVISOR_METRIC_GAUGE */
    PyObject *name;
} MetricObject;

static int
metric_traverse(MetricObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->view);
    Py_VISIT(self->name);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
metric_clear(MetricObject *self)
{
    Py_CLEAR(self->view);
    Py_CLEAR(self->name);
    return 0;
}

static void
metric_dealloc(MetricObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    metric_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Metric(view, offset, kind, name): the u64 at offset of view (writable, 8-aligned). */
static PyObject *
metric_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"view", "offset", "kind", "name", NULL};
    PyObject *view, *off, *name;
    int kind;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOiU:Metric", kwlist, &view, &off,
                                     &kind, &name)) {
        return NULL;
    }
    PyObject *mod = PyType_GetModuleByDef(type, &ctlword_module);
    if (mod == NULL) {
        return NULL;
    }
    if (!PyObject_TypeCheck(view, get_state(mod)->view_type)) {
        PyErr_SetString(PyExc_TypeError, "Metric() needs a View");
        return NULL;
    }
    if (kind != PYVISOR_METRIC_COUNTER && kind != PYVISOR_METRIC_GAUGE) {
        PyErr_Format(PyExc_ValueError, "Metric kind must be METRIC_COUNTER or "
                     "METRIC_GAUGE, got %d", kind);
        return NULL;
    }
    void *p = view_addr((ViewObject *)view, off, 8, 1);
    if (p == NULL) {
        return NULL;
    }
    MetricObject *self = (MetricObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->view = (ViewObject *)Py_NewRef(view);
    self->value = U64P(p);
    self->kind = kind;
    self->name = Py_NewRef(name);
    return (PyObject *)self;
}

static int
metric_check_open(MetricObject *self)
{
    if (self->view->buf.buf == NULL) {
        PyErr_Format(PyExc_ValueError, "metric %R: the worker's control block is closed",
                     self->name);
        return -1;
    }
    return 0;
}

/* The optional step of inc/dec: 1 when absent; a counter takes 0..2**64-1, a gauge an i64. */
static int
metric_step(MetricObject *self, PyObject *const *args, Py_ssize_t nargs, const char *fn,
            uint64_t *out)
{
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument (%zd given)", fn, nargs);
        return -1;
    }
    if (nargs == 0) {
        *out = 1;
        return 0;
    }
    if (!PyLong_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s() needs an int, got %.100s", fn,
                     Py_TYPE(args[0])->tp_name);
        return -1;
    }
    if (self->kind == PYVISOR_METRIC_COUNTER) {
        unsigned long long v = PyLong_AsUnsignedLongLong(args[0]);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Format(PyExc_ValueError, "counter %R: inc() takes 0..2**64-1 (a counter "
                             "never goes down: use a gauge)", self->name);
            }
            return -1;
        }
        *out = (uint64_t)v;
        return 0;
    }
    long long v = PyLong_AsLongLong(args[0]);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static PyObject *
metric_inc(MetricObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t n;
    if (metric_check_open(self) < 0 || metric_step(self, args, nargs, "inc", &n) < 0) {
        return NULL;
    }
    atomic_fetch_add_explicit(self->value, n, memory_order_relaxed);
    Py_RETURN_NONE;
}

static PyObject *
metric_dec(MetricObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t n;
    if (self->kind != PYVISOR_METRIC_GAUGE) {
        PyErr_Format(PyExc_TypeError, "counter %R has no dec(): a counter never goes down "
                     "(use a gauge)", self->name);
        return NULL;
    }
    if (metric_check_open(self) < 0 || metric_step(self, args, nargs, "dec", &n) < 0) {
        return NULL;
    }
    atomic_fetch_sub_explicit(self->value, n, memory_order_relaxed);
    Py_RETURN_NONE;
}

static PyObject *
metric_set(MetricObject *self, PyObject *arg)
{
    if (self->kind != PYVISOR_METRIC_GAUGE) {
        PyErr_Format(PyExc_TypeError, "counter %R has no set(): a counter only goes up "
                     "(use a gauge)", self->name);
        return NULL;
    }
    if (metric_check_open(self) < 0) {
        return NULL;
    }
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "set() needs an int, got %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    long long v = PyLong_AsLongLong(arg);
    if (v == -1 && PyErr_Occurred()) {
        return NULL;
    }
    atomic_store_explicit(self->value, (uint64_t)v, memory_order_relaxed);
    Py_RETURN_NONE;
}

static PyObject *
metric_get_value(MetricObject *self, void *Py_UNUSED(c))
{
    if (metric_check_open(self) < 0) {
        return NULL;
    }
    uint64_t v = atomic_load_explicit(self->value, memory_order_relaxed);
    if (self->kind == PYVISOR_METRIC_GAUGE) {
        return PyLong_FromLongLong((long long)(int64_t)v);
    }
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *
metric_get_name(MetricObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->name);
}

static PyObject *
metric_get_kind(MetricObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->kind);
}

static PyObject *
metric_repr(MetricObject *self)
{
    const char *k = self->kind == PYVISOR_METRIC_GAUGE ? "gauge" : "counter";
    if (self->view->buf.buf == NULL) {
        return PyUnicode_FromFormat("<%s %R closed>", k, self->name);
    }
    uint64_t v = atomic_load_explicit(self->value, memory_order_relaxed);
    if (self->kind == PYVISOR_METRIC_GAUGE) {
        return PyUnicode_FromFormat("<gauge %R = %lld>", self->name, (long long)(int64_t)v);
    }
    return PyUnicode_FromFormat("<counter %R = %llu>", self->name, (unsigned long long)v);
}

static PyMethodDef metric_methods[] = {
    {"inc", (PyCFunction)(void (*)(void))metric_inc, METH_FASTCALL,
     "inc(n=1): add n (one atomic add)."},
    {"dec", (PyCFunction)(void (*)(void))metric_dec, METH_FASTCALL,
     "dec(n=1): subtract n (gauges only)."},
    {"set", (PyCFunction)metric_set, METH_O, "set(value): store value (gauges only)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef metric_getset[] = {
    {"value", (getter)metric_get_value, NULL, "The current value.", NULL},
    {"name", (getter)metric_get_name, NULL, "The metric's name.", NULL},
    {"kind", (getter)metric_get_kind, NULL, "METRIC_COUNTER or METRIC_GAUGE.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot metric_slots[] = {
    {Py_tp_new, metric_new},
    {Py_tp_dealloc, metric_dealloc},
    {Py_tp_traverse, metric_traverse},
    {Py_tp_clear, metric_clear},
    {Py_tp_methods, metric_methods},
    {Py_tp_getset, metric_getset},
    {Py_tp_repr, metric_repr},
    {Py_tp_doc, "Metric(view, offset, kind, name): a named counter or gauge in a status "
                "page (use Worker.counter() / Worker.gauge())."},
    {0, NULL},
};

static PyType_Spec metric_spec = {
    .name = "worker._ctlword.Metric",
    .basicsize = sizeof(MetricObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = metric_slots,
};

/* ------------------------------------------------------------------ Poller */

typedef struct {
    PyObject_HEAD
    ViewObject *view;       /* strong ref, NULL when unbound */
    _Atomic uint32_t *word; /* inside view->buf */
    uint32_t seq;           /* last seq handled (24 bits) */
    int stop;               /* latched "a stop was requested" */
    PyObject *metrics;      /* dict name -> Metric, made on first use */
} PollerObject;

static int
poller_traverse(PollerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->view);
    Py_VISIT(self->metrics);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
poller_unbind_view(PollerObject *self)
{
    self->word = NULL;
    Py_CLEAR(self->view);
    return 0;
}

static int
poller_clear(PollerObject *self)
{
    poller_unbind_view(self);
    Py_CLEAR(self->metrics);
    return 0;
}

static void
poller_dealloc(PollerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    poller_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* counter(name) / gauge(name): the hot path is one dict lookup of the Metric made the first
 * time; a miss (or the other kind under that name) calls self._new_metric(name, kind), which
 * claims a slot, refuses a bad name, and stores the Metric with _poll_add_metric. */
static PyObject *
poller_metric(PollerObject *self, PyObject *name, int kind)
{
    if (self->metrics != NULL) {
        PyObject *m = PyDict_GetItemWithError(self->metrics, name);
        if (m != NULL && ((MetricObject *)m)->kind == kind) {
            return Py_NewRef(m);
        }
        if (m == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_CallMethod((PyObject *)self, "_new_metric", "Oi", name, kind);
}

static PyObject *
poller_counter(PollerObject *self, PyObject *name)
{
    return poller_metric(self, name, PYVISOR_METRIC_COUNTER);
}

static PyObject *
poller_gauge(PollerObject *self, PyObject *name)
{
    return poller_metric(self, name, PYVISOR_METRIC_GAUGE);
}

/* _poll_add_metric(metric): what counter()/gauge() return for metric.name from now on. Only
 * a Metric goes in (the hot path reads the dict's values as MetricObject). */
static PyObject *
poller_add_metric(PollerObject *self, PyObject *metric)
{
    PyObject *mod = PyType_GetModuleByDef(Py_TYPE(self), &ctlword_module);
    if (mod == NULL) {
        return NULL;
    }
    if (!PyObject_TypeCheck(metric, get_state(mod)->metric_type)) {
        PyErr_SetString(PyExc_TypeError, "_poll_add_metric() needs a Metric");
        return NULL;
    }
    if (self->metrics == NULL && (self->metrics = PyDict_New()) == NULL) {
        return NULL;
    }
    if (PyDict_SetItem(self->metrics, ((MetricObject *)metric)->name, metric) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
poller_get_metrics(PollerObject *self, void *Py_UNUSED(c))
{
    if (self->metrics == NULL && (self->metrics = PyDict_New()) == NULL) {
        return NULL;
    }
    return PyDictProxy_New(self->metrics);
}

/* _poll_bind(view, offset, seq): watch the u32 at offset; seq = last handled */
static PyObject *
poller_bind(PollerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CHECK_NARGS("_poll_bind", 3);
    PyObject *mod = PyType_GetModuleByDef(Py_TYPE(self), &ctlword_module);
    if (mod == NULL) {
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], get_state(mod)->view_type)) {
        PyErr_SetString(PyExc_TypeError, "_poll_bind() needs a View");
        return NULL;
    }
    ViewObject *view = (ViewObject *)args[0];
    void *p = view_addr(view, args[1], 4, 0);
    uint32_t seq;
    if (p == NULL || as_u32(args[2], &seq) < 0) {
        return NULL;
    }
    Py_INCREF(view);
    Py_XSETREF(self->view, view);
    self->word = U32P(p);
    self->seq = seq & 0xFFFFFF;
    Py_RETURN_NONE;
}

static PyObject *
poller_unbind(PollerObject *self, PyObject *Py_UNUSED(ignored))
{
    poller_unbind_view(self);
    Py_RETURN_NONE;
}

static PyObject *
poller_get_should_stop(PollerObject *self, void *Py_UNUSED(c))
{
    if (self->word == NULL || self->view->buf.buf == NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "should_stop: the worker's control block is closed");
        return NULL;
    }
    uint32_t w = atomic_load_explicit(self->word, memory_order_acquire);
    if ((w >> 8) == self->seq) {
        return Py_NewRef(self->stop ? Py_True : Py_False);
    }
    /* A new command: the slow path is Python's. */
    PyObject *wo = PyLong_FromUnsignedLong(w);
    if (wo == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_on_command", "O", wo);
    Py_DECREF(wo);
    if (r == NULL) {
        return NULL;
    }
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (t < 0) {
        return NULL;
    }
    return Py_NewRef(t ? Py_True : Py_False);
}

static PyObject *
poller_get_seq(PollerObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong(self->seq);
}

static int
poller_set_seq(PollerObject *self, PyObject *v, void *Py_UNUSED(c))
{
    uint32_t s;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _poll_seq");
        return -1;
    }
    if (as_u32(v, &s) < 0) {
        return -1;
    }
    self->seq = s & 0xFFFFFF;
    return 0;
}

static PyObject *
poller_get_stop(PollerObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->stop);
}

static int
poller_set_stop(PollerObject *self, PyObject *v, void *Py_UNUSED(c))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _poll_stop");
        return -1;
    }
    int t = PyObject_IsTrue(v);
    if (t < 0) {
        return -1;
    }
    self->stop = t;
    return 0;
}

static PyMethodDef poller_methods[] = {
    {"_poll_bind", (PyCFunction)(void (*)(void))poller_bind, METH_FASTCALL,
     "_poll_bind(view, offset, seq): watch the command word at offset."},
    {"_poll_unbind", (PyCFunction)poller_unbind, METH_NOARGS,
     "Drop the view (should_stop then raises ValueError)."},
    {"_poll_add_metric", (PyCFunction)poller_add_metric, METH_O,
     "_poll_add_metric(metric): what counter()/gauge() return for its name."},
    {"counter", (PyCFunction)poller_counter, METH_O,
     "counter(name) -> Metric: the named counter (made on first use)."},
    {"gauge", (PyCFunction)poller_gauge, METH_O,
     "gauge(name) -> Metric: the named gauge (made on first use)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef poller_getset[] = {
    {"should_stop", (getter)poller_get_should_stop, NULL,
     "True once a stop was requested. One acquire load of the command word; "
     "calls self._on_command(word) when its seq changed.", NULL},
    {"_poll_seq", (getter)poller_get_seq, (setter)poller_set_seq,
     "Sequence number of the last command handled.", NULL},
    {"_poll_stop", (getter)poller_get_stop, (setter)poller_set_stop,
     "Latched stop flag.", NULL},
    {"_poll_metrics", (getter)poller_get_metrics, NULL,
     "name -> Metric that counter() and gauge() look up (read-only).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot poller_slots[] = {
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, poller_dealloc},
    {Py_tp_traverse, poller_traverse},
    {Py_tp_clear, poller_clear},
    {Py_tp_methods, poller_methods},
    {Py_tp_getset, poller_getset},
    {Py_tp_doc, "Base class with a native should_stop poll (for Worker)."},
    {0, NULL},
};

static PyType_Spec poller_spec = {
    .name = "worker._ctlword.Poller",
    .basicsize = sizeof(PollerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = poller_slots,
};

/* ---------------------------------------------------- ctlblock.h constants */

/* Every constant of ctlblock.h, named without its PYVISOR_ prefix. */
#define INT_CONST(name) {#name, (unsigned long long)PYVISOR_##name}
static const struct {
    const char *name;
    unsigned long long value;
} int_constants[] = {
    INT_CONST(MAGIC), INT_CONST(VERSION), INT_CONST(HEADER_SIZE),
    INT_CONST(BLOCK_SIZE), INT_CONST(STATUS_SIZE),
    /* ctl page, line 0: daemon, immutable after init */
    INT_CONST(OFF_MAGIC), INT_CONST(OFF_VERSION), INT_CONST(OFF_HEADER_SIZE),
    INT_CONST(OFF_BLOCK_SIZE), INT_CONST(OFF_SLOT), INT_CONST(OFF_BOOT_ID),
    /* ctl page, line 1: commands */
    INT_CONST(OFF_CMD), INT_CONST(OFF_REQUEST_BITS), INT_CONST(OFF_DEADLINE),
    INT_CONST(OFF_SUPERVISOR_PID), INT_CONST(OFF_EPOCH), INT_CONST(OFF_INCARNATION),
    /* ctl page, line 2: identity recorded at spawn; the status page's name */
    INT_CONST(OFF_SPAWNED_PID), INT_CONST(OFF_SPAWNED_UID),
    INT_CONST(OFF_SPAWNED_START), INT_CONST(OFF_SPAWNED_PGID),
    INT_CONST(OFF_CONFIG_HASH), INT_CONST(OFF_STATUS_NAME),
    INT_CONST(STATUS_NAME_SIZE),
    /* status page */
    INT_CONST(SOFF_ACK), INT_CONST(SOFF_PID), INT_CONST(SOFF_START_TICKS),
    INT_CONST(SOFF_HEARTBEAT), INT_CONST(SOFF_WORK_DONE), INT_CONST(SOFF_BUSY_SINCE),
    INT_CONST(SOFF_EXIT_SEQ), INT_CONST(SOFF_EXIT_STATUS),
    INT_CONST(SOFF_EXIT_TIME), INT_CONST(SOFF_EXIT_SOURCE),
    INT_CONST(SOFF_TEXT_SEQ), INT_CONST(SOFF_TEXT_LEN), INT_CONST(SOFF_TEXT),
    INT_CONST(TEXT_SIZE), INT_CONST(SOFF_METRICS), INT_CONST(METRIC_COUNT),
    INT_CONST(METRIC_SIZE), INT_CONST(METRIC_NAME_SIZE), INT_CONST(SOFF_APP),
    INT_CONST(SOFF_METRIC_KINDS), INT_CONST(METRIC_FREE), INT_CONST(METRIC_COUNTER),
    INT_CONST(METRIC_GAUGE),
    INT_CONST(CMD_NONE), INT_CONST(CMD_STOP_GRACEFUL),
    INT_CONST(ST_INIT), INT_CONST(ST_STARTING), INT_CONST(ST_READY),
    INT_CONST(ST_BUSY), INT_CONST(ST_STOPPING), INT_CONST(ST_EXITED),
    INT_CONST(EXIT_SRC_NONE), INT_CONST(EXIT_SRC_WORKER),
};
#define STR_CONST(name) {#name, PYVISOR_##name}
static const struct {
    const char *name;
    const char *value;
} str_constants[] = {
    STR_CONST(ENV_BLOCK), STR_CONST(ENV_INSTANCE), STR_CONST(ENV_NOTIFY),
};

static int
add_constants(PyObject *m)
{
    for (size_t i = 0; i < sizeof int_constants / sizeof int_constants[0]; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(int_constants[i].value);
        int rc = PyModule_AddObjectRef(m, int_constants[i].name, v);
        Py_XDECREF(v);
        if (rc < 0) {
            return -1;
        }
    }
    for (size_t i = 0; i < sizeof str_constants / sizeof str_constants[0]; i++) {
        PyObject *v = PyUnicode_FromString(str_constants[i].value);
        int rc = PyModule_AddObjectRef(m, str_constants[i].name, v);
        Py_XDECREF(v);
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ module */

static int
ctlword_exec(PyObject *m)
{
    module_state *st = get_state(m);
    st->view_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &view_spec,
                                                             NULL);
    if (st->view_type == NULL || PyModule_AddType(m, st->view_type) < 0) {
        return -1;
    }
    st->poller_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        m, &poller_spec, NULL);
    if (st->poller_type == NULL || PyModule_AddType(m, st->poller_type) < 0) {
        return -1;
    }
    st->metric_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        m, &metric_spec, NULL);
    if (st->metric_type == NULL || PyModule_AddType(m, st->metric_type) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(m, "WAIT_SLICE_NS", WAIT_SLICE_NS) < 0) {
        return -1;
    }
    return add_constants(m);
}

static int
ctlword_traverse(PyObject *m, visitproc visit, void *arg)
{
    module_state *st = get_state(m);
    Py_VISIT(st->view_type);
    Py_VISIT(st->poller_type);
    Py_VISIT(st->metric_type);
    return 0;
}

static int
ctlword_clear(PyObject *m)
{
    module_state *st = get_state(m);
    Py_CLEAR(st->view_type);
    Py_CLEAR(st->poller_type);
    Py_CLEAR(st->metric_type);
    return 0;
}

static void
ctlword_free(void *m)
{
    ctlword_clear((PyObject *)m);
}

static PyModuleDef_Slot ctlword_slots[] = {
    {Py_mod_exec, ctlword_exec},
    {0, NULL},
};

static struct PyModuleDef ctlword_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "worker._ctlword",
    .m_doc = "C11 atomics and shared futexes over a buffer (private; see "
             "worker.ctlword).",
    .m_size = sizeof(module_state),
    .m_slots = ctlword_slots,
    .m_traverse = ctlword_traverse,
    .m_clear = ctlword_clear,
    .m_free = ctlword_free,
};

PyMODINIT_FUNC
PyInit__ctlword(void)
{
    return PyModuleDef_Init(&ctlword_module);
}
