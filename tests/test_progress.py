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


def test_silent_for_fast_steps_and_non_terminals():
    fast = Terminal()
    with elapsed("compiling", stream=fast, after=5):
        pass
    assert fast.getvalue() == ""
    pipe = io.StringIO()
    with elapsed("compiling", stream=pipe, after=0):
        time.sleep(0.2)
    assert pipe.getvalue() == ""
