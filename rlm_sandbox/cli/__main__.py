"""``python -m rlm_sandbox.cli``: the same command as the ``rlm-sandbox`` script."""

from rlm_sandbox.cli.main import main

main()
