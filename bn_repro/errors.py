"""Problems the user can fix, reported as one line and an exit code instead of a traceback.

    with reported():                 # the app's job function runs inside it
        raise ConfigError("optim.lr='abc': expected a number >= 0")
    # stderr: "error: optim.lr='abc': expected a number >= 0", exit code 2

Config mistakes say `<key>=<value>: <what is expected>` (bn_repro/schema.py, bn_repro/config.py); those
on the command line are caught before Hydra starts a job (bn_repro/cli.py).

HYDRA_FULL_ERROR=1 lets the exception through, with its traceback, as Hydra does for its own errors.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


class UserError(Exception):
    """A bad value, a damaged or busy run dir, a full disk: the message says what and what to do."""

    exit_code = 2


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn a UserError into `error: <message>` on stderr and SystemExit(exit_code)."""
    try:
        yield
    except UserError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(error.exit_code) from None
