/*
 * ctlblock.h -- pyvisor control block layout v2 for C/C++ workers.
 *
 * The one definition of the layout and of the worker's environment: the native module
 * worker._ctlword is compiled from this file and exports every constant below to Python
 * (under the same name without PYVISOR_), and worker/block.py takes them from there.
 * tests/worker/test_cheader.py compiles this file with gcc and compares each with Python's.
 *
 * Two 4096-byte POSIX shm objects per worker instance, little-endian, naturally aligned,
 * one writer per object. The daemon creates both. The ctl page (named by $PYVISOR_BLOCK) is
 * the daemon's: command word, deadline and the identity it recorded at spawn; the worker maps
 * it read-only (it cannot open it for writing, so it cannot truncate or forge it) and waits on
 * the command word there. The status page (its name is in the ctl page, with 16 random hex
 * digits nobody can guess) is the worker's: it publishes its pid/start time/state, heartbeat,
 * work done, exit record, a status text and named counters/gauges there and acknowledges
 * commands in the ack word; the daemon only
 * ever reads it with pread, so nothing written to it (or a truncation) can fault the daemon. Header-only: static inline helpers built on the
 * GCC/Clang __atomic builtins and the futex syscall (SHARED futexes: no FUTEX_PRIVATE_FLAG).
 * Compile with -std=gnu11 (or -D_GNU_SOURCE): it needs syscall(), shm_open() and mmap().
 *
 *   struct pyvisor_block b;
 *   if (pyvisor_attach(getenv(PYVISOR_ENV_BLOCK), &b) != 0) { perror(...); ... }
 *   pyvisor_ready(&b);
 *   uint64_t *jobs = pyvisor_counter(&b, "jobs");   (NULL-safe; see pyvisor_metric)
 *   pyvisor_status(&b, "serving");
 *   while (!pyvisor_should_stop(&b)) { do_unit(); pyvisor_heartbeat(&b);
 *                                  pyvisor_add_work(&b, 1); pyvisor_counter_add(jobs, 1); }
 *   pyvisor_close(&b, 0);
 */
#ifndef PYVISOR_CTLBLOCK_H
#define PYVISOR_CTLBLOCK_H

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PYVISOR_MAGIC 0x32424C4354535950ULL /* "PYSTCLB2" little-endian */
#define PYVISOR_VERSION 2u
#define PYVISOR_HEADER_SIZE 0x200u
#define PYVISOR_BLOCK_SIZE 4096u  /* the ctl page */
#define PYVISOR_STATUS_SIZE 4096u /* the status page */

/* The environment the daemon gives a worker: its block's shm name, its instance name
 * ("name:index") and the daemon's notify socket ("@name": an abstract address). */
#define PYVISOR_ENV_BLOCK "PYVISOR_BLOCK"
#define PYVISOR_ENV_INSTANCE "PYVISOR_INSTANCE"
#define PYVISOR_ENV_NOTIFY "PYVISOR_NOTIFY"

/* ==== the ctl page: written by the daemon only; the worker maps it read-only ==== */
/* line 0: immutable after init */
#define PYVISOR_OFF_MAGIC 0x000
#define PYVISOR_OFF_VERSION 0x008
#define PYVISOR_OFF_HEADER_SIZE 0x00C
#define PYVISOR_OFF_BLOCK_SIZE 0x010
#define PYVISOR_OFF_SLOT 0x014
#define PYVISOR_OFF_BOOT_ID 0x018 /* 16 bytes */
/* line 1: commands */
#define PYVISOR_OFF_CMD 0x040 /* u32 futex: seq24 << 8 | cmd8 */
#define PYVISOR_OFF_REQUEST_BITS 0x044
#define PYVISOR_OFF_DEADLINE 0x048 /* u64 CLOCK_MONOTONIC ns, 0 = none */
#define PYVISOR_OFF_SUPERVISOR_PID 0x050
#define PYVISOR_OFF_EPOCH 0x058
#define PYVISOR_OFF_INCARNATION 0x060
/* line 2: the identity the daemon recorded at spawn (the only thing adoption believes) */
#define PYVISOR_OFF_SPAWNED_PID 0x080
#define PYVISOR_OFF_SPAWNED_UID 0x084
#define PYVISOR_OFF_SPAWNED_START 0x088 /* start time, clock ticks (/proc/PID/stat 22) */
#define PYVISOR_OFF_SPAWNED_PGID 0x090
#define PYVISOR_OFF_CONFIG_HASH 0x098
/* 0x100: the shm name of the status page, NUL-terminated ("/<ctl name>.<16 hex>") */
#define PYVISOR_OFF_STATUS_NAME 0x100
#define PYVISOR_STATUS_NAME_SIZE 256u

