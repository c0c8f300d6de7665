"""`python -m peftlab.cli …`, the same as the `peftlab` script."""

import sys

from peftlab.cli.main import main

sys.exit(main())
