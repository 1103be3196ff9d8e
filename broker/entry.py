"""The console script: try the cache hit first (standard library only), then the full CLI."""

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if "credential-process" in args:
        from broker import fastpath

        code = fastpath.serve(args)
        if code is not None:
            sys.exit(code)
    from broker.cli import run

    sys.exit(run(args))