/* ==== the status page: written by the worker only; the daemon reads it with pread ==== */
/* line 0 */
#define PYVISOR_SOFF_ACK 0x000 /* u32 futex: acked_seq24 << 8 | state8 */
#define PYVISOR_SOFF_PID 0x004
#define PYVISOR_SOFF_START_TICKS 0x008
/* line 1 */
#define PYVISOR_SOFF_HEARTBEAT 0x040 /* u64 CLOCK_MONOTONIC ns */
#define PYVISOR_SOFF_WORK_DONE 0x048
#define PYVISOR_SOFF_BUSY_SINCE 0x050
/* line 2: exit record under a seqlock */
#define PYVISOR_SOFF_EXIT_SEQ 0x080
#define PYVISOR_SOFF_EXIT_STATUS 0x084 /* i32 */
#define PYVISOR_SOFF_EXIT_TIME 0x088   /* u64 CLOCK_REALTIME ns */
#define PYVISOR_SOFF_EXIT_SOURCE 0x090
/* line 3: a status text (UTF-8, text_len bytes) under its own seqlock */
#define PYVISOR_SOFF_TEXT_SEQ 0x0C0
#define PYVISOR_SOFF_TEXT_LEN 0x0C4
#define PYVISOR_SOFF_TEXT 0x100
#define PYVISOR_TEXT_SIZE 256u
/* line 3, 0x0E0: one kind byte per metric slot (METRIC_FREE/COUNTER/GAUGE), stored last */
#define PYVISOR_SOFF_METRIC_KINDS 0x0E0
/* 0x200: METRIC_COUNT named counters/gauges of METRIC_SIZE bytes each:
 * name (NUL-padded, METRIC_NAME_SIZE bytes) then a u64 value (a gauge's is an i64) */
#define PYVISOR_SOFF_METRICS 0x200
#define PYVISOR_METRIC_COUNT 16u
#define PYVISOR_METRIC_SIZE 32u
#define PYVISOR_METRIC_NAME_SIZE 24u
#define PYVISOR_SOFF_APP 0x400 /* free for the application */

enum { PYVISOR_CMD_NONE = 0, PYVISOR_CMD_STOP_GRACEFUL = 1 };
enum {
    PYVISOR_ST_INIT = 0,
    PYVISOR_ST_STARTING = 1,
    PYVISOR_ST_READY = 2,
    PYVISOR_ST_BUSY = 3,
    PYVISOR_ST_STOPPING = 4,
    PYVISOR_ST_EXITED = 5
};
/* Who wrote the exit record (NONE: nobody yet). */
enum { PYVISOR_EXIT_SRC_NONE = 0, PYVISOR_EXIT_SRC_WORKER = 1 };
/* A metric slot's kind byte. A slot is claimed by writing its name and a zero value, then its
 * kind byte (release): a reader that sees the kind sees the name. Names never change after. */
enum { PYVISOR_METRIC_FREE = 0, PYVISOR_METRIC_COUNTER = 1, PYVISOR_METRIC_GAUGE = 2 };

