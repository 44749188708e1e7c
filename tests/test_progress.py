import io
import time

from wasmcache.progress import elapsed


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_shows_a_timer_on_a_terminal_for_slow_steps():
    stream = Terminal()
    with elapsed("compiling big.wasm", stream=stream, after=0.05):
        time.sleep(0.4)
    text = stream.getvalue()
    assert "\rcompiling big.wasm... " in text
    assert text.endswith(" s, done\n")


def test_silent_for_fast_steps():
    for stream in (Terminal(), io.StringIO()):
        with elapsed("compiling", stream=stream, after=5):
            pass
        assert stream.getvalue() == ""


def test_one_line_for_slow_steps_elsewhere():
    """A CI log gets one line, not a stream of carriage returns."""
    pipe = io.StringIO()
    with elapsed("compiling yosys.wasm (69 MiB)", stream=pipe, after=0.05):
        time.sleep(0.3)
    assert pipe.getvalue() == "compiling yosys.wasm (69 MiB), this can take a while\n"
