/* A nanosecond one-shot timer an event loop can wait on: Linux timerfd on CLOCK_MONOTONIC.
 *
 *   timer = Timer()
 *   loop.add_reader(timer.fileno(), callback)
 *   timer.set(when_ns)     # absolute time.monotonic_ns(); a time already past fires at once
 *   timer.read() -> int    # in the callback: expirations since the last read (0 if none)
 *   timer.close()
 *
 * Why: uvloop rounds timer delays to whole milliseconds, and a delay under
 * half a millisecond becomes 0, so an open-loop sender with sends ~80 us apart
 * spins at 100% CPU (and burns a pod's CPU quota) to keep its timetable; an
 * epoll-driven timerfd sleeps until the exact time instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <sys/timerfd.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    int fd;
} Timer;

static int
Timer_init(Timer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    if (self->fd >= 0)
        close(self->fd);
    self->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (self->fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *
Timer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Timer *self = (Timer *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->fd = -1;
    return (PyObject *)self;
}

static void
Timer_dealloc(Timer *self)
{
    if (self->fd >= 0)
        close(self->fd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
check_open(Timer *self)
{
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "timer is closed");
        return -1;
    }
    return 0;
}

static PyObject *
Timer_set(Timer *self, PyObject *arg)
{
    long long when = PyLong_AsLongLong(arg);
    if (when == -1 && PyErr_Occurred())
        return NULL;
    if (when <= 0) {
        PyErr_SetString(PyExc_ValueError, "when_ns must be > 0 (0 would disarm the timer)");
        return NULL;
    }
    if (check_open(self) < 0)
        return NULL;
    struct itimerspec spec = {{0, 0}, {when / 1000000000LL, when % 1000000000LL}};
    if (timerfd_settime(self->fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *
Timer_read(Timer *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) < 0)
        return NULL;
    uint64_t expirations = 0;
    if (read(self->fd, &expirations, sizeof expirations) < 0) {
        if (errno == EAGAIN)
            return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLongLong(expirations);
}

static PyObject *
Timer_fileno(Timer *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromLong(self->fd);
}

static PyObject *
Timer_close(Timer *self, PyObject *Py_UNUSED(ignored))
{
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Timer_methods[] = {
    {"set", (PyCFunction)Timer_set, METH_O, "set(when_ns): arm for the absolute CLOCK_MONOTONIC time when_ns."},
    {"read", (PyCFunction)Timer_read, METH_NOARGS, "read() -> int: expirations since the last read, 0 if none."},
    {"fileno", (PyCFunction)Timer_fileno, METH_NOARGS, "fileno() -> int: readable when the timer fired."},
    {"close", (PyCFunction)Timer_close, METH_NOARGS, "close(): release the timerfd (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TimerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scalechat.loadgen._timer.Timer",
    .tp_doc = "Timer(): a one-shot nanosecond timerfd on CLOCK_MONOTONIC (see the module).",
    .tp_basicsize = sizeof(Timer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Timer_new,
    .tp_init = (initproc)Timer_init,
    .tp_dealloc = (destructor)Timer_dealloc,
    .tp_methods = Timer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_timer",
    .m_doc = "A nanosecond timerfd for event loops (see _timer.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__timer(void)
{
    if (PyType_Ready(&TimerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Timer", (PyObject *)&TimerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
