"""pyvisor's tests: a package, imported from the repository root (``tests.support...``)."""