/* ---- raw field access -------------------------------------------------------------- */

#define PYVISOR_U32(base, off) ((uint32_t *)((char *)(base) + (off)))
#define PYVISOR_U64(base, off) ((uint64_t *)((char *)(base) + (off)))

static inline uint32_t pyvisor_load_u32(void *base, unsigned off)
{
    return __atomic_load_n(PYVISOR_U32(base, off), __ATOMIC_ACQUIRE);
}
static inline uint64_t pyvisor_load_u64(void *base, unsigned off)
{
    return __atomic_load_n(PYVISOR_U64(base, off), __ATOMIC_ACQUIRE);
}
static inline void pyvisor_store_u32(void *base, unsigned off, uint32_t v)
{
    __atomic_store_n(PYVISOR_U32(base, off), v, __ATOMIC_RELEASE);
}
static inline void pyvisor_store_u64(void *base, unsigned off, uint64_t v)
{
    __atomic_store_n(PYVISOR_U64(base, off), v, __ATOMIC_RELEASE);
}

/* Shared futex wait (returns 0 woken/changed, -1 with errno ETIMEDOUT/EINTR/EAGAIN). */
static inline int pyvisor_futex_wait(void *base, unsigned off, uint32_t expected,
                                     const struct timespec *rel_timeout)
{
    return (int)syscall(SYS_futex, PYVISOR_U32(base, off), FUTEX_WAIT, expected,
                        rel_timeout, NULL, 0);
}
static inline int pyvisor_futex_wake(void *base, unsigned off)
{
    return (int)syscall(SYS_futex, PYVISOR_U32(base, off), FUTEX_WAKE, 0x7fffffff, NULL,
                        NULL, 0);
}

static inline uint64_t pyvisor_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- a worker's handle --------------------------------------------------------------- */

struct pyvisor_block {
    void *ctl;      /* the ctl page, mapped read-only */
    void *status;   /* the status page, mapped read-write */
    uint32_t seq;   /* last command seq handled */
    uint32_t state; /* last state published */
    int stop;       /* latched: a stop was requested */
    uint32_t stop_cmd;
};

/* Field 22 of /proc/self/stat (start time in clock ticks), parsed after the last ')'. */
static inline uint64_t pyvisor_self_start_ticks(void)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p += 2; /* field 3 */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    return p ? strtoull(p, NULL, 10) : 0;
}

static inline void pyvisor_publish_ack(struct pyvisor_block *b)
{
    pyvisor_store_u32(b->status, PYVISOR_SOFF_ACK, (b->seq << 8) | b->state);
    pyvisor_futex_wake(b->status, PYVISOR_SOFF_ACK);
}

/* Map an shm object of at least size bytes; the size is checked with fstat BEFORE mapping
 * (no SIGBUS). NULL with errno set (EMSGSIZE: too small). */
