"""The shared kernel: what every domain of the project uses and that imports nothing of it.

- ``errors``: the error types every command maps to one line and an exit code;
- ``durations``: ``5m``/``1h``/``14d`` strings to seconds;
- ``redact``: secrets out of anything that is logged, printed, exported or audited;
- ``logs``: JSON logging, redacted;
- ``clikit``: the options, output formats and exit handling every CLI command shares.

The import-linter contracts in ``pyproject.toml`` check that nothing here imports a domain.
"""
