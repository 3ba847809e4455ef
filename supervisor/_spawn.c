/*
 * supervisor._spawn -- start a worker process at the kernel's pace.
 *
 * One function, spawn(), does what subprocess.Popen does for a worker, without its costs:
 *
 *  - clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD [| CLONE_INTO_CGROUP]): the child shares the
 *    daemon's memory until it execs (no copy of a large parent's page tables, as with
 *    posix_spawn), the pidfd comes with the process (no race, no pidfd_open), and with a cgroup
 *    fd the child is born in its instance's cgroup (the daemon never migrates itself).
 *  - what the child does before exec is done with raw system calls only (no libc function that
 *    takes a lock or touches the parent's state): every signal back to SIG_DFL and an empty
 *    mask (as systemd does for its services), a new session, stdin/stdout/stderr, every other
 *    fd closed (close_range), the working directory, the soft RLIMIT_NOFILE given back (the
 *    daemon raises its own to the hard limit, as systemd does; its workers get the soft limit
 *    the daemon was started with, so that select() users keep working), and the user's
 *    groups, gid and uid. Raw setresuid() changes only the calling task, as it must here: libc's
 *    would signal the daemon's other threads.
 *  - the parent blocks every signal around the clone, so that no handler of the daemon ever
 *    runs in the child while it shares the daemon's memory.
 *  - an error in the child (chdir, exec, ...) is written to memory the parent reads once the
 *    child has exited (CLONE_VFORK: the parent sleeps until exec or exit).
 *
 * The child runs on a stack of its own (clone3 with CLONE_VM needs one; a guard page below it),
 * entered through a few lines of assembly, so clone3 is for x86_64; elsewhere, and where a
 * seccomp profile refuses clone3 (probed at import), it uses libc's clone(), which has no
 * CLONE_INTO_CGROUP (HAVE_CGROUP is False and the caller moves itself into the cgroup around
 * the spawn instead).
 *
 * spawn(paths, argv, envp, cwd, stdio, nofile, ids, cgroup_fd[, low]) -> (pid, pidfd, 0) or
 * (0, errno, stage) when the child could not exec; OSError when no child could be made.
 *
 * low: three placeholder fds of /dev/null that the caller opened early (so with low numbers).
 * With them, and stdin /dev/null, the child also shares the daemon's fd table (CLONE_FILES)
 * and its first call, close_range(max(low) + 1, ~0, CLOSE_RANGE_UNSHARE), gives it a copy of
 * the fds below the placeholders only: without them every spawn copies the daemon's whole
 * table (one pidfd per worker) and then closes it again, which grows with the number of
 * workers. The stdio sources are dup'ed onto the placeholders for the spawn, and the
 * placeholders get /dev/null back afterwards.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "_spawn_clone.h"


/* clone3 can be there at build time and refused at run time (a container's seccomp profile
   answers ENOSYS or EPERM): probed once at import, the spawn then uses libc's clone() */
static int have_clone3;
static int have_cgroup;   /* and CLONE_INTO_CGROUP (5.7; clone3 came in 5.3) */

/* what the child failed at (the third item of a failure) */
enum { ST_OK, ST_SETUP, ST_SESSION, ST_STDIO, ST_CWD, ST_RLIMIT, ST_IDS, ST_EXEC, ST_UNSHARE };


