"""The package's logger, ``logging.getLogger("wasmcache")``, with :mod:`logging` imported
only when a message is emitted: importing it (and what it imports) costs milliseconds at
every start of the command, whose usual run says nothing.

A debug or info message met while :mod:`logging` is not imported yet is dropped without
importing it: nothing can have set a level or a handler that shows it (a logger's
default threshold is WARNING). Every other message goes to the logger as if it had been
emitted there, at the caller's line (``stacklevel``).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import logging

#: The logger every module of the package writes to.
NAME = "wasmcache"
#: :mod:`logging`'s levels (fixed numbers, so that comparing them imports nothing).
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
#: The command line's format.
COMMAND_FORMAT = "wasmcache: %(levelname)s: %(message)s"

#: ``logging.basicConfig`` arguments waiting for :mod:`logging` to be imported.
_pending: Optional[dict[str, Any]] = None
#: Held while a configuration is taken and applied: no message overtakes it.
_lock = threading.Lock()


def configure(level: int, fmt: str = COMMAND_FORMAT) -> None:
    """``logging.basicConfig(level=level, format=fmt)``, done at once when :mod:`logging`
    is imported already or ``level`` asks for debug or info messages, else when the
    first message is emitted (the same output as doing it now: until then nothing is
    logged)."""
    global _pending
    with _lock:
        _pending = {"level": level, "format": fmt}
    if level < WARNING or "logging" in sys.modules:
        logger()


def logger() -> logging.Logger:
    """The package's logger (:mod:`logging` imported, a pending configuration applied)."""
    global _pending
    import logging

    with _lock:
        pending, _pending = _pending, None
        if pending is not None:
            logging.basicConfig(**pending)
    return logging.getLogger(NAME)


def _emit(level: int, msg: str, args: tuple[object, ...], kwargs: dict[str, Any]) -> None:
    found = logger()
    if found.isEnabledFor(level):
        # The caller of the method below is the one the record names.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 2
        found.log(level, msg, *args, **kwargs)


class Log:
    """The methods of ``logging.Logger`` that the package uses, importing nothing until a
    message may be shown."""

    __slots__ = ()

    def debug(self, msg: str, *args: object, **kwargs: Any) -> None:
        if "logging" in sys.modules:
            _emit(DEBUG, msg, args, kwargs)

    def info(self, msg: str, *args: object, **kwargs: Any) -> None:
        if "logging" in sys.modules:
            _emit(INFO, msg, args, kwargs)

    def warning(self, msg: str, *args: object, **kwargs: Any) -> None:
        _emit(WARNING, msg, args, kwargs)

    def error(self, msg: str, *args: object, **kwargs: Any) -> None:
        _emit(ERROR, msg, args, kwargs)

    def exception(self, msg: str, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        """An error with the exception being handled, as ``Logger.exception``."""
        _emit(ERROR, msg, args, {**kwargs, "exc_info": exc_info})


#: What the package's modules log through.
log = Log()
