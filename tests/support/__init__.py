"""What the tests share: the one deadline-bounded poll (wait), a real supervisord per test
(daemon), /dev/shm bookkeeping (shm) and Python child processes (child)."""
