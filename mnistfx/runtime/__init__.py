"""Where mnistfx runs: the CPU (its model and vector features, read without torch) and the device (its
choice, how its memory is kept, and the record of what a measurement ran on).

The lowest layer beside :mod:`mnistfx.errors`, :mod:`mnistfx.constants` and :mod:`mnistfx.rng`: it may
import those and the internal helpers, nothing else of mnistfx.
"""
