"""``python -m HyperSpaceSegmentationLib.cli ...``: the ``hyperspace`` command (the Slicer module runs it so)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
