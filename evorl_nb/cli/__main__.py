"""``python -m evorl_nb.cli``: the ``evorl-nb`` command without its installed script (the
tests and bench/bench_cli.py run it this way)."""

import sys

from evorl_nb.cli import main

if __name__ == "__main__":  # not when a tool imports the module (e.g. the doctest sweep)
    sys.exit(main())
