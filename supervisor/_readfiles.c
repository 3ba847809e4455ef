/*
 * supervisor._readfiles -- read many small kernel files (/proc, cgroupfs) in one call.
 *
 * Besides read_files, the three reads of a status row done and parsed here, so that a row
 * costs no bytes object, split or int() in Python: read_stats (/proc/PID/stat -> cpu and rss
 * numbers), sole_members (is cgroup.procs exactly "PID\n"), page_pids (a status page's pid
 * word). Same rules as read_files for every file.
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
#include <limits.h>
#include <stdio.h>
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

/* one file: its length in buf, or -errno. ``whole``: read until EOF or limit, for files of many
 * records (cgroup.procs): cgroupfs and procfs (seq_file) give at most a page per read(), so one
 * read of the cgroup.procs of a tree of 1,000 processes named ~680 of them. Without, one read
 * (a /proc/PID/stat line, a peek): one syscall fewer per instance for status at 10,000. */
static Py_ssize_t read_one(int dirfd, const char *name, char *buf, Py_ssize_t limit,
                           int whole) {
    Py_ssize_t n, total;
    int fd, err;
    do {
        fd = open_beneath(dirfd, name);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -errno;
    total = 0;
    err = 0;
    while (total < limit) {
        n = read(fd, buf + total, (size_t)(limit - total));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0)
            break;
        total += n;
        if (!whole)
            break;
    }
    close(fd);
    return err != 0 && total == 0 ? -err : total;
}

/* the items of a sequence, as a tuple of its own: no other thread can change it while the GIL
 * is released */
static PyObject *tuple_of(PyObject *seq, Py_ssize_t max) {
    PyObject *t = PySequence_Tuple(seq);
    if (t != NULL && PyTuple_GET_SIZE(t) > max) {
        PyErr_Format(PyExc_ValueError, "more than %zd items", max);
        Py_CLEAR(t);
    }
    return t;
}

/* the UTF-8 of a str name (bytes taken as they are); NULL with an exception otherwise */
static const char *name_of(PyObject *item, Py_ssize_t *len) {
    if (PyUnicode_Check(item))
        return PyUnicode_AsUTF8AndSize(item, len);
    if (PyBytes_Check(item)) {
        *len = PyBytes_GET_SIZE(item);
        return PyBytes_AS_STRING(item);
    }
    PyErr_SetString(PyExc_TypeError, "names must be str or bytes");
    return NULL;
}

/* one read of the file an item of names (str or bytes) names under dirfd, with suffix (at most
 * 31 bytes, "" for none) appended and, skip_slashes, its leading '/' skipped (a shm name).
 * *n: the bytes read or -errno (-EINVAL: a name too long or not beneath dirfd). -1 with an
 * exception for an item that is not a name. */
