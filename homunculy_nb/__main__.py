"""Run the `homunculy-nb` command: `python -m homunculy_nb`."""

import sys

from homunculy_nb.cli import main

sys.exit(main())
