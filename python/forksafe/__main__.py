"""``python -m forksafe check|stress|doctor``: the tool lives in ``forksafe._cli``."""

import sys

from ._cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