struct kernel_sigaction {  /* what rt_sigaction takes on Linux */
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

struct child {
    char **paths;          /* candidate executables, NULL-terminated */
    char **argv, **envp;
    const char *cwd;       /* or NULL */
    int stdio[3];
    int set_nofile;
    struct rlimit nofile;
    int set_ids;
    uid_t uid;
    gid_t gid;
    size_t ngroups;
    gid_t *groups;
    long max_fd;           /* for the close loop where close_range is missing */
    int share_files;       /* CLONE_FILES: keep only fds below keep_below (see spawn()) */
    int keep_below;
    int umask;             /* the file mode creation mask, or -1: the daemon's */
    volatile int err, stage;
};

static long sys(long n, long a, long b, long c, long d)
{
    long r = syscall(n, a, b, c, d);
    return r < 0 ? -errno : r;
}

static void fail(struct child *c, int stage, long err)
{
    c->err = (int)-err;
    c->stage = stage;
    syscall(SYS_exit_group, 127);
}

static int child_main(void *arg)
{
    struct child *c = arg;
    struct kernel_sigaction dfl = {SIG_DFL, 0, NULL, 0};
    uint64_t empty = 0;
    long r;
    if (c->share_files) {
        /* the daemon's fd table is shared until this call: it gives the child a copy of
           fds 0..keep_below-1 only (the stdio sources are there), whatever the daemon holds
           above. Nothing may touch an fd before it. */
        if ((r = sys(SYS_close_range, c->keep_below, ~0U, CLOSE_RANGE_UNSHARE, 0)) < 0)
            fail(c, ST_UNSHARE, r);
    }
    for (int sig = 1; sig <= 64; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(uint64_t));
    }
    if ((r = sys(SYS_setsid, 0, 0, 0, 0)) < 0)
        fail(c, ST_SESSION, r);
    int src[3];
    for (int i = 0; i < 3; i++) {
        src[i] = c->stdio[i];
        if (src[i] <= 2) {  /* would be overwritten by an earlier dup: move it out first */
            if ((r = sys(SYS_fcntl, src[i], F_DUPFD_CLOEXEC, 3, 0)) < 0)
                fail(c, ST_STDIO, r);
            src[i] = (int)r;
        }
    }
    for (int i = 0; i < 3; i++) {
        if ((r = sys(SYS_dup3, src[i], i, 0, 0)) < 0)
            fail(c, ST_STDIO, r);
    }
    if (sys(SYS_close_range, 3, ~0U, 0, 0) < 0) {
        for (long fd = 3; fd < c->max_fd; fd++)
            syscall(SYS_close, fd);
    }
    if (c->cwd != NULL && (r = sys(SYS_chdir, (long)c->cwd, 0, 0, 0)) < 0)
        fail(c, ST_CWD, r);
    if (c->umask >= 0)
        syscall(SYS_umask, c->umask);   /* cannot fail */
    if (c->set_nofile &&
        (r = sys(SYS_prlimit64, 0, RLIMIT_NOFILE, (long)&c->nofile, 0)) < 0)
        fail(c, ST_RLIMIT, r);
    if (c->set_ids) {
        if ((r = sys(PV_SYS_setgroups, (long)c->ngroups, (long)c->groups, 0, 0)) < 0)
            fail(c, ST_IDS, r);
        if ((r = sys(PV_SYS_setresgid, c->gid, c->gid, c->gid, 0)) < 0)
            fail(c, ST_IDS, r);
        if ((r = sys(PV_SYS_setresuid, c->uid, c->uid, c->uid, 0)) < 0)
            fail(c, ST_IDS, r);
    }
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, sizeof(uint64_t));
    long saved = 0;
    for (char **p = c->paths; *p != NULL; p++) {
        r = sys(SYS_execve, (long)*p, (long)c->argv, (long)c->envp, 0);
        /* as CPython does: the first error that is not "no such file here" wins */
        if (saved == 0 && r != -ENOENT && r != -ENOTDIR)
            saved = r;
        if (p[1] == NULL && saved == 0)
            saved = r;
    }
    fail(c, ST_EXEC, saved ? saved : -ENOENT);
    return 127;
}

#define STACK_SIZE (64 * 1024)
static void *child_stack;  /* one: a spawn is refused while another is in flight */
static int spawning;       /* set (under the GIL) while a spawn runs without it */


static void free_list(char **list)
{
    PyMem_Free(list);
}

