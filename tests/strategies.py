"""Until every test imports :mod:`gcref.testing.strategies` itself: its names, one source."""

from gcref.testing.strategies import *
from gcref.testing.strategies import __all__  # noqa: F401
