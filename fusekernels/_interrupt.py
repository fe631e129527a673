"""Ctrl-C that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when it runs the
SIGINT handler. When that is inside a finaliser (``__del__``, a weakref callback, a generator
being closed — progress bars, Arrow writers and temporary files run them during every dataset
write), the exception is *unraisable*: Python prints "Exception ignored in ..." and carries on,
and the command finishes as if nothing happened. :func:`install` (called by the command line)
replaces the handler with one that also records the signal; :func:`check_interrupted`, called at
the pipeline's safe points (every extraction batch and shard, every map batch and cached map,
the end of a command), raises ``KeyboardInterrupt`` again when a recorded interrupt was
swallowed. Without :func:`install` (library use) the check does nothing.
"""
from __future__ import annotations

import signal
import threading

_pending = False
_installed = False


def _handler(signum, frame):
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Record every SIGINT (main thread only; keeps a handler someone else installed)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)
        _installed = True


def uninstall() -> None:
    """Restore Python's default handler and forget a recorded interrupt."""
    global _installed, _pending
    if _installed and signal.getsignal(signal.SIGINT) is _handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _installed = _pending = False


def interrupted() -> bool:
    """Whether a SIGINT arrived since :func:`install`."""
    return _pending


def check_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` when a SIGINT arrived (even one whose exception was swallowed)."""
    if _pending:
        raise KeyboardInterrupt