/* a NULL-terminated array of the bytes in seq (borrowed: *keep holds them). A tuple, not
   PySequence_Fast's list itself: Python code run later in the parsing (an id's __index__)
   could empty a list and free the bytes the child is to exec with. */
static char **bytes_list(PyObject *seq, const char *what, PyObject **keep)
{
    PyObject *fast = PySequence_Tuple(seq);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(fast);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(fast, i);
        char *s;
        Py_ssize_t len;
        if (!PyBytes_Check(item) || PyBytes_AsStringAndSize(item, &s, &len) < 0 ||
            (Py_ssize_t)strlen(s) != len) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "%s: bytes without NUL expected", what);
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        out[i] = s;
    }
    *keep = fast;
    return out;
}

/* an id for setgroups/setresgid/setresuid: 0..2**32-2 (2**32-1, i.e. -1, is "no change" to
   the kernel, the worker would stay root; a larger one would be cut to 32 bits: 2**32 is
   root), else ValueError (the spawner reports that as a spawn failure) */
static int get_id(PyObject *o, uint32_t *out)
{
    long long v = PyLong_AsLongLong(o);
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError))
        return -1;
    if (PyErr_Occurred() || v < 0 || v >= (long long)(uid_t)-1) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "ids: uid, gid and groups 0..2**32-2 expected");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int no_unshare;   /* set once the kernel refused CLOSE_RANGE_UNSHARE */

static int is_devnull(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 1 &&
           minor(st.st_rdev) == 3;
}

