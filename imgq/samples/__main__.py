"""``python -m imgq.samples``: see ``imgq.samples.command``."""

import sys

from imgq.samples.command import main

sys.exit(main())
