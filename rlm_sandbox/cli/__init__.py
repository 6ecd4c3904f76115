"""The ``rlm-sandbox`` command: one module per command, imported only when that command runs."""
