"""``python -m elastic_kernels`` is the ``elastic-kernels`` command."""

import sys

from .cli import main

sys.exit(main())
