/* Bench worker in C, the cooperative worker with no interpreter to start or tear down.
 * Under pyvisor ($PYVISOR_BLOCK set): attach, report READY, sleep on the command word until a
 * stop (futex, no polling), record the exit, exit 0 -- worker/ctlblock.h's documented loop.
 * Elsewhere (supervisord): block SIGTERM/SIGINT and sigwait, exit 0. */
#include <signal.h>

#include "ctlblock.h"

int main(void)
{
    const char *name = getenv("PYVISOR_BLOCK");
    if (name) {
        struct pyvisor_block b;
        if (pyvisor_attach(name, &b) != 0) {
            perror("pyvisor_attach");
            return 1;
        }
        pyvisor_ready(&b);
        while (!pyvisor_wait_for_stop(&b))
            ; /* EINTR: no handlers here, wait again */
        pyvisor_close(&b, 0);
        return 0;
    }
    sigset_t set;
    int sig;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sigwait(&set, &sig);
    return 0;
}