static PyObject *pv_spawn(PyObject *self, PyObject *args)
{
    PyObject *paths_o, *argv_o, *envp_o, *cwd_o, *nofile_o, *ids_o, *low_o = Py_None;
    PyObject *keep[3] = {NULL, NULL, NULL};
    struct child c;
    int cgroup_fd;
    PyObject *result = NULL;
    gid_t *groups = NULL;
    int retry = 0;

    memset(&c, 0, sizeof c);
    int low[3] = {-1, -1, -1};
    c.umask = -1;
    if (!PyArg_ParseTuple(args, "OOOO(iii)OOi|Oi", &paths_o, &argv_o, &envp_o, &cwd_o,
                          &c.stdio[0], &c.stdio[1], &c.stdio[2], &nofile_o, &ids_o, &cgroup_fd,
                          &low_o, &c.umask))
        return NULL;
    if (c.umask < -1 || c.umask > 0777) {
        PyErr_SetString(PyExc_ValueError, "umask: 0..0777 or -1 expected");
        return NULL;
    }
    if (spawning) {
        PyErr_SetString(PyExc_RuntimeError, "spawn: another spawn is in flight (one thread "
                                            "spawns)");
        return NULL;
    }
    if (low_o != Py_None && !PyArg_ParseTuple(low_o, "iii", &low[0], &low[1], &low[2]))
        return NULL;
    if (cgroup_fd >= 0 && !have_cgroup) {
        errno = EOPNOTSUPP;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if ((c.paths = bytes_list(paths_o, "paths", &keep[0])) == NULL ||
        (c.argv = bytes_list(argv_o, "argv", &keep[1])) == NULL ||
        (c.envp = bytes_list(envp_o, "envp", &keep[2])) == NULL)
        goto done;
    if (c.paths[0] == NULL || c.argv[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "paths and argv must not be empty");
        goto done;
    }
    if (cwd_o != Py_None) {
        if (!PyBytes_Check(cwd_o) || strlen(PyBytes_AS_STRING(cwd_o)) !=
                                         (size_t)PyBytes_GET_SIZE(cwd_o)) {
            PyErr_SetString(PyExc_ValueError, "cwd: bytes without NUL expected");
            goto done;
        }
        c.cwd = PyBytes_AS_STRING(cwd_o);
    }
    if (nofile_o != Py_None) {
        unsigned long long soft, hard;
        if (!PyArg_ParseTuple(nofile_o, "KK", &soft, &hard))
            goto done;
        c.set_nofile = 1;
        c.nofile.rlim_cur = (rlim_t)soft;
        c.nofile.rlim_max = (rlim_t)hard;
    }
    if (ids_o != Py_None) {
        PyObject *uid_o, *gid_o, *groups_o;
        uint32_t uid, gid;
        if (!PyArg_ParseTuple(ids_o, "OOO", &uid_o, &gid_o, &groups_o) ||
            get_id(uid_o, &uid) < 0 || get_id(gid_o, &gid) < 0)
            goto done;
        PyObject *fast = PySequence_Tuple(groups_o);   /* __index__ cannot shrink it */
        if (fast == NULL)
            goto done;
        Py_ssize_t n = PyTuple_GET_SIZE(fast);
        groups = PyMem_Calloc((size_t)n + 1, sizeof(gid_t));
        if (groups == NULL) {
            Py_DECREF(fast);
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t g;
            if (get_id(PyTuple_GET_ITEM(fast, i), &g) < 0) {
                Py_DECREF(fast);
                goto done;
            }
            groups[i] = (gid_t)g;
        }
        Py_DECREF(fast);
        c.set_ids = 1;
        c.uid = uid;
        c.gid = gid;
        c.ngroups = (size_t)n;
        c.groups = groups;
    }
    struct rlimit now;
    c.max_fd = getrlimit(RLIMIT_NOFILE, &now) == 0 && now.rlim_cur < (1 << 20)
                   ? (long)now.rlim_cur : (1 << 20);
    if (child_stack == NULL) {
        /* with a guard page below: an overflow faults instead of writing on the daemon's
           memory (the child shares it) */
        long page = sysconf(_SC_PAGESIZE);
        char *s = mmap(NULL, STACK_SIZE + (size_t)page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (s == MAP_FAILED || mprotect(s, (size_t)page, PROT_NONE) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            if (s != MAP_FAILED)
                munmap(s, STACK_SIZE + (size_t)page);
            goto done;
        }
        child_stack = s + page;
    }

    /* Low fds (placeholders of /dev/null the caller opened early): the stdio sources are
       dup'ed onto them, so that a child sharing the fd table (CLONE_FILES) needs a copy of
       the fds below them only, not of the daemon's 10,000 pidfds (copying and then closing
       those is most of a spawn's cost at that scale). */
    int use_low = low_o != Py_None && !no_unshare && is_devnull(c.stdio[0]);
    int saved_stdio[3] = {c.stdio[0], c.stdio[1], c.stdio[2]};
    int replaced = 0;
    if (use_low) {
        int top = 0;
        for (int i = 0; i < 3 && use_low; i++) {
            if (low[i] < 3 || low[i] == low[(i + 1) % 3] || low[i] == low[(i + 2) % 3])
                use_low = 0;
            else if (c.stdio[i] != low[i] && dup3(c.stdio[i], low[i], O_CLOEXEC) < 0)
                use_low = 0;
            else
                replaced = i + 1;
            top = low[i] > top ? low[i] : top;
        }
        c.keep_below = top + 1;
        if (use_low) {
            for (int i = 0; i < 3; i++)
                c.stdio[i] = low[i];
        }
    }
    c.share_files = use_low;

    int pidfd = -1;
    long pid;
    /* raw: libc's pthread_sigmask leaves its own two signals (cancellation, setxid)
       unblocked, and their handlers must not run in the child either */
    uint64_t all = ~0ULL, old;
    /* The GIL is let go while the parent waits in vfork (other threads, e.g. the one opening
       log files ahead, run meanwhile). The child touches no Python object, only `c` and its
       stack; the fds it may copy below keep_below are all O_CLOEXEC. */
    spawning = 1;
    PyThreadState *save = PyEval_SaveThread();
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof(uint64_t));
    pid = -ENOSYS;
#if PV_HAVE_CLONE3
    if (have_clone3) {
    struct pv_clone_args cl;
    memset(&cl, 0, sizeof cl);
    cl.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | (use_low ? CLONE_FILES : 0);
    cl.pidfd = (uint64_t)(uintptr_t)&pidfd;
    cl.exit_signal = SIGCHLD;
    cl.stack = (uint64_t)(uintptr_t)child_stack;
    cl.stack_size = STACK_SIZE;
    if (cgroup_fd >= 0) {
        cl.flags |= PV_CLONE_INTO_CGROUP;
        cl.cgroup = (uint64_t)cgroup_fd;
    }
    pid = clone3_run(&cl, child_main, &c);
    }
#endif
    if (pid == -ENOSYS && cgroup_fd < 0) {
        pid = clone(child_main, (char *)child_stack + STACK_SIZE,
                    CLONE_VM | CLONE_VFORK | CLONE_PIDFD | (use_low ? CLONE_FILES : 0) | SIGCHLD,
                    &c, &pidfd);
        if (pid < 0)
            pid = -errno;
    }
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof(uint64_t));
    /* the placeholders hold /dev/null (stdin's source) again, not the worker's files */
    for (int i = 0; i < replaced; i++) {
        if (low[i] != saved_stdio[i])
            dup3(saved_stdio[0], low[i], O_CLOEXEC);
    }
    PyEval_RestoreThread(save);
    spawning = 0;
    if (pid > 0 && c.stage == ST_UNSHARE) {   /* a kernel without CLOSE_RANGE_UNSHARE */
        int status;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR)
            ;
        close(pidfd);
        no_unshare = 1;
        retry = 1;
        goto done;
    }
    if (pid < 0) {
        errno = (int)-pid;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (c.stage != ST_OK) {     /* the child exited: reap it here, nobody else knows it */
        int status;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR)
            ;
        close(pidfd);
        result = Py_BuildValue("(iii)", 0, c.err, c.stage);
        goto done;
    }
    result = Py_BuildValue("(lii)", pid, pidfd, 0);
