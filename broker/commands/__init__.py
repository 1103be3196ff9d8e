"""Click commands beyond the core, one module per area. Each module decorates commands onto
`broker.cli.cli`; cli.py imports them at its end. Click declarations only: logic lives in the
service modules of the package."""

# Modules imported by broker/cli.py, in the order their commands appear in `broker --help`.
COMMAND_MODULES: list[str] = ["key", "run", "leases", "ledger"]
