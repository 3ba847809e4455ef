/*
 * supervisor._readfiles -- read many small kernel files (/proc, cgroupfs) in one call.
 *
 * status reads two small files per instance (its cgroup's cgroup.procs, its process's
 * /proc/PID/stat): from Python each is an open, a read and a close with their objects, paths
 * and exceptions, several times the cost of the system calls themselves at 10,000 instances.
 *
 * read_files(dirfd, names, limit) -> list: for each relative name, the bytes of ONE read(2) of
 * at most ``limit`` bytes (proc and cgroup files are seq_files: one read gives as much as fits,
 * so a result of exactly ``limit`` bytes means "maybe more": the caller treats it as
 * truncated), or the errno (an int) when it cannot be opened or read.
 *
 * Rules, because the files belong to workers (a worker's cgroup, a worker's /proc entry):
 *  - a name is relative to dirfd and stays beneath it: absolute names and ".." components are
 *    refused (EINVAL) before any system call; no symlink is followed on the way (openat2 with
 *    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS where the kernel has it,
 *    else openat with O_NOFOLLOW, which covers the last component);
 *  - the open never blocks (O_NONBLOCK: a FIFO answers EAGAIN) and never makes a controlling
 *    terminal (O_NOCTTY); fds are O_CLOEXEC and closed before the next name;
 *  - at most ``limit`` bytes per file (1 .. 1 MiB) and MAX_NAMES names per call;
 *  - the GIL is released around each file's system calls.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_LIMIT (1 << 20)
#define MAX_NAMES 1000000
#define MAX_NAME 4096

#ifndef SYS_openat2
#  define SYS_openat2 437     /* the same number on every architecture */
#endif
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_NO_SYMLINKS_ 0x04
#define RESOLVE_BENEATH_ 0x08

struct open_how_ {
    uint64_t flags, mode, resolve;
};

static int have_openat2 = -1;   /* unknown until the first open */

/* 0 if name is relative and has no ".." component */
static int beneath(const char *name, Py_ssize_t len) {
    if (len == 0 || name[0] == '/')
        return -1;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (name[i] == '\0')
            return -1;
        if ((i == 0 || name[i - 1] == '/') && name[i] == '.' && i + 1 < len
            && name[i + 1] == '.' && (i + 2 == len || name[i + 2] == '/'))
            return -1;
    }
    return 0;
}

static int open_beneath(int dirfd, const char *name) {
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW;
    if (have_openat2 != 0) {
        struct open_how_ how = {(uint64_t)flags, 0,
                                RESOLVE_BENEATH_ | RESOLVE_NO_SYMLINKS_ | RESOLVE_NO_MAGICLINKS_};
        int fd = (int)syscall(SYS_openat2, dirfd, name, &how, sizeof how);
        if (fd >= 0) {
            have_openat2 = 1;
            return fd;
        }
        if (!(errno == ENOSYS || (have_openat2 < 0 && errno == EPERM)))
            return -1;
        have_openat2 = 0;   /* an older kernel, or a seccomp profile without it */
    }
    return openat(dirfd, name, flags);
}

/* one file: its length in buf, or -errno */
static Py_ssize_t read_one(int dirfd, const char *name, char *buf, Py_ssize_t limit) {
    Py_ssize_t n;
    int fd, err;
    do {
        fd = open_beneath(dirfd, name);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -errno;
    do {
        n = read(fd, buf, (size_t)limit);
    } while (n < 0 && errno == EINTR);
    err = errno;
    close(fd);
    return n < 0 ? -err : n;
}

static PyObject *read_files(PyObject *self, PyObject *args) {
    int dirfd;
    PyObject *names, *seq, *out = NULL;
    Py_ssize_t limit, count;
    char *buf;
    (void)self;
    if (!PyArg_ParseTuple(args, "iOn:read_files", &dirfd, &names, &limit))
        return NULL;
    if (limit < 1 || limit > MAX_LIMIT) {
        PyErr_Format(PyExc_ValueError, "limit must be 1 .. %d bytes", MAX_LIMIT);
        return NULL;
    }
    /* a tuple of its own: no other thread can change it while the GIL is released */
    seq = PySequence_Tuple(names);
    if (seq == NULL)
        return NULL;
    count = PyTuple_GET_SIZE(seq);
    if (count > MAX_NAMES) {
        PyErr_Format(PyExc_ValueError, "more than %d names", MAX_NAMES);
        goto done;
    }
    buf = PyMem_Malloc((size_t)limit);
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    out = PyList_New(count);
    if (out == NULL)
        goto free_buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i), *result;
        const char *name;
        Py_ssize_t len, n;
        if (PyUnicode_Check(item)) {
            name = PyUnicode_AsUTF8AndSize(item, &len);
            if (name == NULL)
                goto fail;
        } else if (PyBytes_Check(item)) {
            name = PyBytes_AS_STRING(item);
            len = PyBytes_GET_SIZE(item);
        } else {
            PyErr_SetString(PyExc_TypeError, "names must be str or bytes");
            goto fail;
        }
        if (len > MAX_NAME || beneath(name, len) != 0) {
            n = -EINVAL;
        } else {
            Py_BEGIN_ALLOW_THREADS
            n = read_one(dirfd, name, buf, limit);
            Py_END_ALLOW_THREADS
        }
        result = n < 0 ? PyLong_FromSsize_t(-n) : PyBytes_FromStringAndSize(buf, n);
        if (result == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, result);
    }
    goto free_buf;
fail:
    Py_CLEAR(out);
free_buf:
    PyMem_Free(buf);
done:
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"read_files", read_files, METH_VARARGS,
     "read_files(dirfd, names, limit) -> list of bytes (one read of at most limit bytes) "
     "or int (the errno), one per name relative to dirfd; no symlink followed, no name "
     "outside dirfd."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "supervisor._readfiles",
    "Read many small /proc and cgroup files in one call.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__readfiles(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_LIMIT", MAX_LIMIT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
