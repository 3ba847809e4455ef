"""``python -m supervisor.config``: check config files (one line each on stdout: OK with the
counts; a bad file's ConfigError lines on stderr and exit status 1), or print the JSON Schema
with ``--schema`` (committed as configs/pyvisor.schema.json). No arguments: usage, status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from supervisor.config.errors import ConfigError
from supervisor.config.load import json_schema, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor.config",
                                     description="Check a pyvisor config, or print its schema.")
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema")
    parser.add_argument("files", nargs="*", metavar="FILE", help="config files to check")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    status = 0
    for file in args.files:
        try:
            config = load_config(file)
        except ConfigError as e:
            print(e, file=sys.stderr)
            status = 1
        else:
            n, m = len(config.workers), len(config.instances())
            print(f"{file}: OK ({n} worker{'s' * (n != 1)}, {m} instance{'s' * (m != 1)})")
    if not args.schema and not args.files:
        parser.print_usage(sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
