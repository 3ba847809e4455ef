/* Bench helper: report "pid CLOCK_MONOTONIC-ns\n" to the FIFO argv[1] at once, then sleep
 * until a signal ends the process (SIGTERM/SIGKILL default actions). No argv[1]: just sleep. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc > 1) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, "%d %lld\n", (int)getpid(),
                         (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        int fd = open(argv[1], O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
            (void)!write(fd, buf, (size_t)n);
            close(fd);
        }
    }
    for (;;)
        pause();
}
