"""``python -m mnistfx``: the ``mnistfx`` command, for launchers that start modules (``torchrun -m mnistfx``).

The command line lives in ``mnistfx_cli``; the library never imports it.
"""

import sys

from mnistfx_cli.main import main

sys.exit(main())
