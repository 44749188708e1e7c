"""The package's logger imports :mod:`logging` only when a message may be shown, and then
says exactly what ``logging.getLogger("wasmcache")`` would: same records, the caller's
line, the command line's format at its first message."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import wasmtime

from conftest import open_to_everyone
from wasmcache.logs import log


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (nothing imported yet but what it imports)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_debug_and_info_before_logging_is_imported_import_nothing():
    done = _python(
        """
        import sys
        from wasmcache.logs import log
        log.debug("hit %s", 1)
        log.info("note")
        assert "logging" not in sys.modules
        print("ok")
        """
    )
    assert done.stdout == "ok\n" and done.stderr == ""


def test_a_warning_without_configuration_is_logging_s_own():
    """No handler anywhere: logging's last resort prints the message alone, as before."""
    done = _python(
        """
        from wasmcache.logs import log
        log.warning("could not cache %s", "it")
        """
    )
    assert done.stderr == "could not cache it\n"


def test_records_name_the_caller(caplog):
    def caller() -> None:
        log.warning("w %d", 1)
        log.debug("d")
        log.error("e")

    with caplog.at_level(logging.DEBUG, logger="wasmcache"):
        caller()
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("wasmcache", "WARNING", "w 1"),
        ("wasmcache", "DEBUG", "d"),
        ("wasmcache", "ERROR", "e"),
    ]
    assert {r.funcName for r in caplog.records} == {"caller"}
    assert {r.pathname for r in caplog.records} == {__file__}


def test_a_debug_message_is_dropped_below_the_level(caplog):
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        log.debug("not shown")
        log.info("not shown")
    assert caplog.records == []


def test_exception_keeps_the_traceback(caplog):
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("housekeeping failed")
    (record,) = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert record.exc_info[0] is ValueError


def test_the_command_format_waits_for_the_first_warning():
    done = _python(
        """
        import sys
        from wasmcache import logs
        from wasmcache.logs import log
        logs.configure(logs.WARNING)
        log.debug("not shown")
        assert "logging" not in sys.modules
        log.warning("compiled %s but could not cache it", "K")
        log.debug("still not shown")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "wasmcache: WARNING: compiled K but could not cache it\n"


def test_debug_configuration_applies_at_once():
    done = _python(
        """
        import sys
        from wasmcache import logs
        from wasmcache.logs import log
        logs.configure(logs.DEBUG)
        assert "logging" in sys.modules
        log.debug("hit %s", "K")
        """
    )
    assert done.stderr == "wasmcache: DEBUG: hit K\n"


def test_configuration_applies_at_once_when_logging_is_imported():
    """Someone imported logging already: its records get the command's handler now, as
    ``basicConfig`` at the start of the command gave them."""
    done = _python(
        """
        import logging
        from wasmcache import logs
        logs.configure(logs.WARNING)
        logging.getLogger("other").warning("theirs")
        """
    )
    assert done.stderr == "wasmcache: WARNING: theirs\n"


def _hello(tmp_path):
    path = tmp_path / "hello.wasm"
    path.write_bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
    return path


def test_the_command_shows_warnings_and_debug_lines_in_its_format(tmp_path):
    """A cache folder others can write: `run` warns (the command's format) and runs."""
    hello = _hello(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    open_to_everyone(cache)
    env = {**os.environ, "WASMCACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "wasmcache", "run", str(hello)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("wasmcache: WARNING: not using the cache, compiling without")
    env["WASMCACHE_DIR"] = str(tmp_path / "private")
    verbose = [sys.executable, "-m", "wasmcache", "-v", "run", str(hello)]
    for _ in range(2):  # the second run is a hit
        done = subprocess.run(verbose, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
    assert "wasmcache: DEBUG: hit " in done.stderr


def test_no_message_overtakes_the_configuration():
    """Two threads' first messages at once: the second waits while the first applies the
    command's format (a slow ``basicConfig`` widens the window)."""
    done = _python(
        """
        import logging, threading, time
        from wasmcache import logs
        from wasmcache.logs import log
        real = logging.basicConfig
        def slow(**kwargs):
            time.sleep(0.3)
            real(**kwargs)
        logging.basicConfig = slow
        logs._pending = {"level": logs.WARNING, "format": logs.COMMAND_FORMAT}
        first = threading.Thread(target=log.warning, args=("first",))
        first.start()
        time.sleep(0.1)
        second = threading.Thread(target=log.warning, args=("second",))
        second.start()
        first.join()
        second.join()
        """
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stderr.splitlines()) == [
        "wasmcache: WARNING: first",
        "wasmcache: WARNING: second",
    ]
