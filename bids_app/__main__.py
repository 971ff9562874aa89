"""``python -m bids_app`` is the same as the ``eegfmri`` command."""

import sys

from bids_app.cli import main

if __name__ == "__main__":
    sys.exit(main())
