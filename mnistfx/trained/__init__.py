"""What uses a trained model: its weights read and checked with their model, reading numbers of
several digits from a photo, the drawing page's server, export to other runtimes, and plots.

May import every layer below it (:mod:`mnistfx.training`, :mod:`mnistfx.models`, :mod:`mnistfx.data`,
the lowest layer). Nothing below imports it.
"""