static inline void *pyvisor_map(const char *name, int writable, size_t size)
{
    int fd = shm_open(name, writable ? O_RDWR : O_RDONLY, 0);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)size) {
        close(fd);
        errno = EMSGSIZE;
        return NULL;
    }
    void *p = mmap(NULL, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

/* Attach by the ctl page's shm name (e.g. getenv(PYVISOR_ENV_BLOCK)): map the ctl page
 * read-only and validate it, then map the status page it names read-write and publish pid,
 * start time and STARTING there. Returns 0, or -1 with errno set (EINVAL: not a valid v2
 * block, EMSGSIZE: too small). The boot_id check is the daemon's job. */
static inline int pyvisor_attach(const char *name, struct pyvisor_block *b)
{
    memset(b, 0, sizeof *b);
    if (name == NULL) {
        errno = ENOENT;
        return -1;
    }
    void *ctl = pyvisor_map(name, 0, PYVISOR_BLOCK_SIZE);
    if (ctl == NULL)
        return -1;
    const char *sname = (const char *)ctl + PYVISOR_OFF_STATUS_NAME;
    size_t nlen = strlen(name);
    if (pyvisor_load_u64(ctl, PYVISOR_OFF_MAGIC) != PYVISOR_MAGIC ||
        pyvisor_load_u32(ctl, PYVISOR_OFF_VERSION) != PYVISOR_VERSION ||
        pyvisor_load_u32(ctl, PYVISOR_OFF_HEADER_SIZE) != PYVISOR_HEADER_SIZE ||
        pyvisor_load_u32(ctl, PYVISOR_OFF_BLOCK_SIZE) != PYVISOR_BLOCK_SIZE ||
        memchr(sname, 0, PYVISOR_STATUS_NAME_SIZE) == NULL || strncmp(sname, name, nlen) != 0 ||
        sname[nlen] != '.') {
        munmap(ctl, PYVISOR_BLOCK_SIZE);
        errno = EINVAL;
        return -1;
    }
    void *status = pyvisor_map(sname, 1, PYVISOR_STATUS_SIZE);
    if (status == NULL) {
        int e = errno;
        munmap(ctl, PYVISOR_BLOCK_SIZE);
        errno = e;
        return -1;
    }
    b->ctl = ctl;
    b->status = status;
    b->seq = pyvisor_load_u32(status, PYVISOR_SOFF_ACK) >> 8;
    b->state = PYVISOR_ST_STARTING;
    pyvisor_store_u32(status, PYVISOR_SOFF_PID, (uint32_t)getpid());
    pyvisor_store_u64(status, PYVISOR_SOFF_START_TICKS, pyvisor_self_start_ticks());
    pyvisor_publish_ack(b);
    return 0;
}

static inline void pyvisor_set_state(struct pyvisor_block *b, uint32_t state)
{
    if (b->stop && state != PYVISOR_ST_EXITED)
        return; /* a stop, once seen, is never undone */
    b->state = state;
    pyvisor_publish_ack(b);
}

/* The hot path: one acquire load; a new seq is acknowledged (and a stop latched). */
static inline int pyvisor_should_stop(struct pyvisor_block *b)
{
    uint32_t w = pyvisor_load_u32(b->ctl, PYVISOR_OFF_CMD);
    if ((w >> 8) == b->seq)
        return b->stop;
    b->seq = w >> 8;
    uint32_t cmd = w & 0xff;
    if (cmd == PYVISOR_CMD_STOP_GRACEFUL) {
        b->stop_cmd = cmd;
        b->stop = 1;
        b->state = PYVISOR_ST_STOPPING;
    }
    pyvisor_publish_ack(b);
    return b->stop;
}

/* READY, as worker.Worker.ready(): publish the state, then send a best-effort "READY"
 * datagram to the daemon's notify socket ($PYVISOR_NOTIFY; "@name" is an abstract address),
 * so that the daemon learns it at once rather than after start_seconds. Never blocks. */
static inline void pyvisor_ready(struct pyvisor_block *b)
{
    pyvisor_set_state(b, PYVISOR_ST_READY);
    const char *path = getenv(PYVISOR_ENV_NOTIFY);
    struct sockaddr_un a;
    size_t n = path ? strlen(path) : 0;
    if (n == 0 || n >= sizeof a.sun_path)
        return;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, path, n);
    if (path[0] == '@')
        a.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    (void)sendto(fd, "READY", 5, 0, (struct sockaddr *)&a,
                 (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    close(fd);
}

/* Sleep until a stop is requested (a shared futex wait on the command word of the read-only
 * ctl page, no polling). Returns 1 (stop), or 0 when interrupted by a signal (EINTR). */
static inline int pyvisor_wait_for_stop(struct pyvisor_block *b)
{
    for (;;) {
        uint32_t w = pyvisor_load_u32(b->ctl, PYVISOR_OFF_CMD); /* before the check */
        if (pyvisor_should_stop(b))
            return 1;
        if (pyvisor_futex_wait(b->ctl, PYVISOR_OFF_CMD, w, NULL) != 0 && errno == EINTR)
            return 0;
    }
}

static inline void pyvisor_heartbeat(struct pyvisor_block *b)
{
    pyvisor_store_u64(b->status, PYVISOR_SOFF_HEARTBEAT, pyvisor_monotonic_ns());
}

static inline void pyvisor_add_work(struct pyvisor_block *b, uint64_t n)
{
    __atomic_fetch_add(PYVISOR_U64(b->status, PYVISOR_SOFF_WORK_DONE), n, __ATOMIC_SEQ_CST);
}

/* Exit record under the seqlock in the status page (status: exit code >= 0 or -signal). */
static inline void pyvisor_write_exit(void *status_page, int32_t status, uint32_t source)
{
    void *base = status_page;
    uint32_t s = pyvisor_load_u32(base, PYVISOR_SOFF_EXIT_SEQ);
    uint32_t odd = s + ((s & 1) ? 2 : 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    __atomic_exchange_n(PYVISOR_U32(base, PYVISOR_SOFF_EXIT_SEQ), odd, __ATOMIC_SEQ_CST);
    pyvisor_store_u32(base, PYVISOR_SOFF_EXIT_STATUS, (uint32_t)status);
    pyvisor_store_u64(base, PYVISOR_SOFF_EXIT_TIME,
                      (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
    pyvisor_store_u32(base, PYVISOR_SOFF_EXIT_SOURCE, source);
    pyvisor_store_u32(base, PYVISOR_SOFF_EXIT_SEQ, odd + 1);
}

/* Record the exit, publish EXITED, unmap both pages. */
static inline void pyvisor_close(struct pyvisor_block *b, int32_t status)
{
    if (!b->status)
        return;
    pyvisor_store_u64(b->status, PYVISOR_SOFF_BUSY_SINCE, 0);
    pyvisor_write_exit(b->status, status, PYVISOR_EXIT_SRC_WORKER);
    b->state = PYVISOR_ST_EXITED;
    pyvisor_publish_ack(b);
    munmap(b->status, PYVISOR_STATUS_SIZE);
    munmap(b->ctl, PYVISOR_BLOCK_SIZE);
    b->status = b->ctl = NULL;
}

/* ---- what the worker publishes beside its state: a status text and named metrics ------ */

/* Publish a short status text ("loading model 3/5"): at most PYVISOR_TEXT_SIZE bytes of
 * UTF-8 (a longer text is cut at a character boundary), under the text seqlock. NULL clears
 * it. One writer at a time: call it from one thread, or under a lock of your own. */
static inline void pyvisor_status(struct pyvisor_block *b, const char *text)
{
    if (!b->status)
        return;
    size_t n = text ? strlen(text) : 0;
    if (n > PYVISOR_TEXT_SIZE) {
        n = PYVISOR_TEXT_SIZE;
        while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80)
            n--; /* text[n] continues a character: cut before that character starts */
    }
    void *s = b->status;
    uint32_t seq = pyvisor_load_u32(s, PYVISOR_SOFF_TEXT_SEQ);
    uint32_t odd = seq + ((seq & 1) ? 2 : 1); /* odd already: a writer died mid-write */
    __atomic_exchange_n(PYVISOR_U32(s, PYVISOR_SOFF_TEXT_SEQ), odd, __ATOMIC_SEQ_CST);
    char *dst = (char *)s + PYVISOR_SOFF_TEXT;
    if (n)
        memcpy(dst, text, n);
    memset(dst + n, 0, PYVISOR_TEXT_SIZE - n);
    pyvisor_store_u32(s, PYVISOR_SOFF_TEXT_LEN, (uint32_t)n);
    pyvisor_store_u32(s, PYVISOR_SOFF_TEXT_SEQ, odd + 1);
}

/* A metric name: 1..PYVISOR_METRIC_NAME_SIZE of [A-Za-z0-9_], not starting with a digit (it
 * becomes part of a Prometheus series name, pyvisor_worker_<name>). */
static inline int pyvisor_metric_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > PYVISOR_METRIC_NAME_SIZE || (name[0] >= '0' && name[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
    }
    return 1;
}

/* The value of the named metric of this kind (PYVISOR_METRIC_COUNTER or _GAUGE): the slot
 * that has the name, else the first free one, claimed (name and a zero value first, the kind
 * byte last, release). NULL with errno EINVAL (bad name or kind), EEXIST (the name is the
 * other kind's), ENOSPC (all PYVISOR_METRIC_COUNT slots taken). Every pyvisor_counter_* /
 * pyvisor_gauge_* call takes NULL and does nothing, so a worker that ran out of slots keeps
 * working. Look metrics up once at start-up, from one thread: two claims at once could take
 * the same slot. Updating them is one atomic each, safe from any thread. */
static inline uint64_t *pyvisor_metric(struct pyvisor_block *b, const char *name, uint32_t kind)
{
    if (!b->status || !pyvisor_metric_name_ok(name) ||
        (kind != PYVISOR_METRIC_COUNTER && kind != PYVISOR_METRIC_GAUGE)) {
        errno = EINVAL;
        return NULL;
    }
    char want[PYVISOR_METRIC_NAME_SIZE] = {0};
    memcpy(want, name, strlen(name));
    uint8_t *kinds = (uint8_t *)b->status + PYVISOR_SOFF_METRIC_KINDS;
    int free_slot = -1;
    for (unsigned i = 0; i < PYVISOR_METRIC_COUNT; i++) {
        char *slot = (char *)b->status + PYVISOR_SOFF_METRICS + i * PYVISOR_METRIC_SIZE;
        uint8_t k = __atomic_load_n(&kinds[i], __ATOMIC_ACQUIRE);
        if (k == PYVISOR_METRIC_FREE) {
            if (free_slot < 0)
                free_slot = (int)i;
        } else if (memcmp(slot, want, sizeof want) == 0) {
            if (k == kind)
                return PYVISOR_U64(slot, PYVISOR_METRIC_NAME_SIZE);
            errno = EEXIST;
            return NULL;
        }
    }
    if (free_slot < 0) {
        errno = ENOSPC;
        return NULL;
    }
    char *slot =
        (char *)b->status + PYVISOR_SOFF_METRICS + (unsigned)free_slot * PYVISOR_METRIC_SIZE;
    memcpy(slot, want, sizeof want);
    pyvisor_store_u64(slot, PYVISOR_METRIC_NAME_SIZE, 0);
    __atomic_store_n(&kinds[free_slot], (uint8_t)kind, __ATOMIC_RELEASE);
    return PYVISOR_U64(slot, PYVISOR_METRIC_NAME_SIZE);
}

static inline uint64_t *pyvisor_counter(struct pyvisor_block *b, const char *name)
{
    return pyvisor_metric(b, name, PYVISOR_METRIC_COUNTER);
}
static inline uint64_t *pyvisor_gauge(struct pyvisor_block *b, const char *name)
{
    return pyvisor_metric(b, name, PYVISOR_METRIC_GAUGE);
}
static inline void pyvisor_counter_add(uint64_t *m, uint64_t n)
{
    if (m)
        __atomic_fetch_add(m, n, __ATOMIC_RELAXED);
}
static inline void pyvisor_gauge_set(uint64_t *m, int64_t v)
{
    if (m)
        __atomic_store_n(m, (uint64_t)v, __ATOMIC_RELAXED);
}
static inline void pyvisor_gauge_add(uint64_t *m, int64_t d)
{
    if (m)
        __atomic_fetch_add(m, (uint64_t)d, __ATOMIC_RELAXED);
}

#endif /* PYVISOR_CTLBLOCK_H */
