"""``python -m gateway`` is ``store-gateway``."""

import sys

from gateway.cli import main

sys.exit(main())