static int read_named(int dirfd, PyObject *item, const char *suffix, int skip_slashes,
                      char *buf, Py_ssize_t limit, Py_ssize_t *n, int whole) {
    char path[MAX_NAME + 32];
    size_t extra = strlen(suffix);
    Py_ssize_t len;
    const char *name = name_of(item, &len);
    if (name == NULL)
        return -1;
    while (skip_slashes && len > 0 && name[0] == '/') {
        name++;
        len--;
    }
    *n = -EINVAL;
    if (len > MAX_NAME || extra >= 32 || beneath(name, len) != 0)
        return 0;
    memcpy(path, name, (size_t)len);
    memcpy(path + len, suffix, extra + 1);
    Py_BEGIN_ALLOW_THREADS
    *n = read_one(dirfd, path, buf, limit, whole);
    Py_END_ALLOW_THREADS
    return 0;
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
    if ((seq = tuple_of(names, MAX_NAMES)) == NULL)
        return NULL;
    count = PyTuple_GET_SIZE(seq);
    buf = PyMem_Malloc((size_t)limit);
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    out = PyList_New(count);
    if (out == NULL)
        goto free_buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *result;
        Py_ssize_t n;
        if (read_named(dirfd, PyTuple_GET_ITEM(seq, i), "", 0, buf, limit, &n, 1) < 0)
            goto fail;
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

/* --- status's reads, parsed here (no bytes object, no split, no int() per row) --------- */

#define STAT_LIMIT 4096     /* a stat line is ~300 bytes (a comm of at most 64): more is not one */
#define PROCS_PEEK 32       /* bytes of cgroup.procs read to tell "this one pid and no other" */

/* the next unsigned decimal field of a stat line at *p (one space before it), into *v */
static int next_field(const char **p, const char *end, unsigned long long *v) {
    const char *q = *p;
    unsigned long long x = 0;
    if (q >= end || *q != ' ')
        return -1;
    q++;
    if (q >= end || *q < '0' || *q > '9')
        return -1;
    for (; q < end && *q >= '0' && *q <= '9'; q++) {
        if (x > (ULLONG_MAX - 9) / 10)
            return -1;
        x = x * 10 + (unsigned long long)(*q - '0');
    }
    *p = q;
    *v = x;
    return 0;
}

/* skip one field that may be signed or not a number (state, ppid -1 ...): to the next space */
static int skip_field(const char **p, const char *end) {
    const char *q = *p;
    if (q >= end || *q != ' ')
        return -1;
    q++;
    while (q < end && *q != ' ' && *q != '\n')
        q++;
    *p = q;
    return 0;
}

/* (utime+stime, utime+stime+cutime+cstime, rss) of a /proc/PID/stat text, as microseconds
 * and bytes; None when it is not a stat line. The comm is skipped by the LAST
 * ')' (a process can put ')' and spaces in its own comm). Fields after the comm: 3 state,
 * 4 ppid ... 14 utime, 15 stime, 16 cutime, 17 cstime (signed in the kernel's format, never
 * negative), ... 24 rss. */
static PyObject *parse_line(const char *buf, Py_ssize_t n, unsigned long long tick_usec,
                            unsigned long long page) {
    const char *p = NULL, *end = buf + n;
    unsigned long long t[4], rss;
    for (Py_ssize_t i = n; i > 0; i--)
        if (buf[i - 1] == ')') {
            p = buf + i;
            break;
        }
    if (p == NULL || n >= STAT_LIMIT)
        Py_RETURN_NONE;
    for (int f = 3; f <= 13; f++)           /* state .. cmajflt */
        if (skip_field(&p, end) < 0)
            Py_RETURN_NONE;
    for (int f = 0; f < 4; f++)
        if (next_field(&p, end, &t[f]) < 0)
            Py_RETURN_NONE;
    for (int f = 18; f <= 23; f++)          /* priority .. vsize (priority, nice signed) */
        if (skip_field(&p, end) < 0)
            Py_RETURN_NONE;
    if (next_field(&p, end, &rss) < 0)
        Py_RETURN_NONE;
    if (t[0] > ULLONG_MAX / 4 / tick_usec || t[1] > ULLONG_MAX / 4 / tick_usec
        || t[2] > ULLONG_MAX / 4 / tick_usec || t[3] > ULLONG_MAX / 4 / tick_usec
        || rss > ULLONG_MAX / page)
        Py_RETURN_NONE;
    return Py_BuildValue("(KKK)", (t[0] + t[1]) * tick_usec,
                         (t[0] + t[1] + t[2] + t[3]) * tick_usec, rss * page);
}

static int units(unsigned long long tick_usec, unsigned long long page) {
    if (tick_usec < 1 || tick_usec > 1000000 || page < 1 || page > (1ULL << 30)) {
        PyErr_SetString(PyExc_ValueError, "tick_usec must be 1 .. 10**6, page 1 .. 2**30");
        return -1;
    }
    return 0;
}

static PyObject *parse_stat(PyObject *self, PyObject *args) {
    const char *buf;
    Py_ssize_t n;
    unsigned long long tick_usec, page;
    (void)self;
    if (!PyArg_ParseTuple(args, "y#KK:parse_stat", &buf, &n, &tick_usec, &page)
        || units(tick_usec, page) < 0)
        return NULL;
    return parse_line(buf, n, tick_usec, page);
}

/* read_stats(procfd, pids, tick_usec, page) -> list: per pid the parsed /proc/PID/stat
 * (parse_stat's tuple), None when the text is not a stat line, or the errno */
static PyObject *read_stats(PyObject *self, PyObject *args) {
    int dirfd;
    PyObject *pids, *seq, *out = NULL;
    unsigned long long tick_usec, page;
    char buf[STAT_LIMIT], name[32];
    (void)self;
    if (!PyArg_ParseTuple(args, "iOKK:read_stats", &dirfd, &pids, &tick_usec, &page)
        || units(tick_usec, page) < 0)
        return NULL;
    if ((seq = tuple_of(pids, MAX_NAMES)) == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(seq);
    if ((out = PyList_New(count)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        long pid = PyLong_AsLong(PyTuple_GET_ITEM(seq, i));
        PyObject *result;
        Py_ssize_t n;
        if (pid == -1 && PyErr_Occurred())
            goto fail;
        if (pid < 1 || pid > INT_MAX) {
            n = -EINVAL;
        } else {
            snprintf(name, sizeof name, "%ld/stat", pid);
            Py_BEGIN_ALLOW_THREADS
            n = read_one(dirfd, name, buf, STAT_LIMIT, 0);
            Py_END_ALLOW_THREADS
        }
        result = n < 0 ? PyLong_FromSsize_t(-n) : parse_line(buf, n, tick_usec, page);
        if (result == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, result);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_DECREF(seq);
    return out;
}

/* sole_members(cgfd, names, pids) -> list of bool: whether <name>/cgroup.procs names that
 * pid and nothing else (the first PROCS_PEEK bytes are "PID\n" and the file ends there) */
static PyObject *sole_members(PyObject *self, PyObject *args) {
    int dirfd;
    PyObject *names, *pids, *nseq = NULL, *pseq = NULL, *out = NULL;
    char buf[PROCS_PEEK], want[24];
    (void)self;
    if (!PyArg_ParseTuple(args, "iOO:sole_members", &dirfd, &names, &pids))
        return NULL;
    if ((nseq = tuple_of(names, MAX_NAMES)) == NULL || (pseq = tuple_of(pids, MAX_NAMES)) == NULL)
        goto done;
    Py_ssize_t count = PyTuple_GET_SIZE(nseq);
    if (PyTuple_GET_SIZE(pseq) != count) {
        PyErr_SetString(PyExc_ValueError, "names and pids differ in length");
        goto done;
    }
    if ((out = PyList_New(count)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n = -EINVAL;
        long pid = PyLong_AsLong(PyTuple_GET_ITEM(pseq, i));
        int wlen = 0;
        if (pid == -1 && PyErr_Occurred())
            goto fail;
        if (pid >= 1 && pid <= INT_MAX) {
            wlen = snprintf(want, sizeof want, "%ld\n", pid);
            if (read_named(dirfd, PyTuple_GET_ITEM(nseq, i), "/cgroup.procs", 0, buf, PROCS_PEEK,
                           &n, 0) < 0)
                goto fail;
        }
        PyObject *result = n == wlen && memcmp(buf, want, (size_t)wlen) == 0 ? Py_True : Py_False;
        Py_INCREF(result);
        PyList_SET_ITEM(out, i, result);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_XDECREF(nseq);
    Py_XDECREF(pseq);
    return out;
}

/* page_pids(shmfd, names) -> list of int: the u32 (little-endian) at bytes 4..7 of each file,
 * 0 when it cannot be read or is shorter; leading '/' of a name (a shm name) skipped */
static PyObject *page_pids(PyObject *self, PyObject *args) {
    int dirfd;
    PyObject *names, *seq, *out = NULL;
    unsigned char buf[8];
    (void)self;
    if (!PyArg_ParseTuple(args, "iO:page_pids", &dirfd, &names))
        return NULL;
    if ((seq = tuple_of(names, MAX_NAMES)) == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(seq);
    if ((out = PyList_New(count)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n;
        if (read_named(dirfd, PyTuple_GET_ITEM(seq, i), "", 1, (char *)buf, sizeof buf, &n,
                       0) < 0)
            goto fail;
        unsigned long v = n == (Py_ssize_t)sizeof buf
            ? (unsigned long)buf[4] | (unsigned long)buf[5] << 8 | (unsigned long)buf[6] << 16
              | (unsigned long)buf[7] << 24
            : 0;
        PyObject *result = PyLong_FromUnsignedLong(v);
        if (result == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, result);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"read_files", read_files, METH_VARARGS,
     "read_files(dirfd, names, limit) -> list of bytes (one read of at most limit bytes) "
     "or int (the errno), one per name relative to dirfd; no symlink followed, no name "
     "outside dirfd."},
    {"read_stats", read_stats, METH_VARARGS,
     "read_stats(procfd, pids, tick_usec, page) -> list, per pid: (cpu usec, cpu usec with "
     "reaped children, rss bytes) of /proc/PID/stat, None when not a stat line, or the errno."},
    {"parse_stat", parse_stat, METH_VARARGS,
     "parse_stat(text, tick_usec, page) -> (cpu usec, cpu usec with children, rss bytes) of a "
     "/proc/PID/stat text, or None."},
    {"sole_members", sole_members, METH_VARARGS,
     "sole_members(cgfd, names, pids) -> list of bool: <name>/cgroup.procs lists exactly pid."},
    {"page_pids", page_pids, METH_VARARGS,
     "page_pids(shmfd, names) -> list of int: the u32 at bytes 4..7 of each file, else 0."},
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