done:
    PyMem_Free(groups);
    if (c.paths)
        free_list(c.paths);
    if (c.argv)
        free_list(c.argv);
    if (c.envp)
        free_list(c.envp);
    for (int i = 0; i < 3; i++)
        Py_XDECREF(keep[i]);
    return retry ? pv_spawn(self, args) : result;   /* once: no_unshare is set */
}

static PyMethodDef methods[] = {
    {"spawn", pv_spawn, METH_VARARGS,
     "spawn(paths, argv, envp, cwd, stdio, nofile, ids, cgroup_fd) -> (pid, pidfd, 0) or "
     "(0, errno, stage)"},
    {NULL, NULL, 0, NULL},
};

static int spawn_exec(PyObject *m)
{
    probe(&have_clone3, &have_cgroup);
    if (PyModule_AddIntConstant(m, "HAVE_CGROUP", have_cgroup) < 0)
        return -1;
    static const struct { const char *name; int value; } stages[] = {
        {"ST_SETUP", ST_SETUP}, {"ST_SESSION", ST_SESSION}, {"ST_STDIO", ST_STDIO},
        {"ST_CWD", ST_CWD}, {"ST_RLIMIT", ST_RLIMIT}, {"ST_IDS", ST_IDS},
        {"ST_EXEC", ST_EXEC}, {"ST_UNSHARE", ST_UNSHARE},
    };
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        if (PyModule_AddIntConstant(m, stages[i].name, stages[i].value) < 0)
            return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, spawn_exec},
    {0, NULL},
};

static struct PyModuleDef spawn_module = {
    PyModuleDef_HEAD_INIT, "supervisor._spawn",
    "Start a worker process: clone3 with CLONE_VM|CLONE_VFORK|CLONE_PIDFD, into a cgroup.",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void)
{
    return PyModuleDef_Init(&spawn_module);
}
