/*
 * slimdump.sources._mapcopy: copy out of a file mapped into memory, and
 * live through SIGBUS.
 *
 * A read through a mapping has no error return: where the page behind an
 * address cannot be had (the file was cut short after it was mapped, an
 * I/O error under a mapped file, a hole the filesystem cannot fill) the
 * kernel sends the reading thread SIGBUS, whose default action kills the
 * process.  copy() turns that into a short count, so that the caller can
 * treat it as the read error it is (and lose one page, not the dump).
 *
 *   copy(src, src_offset, dst) -> int
 *
 * copies len(dst) bytes from src (a buffer: a mmap.mmap object) at
 * src_offset into dst (a writable buffer), a page at a time, without the
 * GIL, and returns the bytes copied: len(dst), or fewer when a SIGBUS hit
 * the page at src_offset + returned value.
 *
 * How: while a copy runs, the thread's guard points at a sigjmp_buf on its
 * stack; the SIGBUS handler jumps back there (per thread: each worker
 * thread has its own guard).  A SIGBUS outside a copy is not ours: it goes
 * to the handler that was there before (faulthandler under pytest), or,
 * with the default action, the handler steps aside and the fault, repeated
 * when the handler returns, kills the process as it would have.  The
 * handler is installed by the first copy and checked by every copy (one
 * sigaction() call), since a later faulthandler.enable() replaces it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <signal.h>
#include <string.h>

#define CHUNK 4096

static __thread sigjmp_buf *volatile guard __attribute__((tls_model("initial-exec")));
static struct sigaction previous;

static void
on_sigbus(int sig, siginfo_t *info, void *context)
{
    sigjmp_buf *jump = guard;
    if (jump != NULL) {
        guard = NULL;
        siglongjmp(*jump, 1);
    }
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction != NULL) {
            previous.sa_sigaction(sig, info, context);
            return;
        }
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    /* the default action: step aside; the faulting access runs again */
    sigaction(SIGBUS, &previous, NULL);
}

/* Make on_sigbus the SIGBUS handler, remembering the one before it; 0 or -1
 * (errno set).  Called with the GIL held, so never twice at once. */
static int
install(void)
{
    struct sigaction now, ours;
    if (sigaction(SIGBUS, NULL, &now) != 0)
        return -1;
    if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_sigbus)
        return 0;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_sigbus;
    /* SA_NODEFER: SIGBUS stays unblocked in the handler, so the jump out of
     * it needs no saved signal mask (sigsetjmp(..., 0): no system call) */
    ours.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    if (sigaction(SIGBUS, &ours, &now) != 0)
        return -1;
    previous = now;
    return 0;
}

static Py_ssize_t
guarded_copy(unsigned char *dst, const unsigned char *src, Py_ssize_t size)
{
    sigjmp_buf jump;
    volatile Py_ssize_t done = 0;
    if (sigsetjmp(jump, 0) == 0) {
        guard = &jump;
        while (done < size) {
            Py_ssize_t n = size - done < CHUNK ? size - done : CHUNK;
            memcpy(dst + done, src + done, (size_t)n);
            done += n;
        }
    }
    guard = NULL;
    return done;
}

static PyObject *
copy(PyObject *self, PyObject *args)
{
    Py_buffer src, dst;
    Py_ssize_t offset, done;
    if (!PyArg_ParseTuple(args, "y*nw*:copy", &src, &offset, &dst))
        return NULL;
    PyObject *result = NULL;
    if (offset < 0 || offset > src.len || dst.len > src.len - offset) {
        PyErr_SetString(PyExc_ValueError, "copy: the range lies outside the source buffer");
        goto done;
    }
    if (install() != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    done = guarded_copy(dst.buf, (const unsigned char *)src.buf + offset, dst.len);
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(done);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"copy", copy, METH_VARARGS,
     "copy(src, src_offset, dst) -> bytes copied: fewer than len(dst) where SIGBUS hit"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mapcopy",
    "Copies out of a mapped file that survive SIGBUS (see the C source).", -1, methods,
};

PyMODINIT_FUNC
PyInit__mapcopy(void)
{
    return PyModule_Create(&module);
}
