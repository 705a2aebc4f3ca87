"""The ``mnistfx`` command (installed as the package ``mnistfx_cli``): it parses, calls the
library and prints. torch is imported only by the commands that need it."""
