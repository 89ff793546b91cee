"""Errors a user can fix, and how every entry script ends: one clear line and exit status 2 for bad input,
status 130 on Ctrl-C."""
import sys

from logs import logger


class UserError(Exception):
    """Bad input from the user: reported as one line naming the file or value, exit status 2."""


def run_main(main):
    """Run a step's ``main``: a UserError ends in one clear line and exit status 2, Ctrl-C in status 130."""
    try:
        main()
    except UserError as e:
        if logger.handlers:
            logger.error("%s", e)
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
