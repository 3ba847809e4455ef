/*
 * supervisor/_spawn.c's system layer: syscall numbers that older headers lack, clone3 entered
 * on the child's own stack (x86_64), and the probe of what the running kernel (and a seccomp
 * profile around it) lets through. Included by _spawn.c only.
 */
#ifndef PV_SPAWN_CLONE_H
#define PV_SPAWN_CLONE_H

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#define PV_CLONE_INTO_CGROUP 0x200000000ULL

#ifndef SYS_clone3
#define SYS_clone3 435        /* the same number on every architecture */
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
/* 32-bit x86 and arm: the plain calls take 16-bit ids (uid 100000 would become 34464) */
#ifdef SYS_setresuid32
#define PV_SYS_setresuid SYS_setresuid32
#define PV_SYS_setresgid SYS_setresgid32
#define PV_SYS_setgroups SYS_setgroups32
#else
#define PV_SYS_setresuid SYS_setresuid
#define PV_SYS_setresgid SYS_setresgid
#define PV_SYS_setgroups SYS_setgroups
#endif

/* PV_NO_CLONE3 builds the portable path on x86_64 too (to check that it compiles) */
#if defined(__x86_64__) && !defined(PV_NO_CLONE3)
#define PV_HAVE_CLONE3 1
#else
#define PV_HAVE_CLONE3 0
#endif

struct pv_clone_args {     /* struct clone_args of linux/sched.h, version 2 (88 bytes) */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

#if PV_HAVE_CLONE3
/* clone3 with the child entering fn(arg) on its own stack, then exit_group(fn's result) */
static long clone3_run(struct pv_clone_args *cl, int (*fn)(void *), void *arg)
{
    long ret;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov $231, %%eax\n\t"
        "syscall\n\t"
        "hlt\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(cl), "S"(sizeof(*cl)), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory");
    return ret;
}
#endif

/* *have_clone3: clone3 is allowed; *have_cgroup: and takes CLONE_INTO_CGROUP */
static void probe(int *have_clone3, int *have_cgroup)
{
#if PV_HAVE_CLONE3
    /* a kernel with clone3 answers EINVAL to a size of 0, before anything else */
    *have_clone3 = syscall(SYS_clone3, NULL, 0) < 0 && errno == EINVAL;
    if (*have_clone3) {
        /* CLONE_INTO_CGROUP with an fd that is not open: EBADF where the flag is known,
           EINVAL (an unknown flag) before 5.7. No process can come of it; if one did, it is
           a plain fork (no CLONE_VM) and exits at once. */
        struct pv_clone_args cl;
        memset(&cl, 0, sizeof cl);
        cl.flags = PV_CLONE_INTO_CGROUP;
        cl.exit_signal = SIGCHLD;
        cl.cgroup = 0x7fffffff;
        long r = syscall(SYS_clone3, &cl, sizeof cl);
        if (r == 0)
            syscall(SYS_exit_group, 0);
        if (r > 0)
            waitpid((pid_t)r, NULL, 0);
        *have_cgroup = r < 0 && errno == EBADF;
    }
#else
    *have_clone3 = *have_cgroup = 0;
#endif
}

#endif
