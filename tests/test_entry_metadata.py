"""An entry's metadata is untrusted text: one strict reader (UTF-8 only, nesting measured
by one linear scan before the parser runs) turns anything else into a corrupt entry, which
loads remove and the housekeeping commands report, never an exception of another kind.
And an entry records the key and engine it was saved under, so a renamed one never runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import wasmtime
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import wasmcache as wc
from conftest import ADD_WAT, call_add
from wasmcache import entry, schema
from wasmcache.entry import TRAILER, Corrupt
from wasmcache.hashing import DEFAULT_ALGORITHM


def default_key(data: bytes) -> wc.ModuleHash:
    return wc.ModuleHash.of(DEFAULT_ALGORITHM, data)


def utf16_nesting() -> bytes:
    """Metadata in UTF-16-LE whose brackets a byte scan of UTF-8 string syntax misses:
    U+5C41 is the bytes 41 5C, so the closing quote (22 00) after it looks escaped."""
    text = '{"x":"\u5c41","y":' + "[" * 15000 + "]" * 15000 + ',"z":1}'
    return text.encode("utf-16-le")


#: 64 KiB blocks that made a backtracking string pattern scan to the end from every quote.
SLOW_BLOCKS = {
    "escaped quotes, none closing": b"{" * 9 + b'"' + b'\\"' * 32760,
    "unterminated strings": b"{" * 9 + b'"\\' * 32760,
    "deep brackets": b"[" * entry.MAX_META,
}


def whole_entry(artifact: bytes, meta: bytes) -> bytes:
    """An entry in today's format with ``meta`` as its metadata and a right checksum."""
    payload = artifact + meta + len(meta).to_bytes(4, "little")
    return payload + TRAILER.pack(len(payload), xxhash.xxh3_64_intdigest(payload), entry.MAGIC)


@pytest.fixture
def planted(tmp_path, engine):
    """A cache holding a checksummed entry for add.wasm's key whose metadata is the
    UTF-16 block."""
    wasm = wasmtime.wat2wasm(ADD_WAT)
    cache = wc.FileSystemCache(tmp_path / "c")
    key = default_key(wasm)
    path = cache.path(key, engine)
    path.parent.mkdir(mode=0o700, parents=True)
    artifact = wasmtime.Module(engine, wasm).serialize()
    path.write_bytes(whole_entry(artifact, utf16_nesting()))
    return cache, key, path, wasm


def test_utf16_metadata_is_corrupt_not_a_recursion_error():
    with pytest.raises(Corrupt, match="damaged metadata"):
        entry.parse_info(utf16_nesting())
    with pytest.raises(schema.Invalid):
        schema.loads(utf16_nesting(), max_size=entry.MAX_META, max_depth=8)


def test_a_load_removes_the_utf16_entry(planted, engine):
    cache, key, path, wasm = planted
    with pytest.raises(wc.DeserializeError, match="damaged metadata"):
        cache.load(key, engine)
    assert not path.exists()
    assert call_add(engine, cache.load_or_compile(engine, wasm)) == 5  # compiled again
    assert path.exists()


def test_listing_and_verify_report_the_utf16_entry(planted, engine):
    cache, _, path, _ = planted
    (found,) = cache.entries()
    assert cache.describe(found) is None  # unknown description, no crash
    assert cache.summary()[found.engine_folder].entries == 1
    (bad,) = cache.verify_entries()
    assert bad[0].path == path and "damaged metadata" in bad[1]
    assert path.exists()
    cache.verify_entries(fix=True)
    assert not path.exists()


@pytest.mark.parametrize("command", [["ls"], ["stats"], ["verify"], ["verify", "--fix"]])
def test_the_command_reports_the_utf16_entry_without_a_traceback(planted, command):
    cache, _, path, _ = planted
    done = subprocess.run(
        [sys.executable, "-m", "wasmcache", "--cache-dir", str(cache.cache_dir), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), done.stderr
    if command == ["verify"]:
        assert done.returncode == 1 and path.name in done.stdout + done.stderr
    assert path.exists() == (command != ["verify", "--fix"])


@pytest.mark.parametrize("name", sorted(SLOW_BLOCKS))
def test_hostile_blocks_are_corrupt(name):
    with pytest.raises(Corrupt, match="damaged metadata"):
        entry.parse_info(SLOW_BLOCKS[name][: entry.MAX_META])


def test_hostile_blocks_cost_one_pass(tmp_path):
    """Each block ten times in a fresh process, well within a bound that a quadratic scan
    (23 to 31 s per block) could not meet."""
    script = textwrap.dedent(
        """
        import sys
        from wasmcache import entry
        sys.path.insert(0, sys.argv[1])
        from test_entry_metadata import SLOW_BLOCKS, utf16_nesting
        for raw in [*SLOW_BLOCKS.values(), utf16_nesting()] * 10:
            try:
                entry.parse_info(raw[: entry.MAX_META])
            except entry.Corrupt:
                pass
        print("done")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "done", done.stderr


def test_the_reader_is_strict():
    """UTF-8 only, no key twice, no NaN, a bounded depth."""
    good = json.loads(entry.seal(b"x", "module").tail[: -TRAILER.size - 4])
    for bad in (
        json.dumps(good).encode("utf-16"),
        json.dumps(good).encode("utf-32"),
        b'{"kind":"module","kind":"component"}',
        b'{"kind":"module","artifact_length":NaN}',
        b'{"a":' + b"[" * 9 + b"]" * 9 + b"}",
        b"\xef\xbb\xbf" + json.dumps(good).encode(),  # a byte order mark
    ):
        with pytest.raises(Corrupt):
            entry.parse_info(bad)
    assert entry.parse_info(json.dumps(good).encode()).kind == "module"


# -- what an entry records of its name ----------------------------------------------------


def test_seal_records_the_key_and_engine(engine):
    key = default_key(b"wasm")
    raw = entry.seal(b"artifact", "module", key=key, engine_id=wc.engine_id(engine)).tail
    meta = raw[: -TRAILER.size - 4]
    quick, general = entry.parse_info(meta), entry.parse_info_general(meta)
    assert quick == general
    assert (quick.key_algorithm, quick.key, quick.engine_id) == (
        key.algorithm, str(key), wc.engine_id(engine),
    )  # fmt: skip
    assert quick.names_other(key, wc.engine_id(engine)) is None
    assert "saved under key" in (quick.names_other(default_key(b"other"), "e") or "")
    assert "saved for engine" in (quick.names_other(key, "wasmtime-0-0") or "")


def test_metadata_without_a_name_stands_for_any():
    info = entry.parse_info(entry.seal(b"artifact", "module").tail[: -TRAILER.size - 4])
    assert (info.key, info.key_algorithm, info.engine_id) == (None, None, None)
    assert info.names_other(default_key(b"x"), "any") is None


@pytest.mark.parametrize(
    "fields",
    [
        {"key": "ABCDEF0123456789"},  # no algorithm
        {"key_algorithm": "sha256"},  # no key
        {"key": "abcdef0123456789", "key_algorithm": "sha256"},  # lowercase
        {"key": "ABC", "key_algorithm": "sha256"},
        {"key": "ABCDEF0123456789", "key_algorithm": "SHA-256"},
        {"engine_id": "../x"},
        {"engine_id": ""},
        {"engine_id": 5},
    ],
)
def test_a_bad_name_in_metadata_is_corrupt(fields):
    meta = json.loads(entry.seal(b"artifact", "module").tail[: -TRAILER.size - 4])
    meta.update(fields)
    with pytest.raises(Corrupt, match="damaged metadata"):
        entry.parse_info(json.dumps(meta).encode())


def test_seal_checks_its_name_arguments():
    with pytest.raises(TypeError):
        entry.seal(b"a", "module", key="ABCD")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        entry.seal(b"a", "module", engine_id="a/b")


def _swap(cache: wc.FileSystemCache, engine, a: wc.ModuleHash, b: wc.ModuleHash) -> Path:
    """Rename b's entry over a's name, as someone who can rename in the folder could."""
    cache.path(b, engine).replace(cache.path(a, engine))
    return cache.path(a, engine)


@pytest.fixture
def two(tmp_path, engine):
    """A cache holding add.wasm (5) and a variant that multiplies (6) under their keys."""
    cache = wc.FileSystemCache(tmp_path / "c")
    a = wasmtime.wat2wasm(ADD_WAT)
    b = wasmtime.wat2wasm(ADD_WAT.replace("i32.add", "i32.mul"))
    assert a != b
    for wasm in (a, b):
        cache.load_or_compile(engine, wasm)
    return cache, a, b


def test_an_entry_renamed_over_another_key_never_runs(two, engine):
    cache, a, b = two
    path = _swap(cache, engine, default_key(a), default_key(b))
    with pytest.raises(wc.DeserializeError, match="saved under key"):
        cache.load(default_key(a), engine)
    assert not path.exists()  # removed
    assert call_add(engine, cache.load_or_compile(engine, a)) == 5


def test_a_renamed_entry_is_named_by_verify(two, engine):
    cache, a, b = two
    path = _swap(cache, engine, default_key(a), default_key(b))
    (bad,) = cache.verify_entries(fix=True)
    assert bad[0].path == path and "saved under key" in bad[1]
    assert not path.exists()


def test_an_entry_moved_to_another_engine_never_runs(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    wasm = wasmtime.wat2wasm(ADD_WAT)
    cache.load_or_compile(engine, wasm)
    config = wasmtime.Config()
    config.cranelift_opt_level = "none"
    other = wasmtime.Engine(config)
    assert wc.engine_id(other) != wc.engine_id(engine)
    key = default_key(wasm)
    target = cache.path(key, other)
    target.parent.mkdir(mode=0o700)
    shutil.copyfile(cache.path(key, engine), target)
    with pytest.raises(wc.DeserializeError, match="saved for engine"):
        cache.load(key, other)
    assert not target.exists()


def test_receive_refuses_an_entry_of_another_key(two, engine):
    cache, a, b = two
    theirs = cache.path(default_key(b), engine).read_bytes()
    mine = cache.path(default_key(a), engine)
    before = mine.read_bytes()
    with pytest.raises(wc.DeserializeError, match="saved under key"):
        cache.receive(default_key(a), engine, [theirs])
    assert mine.read_bytes() == before  # nothing renamed into place
    assert sorted(p.name for p in mine.parent.iterdir()) == sorted(
        cache.path(default_key(w), engine).name for w in (a, b)
    )  # and no temp file left


def test_an_entry_written_before_names_were_recorded_still_loads(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    wasm = wasmtime.wat2wasm(ADD_WAT)
    key = default_key(wasm)
    path = cache.path(key, engine)
    path.parent.mkdir(mode=0o700, parents=True)
    artifact = wasmtime.Module(engine, wasm).serialize()
    meta = entry.seal(artifact, "module").tail[: -TRAILER.size - 4]
    assert b'"key"' not in meta
    path.write_bytes(whole_entry(artifact, meta))
    inode = path.stat().st_ino
    assert call_add(engine, cache.load(key, engine)) == 5
    cache.save(key, engine, wasmtime.Module(engine, wasm))
    assert path.stat().st_ino == inode  # the same artifact: kept as it is
    assert cache.verify_entries() == []


def test_an_identical_entry_is_kept_unless_it_names_another_key(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    wasm = wasmtime.wat2wasm(ADD_WAT)
    key, other = default_key(wasm), default_key(b"other")
    module = wasmtime.Module(engine, wasm)
    cache.save(key, engine, module)
    path = cache.path(key, engine)
    inode = path.stat().st_ino
    cache.save(key, engine, module)
    assert path.stat().st_ino == inode  # kept
    cache.save(other, engine, module)  # the same artifact under another key
    cache.path(other, engine).replace(path)
    renamed = path.stat().st_ino
    cache.save(key, engine, module)
    assert path.stat().st_ino != renamed  # replaced by an entry naming its key
    assert call_add(engine, cache.load(key, engine)) == 5


# -- the quick reader of seal's own form ----------------------------------------------------

_SOURCES = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.text(alphabet='ab"\\\x00\x1f\x7f\x80 ', max_size=12),
    st.integers(1020, 1030).map(lambda n: "s" * n),  # around the bound on a source
)
_VERSIONS = st.one_of(st.none(), st.just("50.0.1"), st.integers(60, 70).map(lambda n: "9" * n))
_NUMBERS = st.one_of(
    st.none(),
    st.integers(0, 1 << 64),
    st.floats(min_value=0.0, allow_nan=False),  # infinity included: out of range
    st.integers(-3, -1),
)


@given(
    source=_SOURCES,
    version=_VERSIONS,
    wasm_size=st.one_of(st.none(), st.integers(0, 1 << 64)),
    length=st.integers(0, 1 << 64),
    seconds=_NUMBERS,
    created=_NUMBERS,
    names=st.sampled_from(
        [{}, {"engine_id": "wasmtime-50-abc"}, {"key": "AB" * 32, "key_algorithm": "blake3"}]
    ),
)
def test_the_quick_reader_agrees_with_the_general_one(
    source, version, wasm_size, length, seconds, created, names
):
    """Metadata laid out as seal lays it out, with any values: the quick reader gives the
    general reader's Info (same values, same types) or leaves it to the general one."""
    meta = {
        "artifact_checksum": "0123456789abcdef", "artifact_length": length,
        "compile_seconds": seconds, "created": created, "kind": "module",
        "source": source, "wasm_size": wasm_size, "wasmtime": version, **names,
    }  # fmt: skip
    raw = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    quick = entry._canonical(raw)
    _readers_agree(raw)
    try:
        general = entry.parse_info_general(raw)
    except Corrupt:
        assert quick is None
        return
    if quick is not None:
        assert quick == general
        assert [type(v) for v in quick] == [type(v) for v in general]
    plain = source is None or (source.isascii() and source.isprintable() and '"' not in source)
    if plain and "\\" not in (source or "") and (version is None or len(version) <= 64):
        assert quick is not None  # seal's own form of in-range values: read quickly


_PATTERN = re.compile(entry._CANONICAL)


def _readers_agree(raw: bytes) -> None:
    """The hand reader (a process's first reads) groups exactly what the pattern does."""
    if raw.isascii():
        text = raw.decode("ascii")
        match = _PATTERN.fullmatch(text)
        by_hand = entry._groups_by_hand(text)
        numbers = () if match is None else match.groups()[2:4]
        if by_hand is None and any("E" in (n or "") for n in numbers):
            return  # an uppercase exponent (seal writes none) is left to the general reader
        assert by_hand == (None if match is None else match.groups())


_SEALED = json.dumps(
    {"artifact_checksum": "0123456789abcdef", "artifact_length": 123, "compile_seconds": 0.5,
     "created": 1.7e9, "engine_id": "wasmtime-50-x", "key": "AB" * 32, "key_algorithm": "blake3",
     "kind": "module", "source": "m.wasm", "wasm_size": 77, "wasmtime": "50.0.1"},
    sort_keys=True, separators=(",", ":"),
)  # fmt: skip
_PIECES = ['"', ",", ":", "{", "}", "\\", "null", "0", "01", "1e5", "1E5", "1.", ".5", "-", "+",
           "\x7f", "\x1f", "g", "Z", " ", ',"x":1', "é"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(at=st.integers(0, len(_SEALED)), cut=st.integers(0, 3), piece=st.sampled_from(_PIECES))
def test_the_hand_reader_and_the_pattern_agree_on_damaged_metadata(at, cut, piece):
    """seal's form with a few characters replaced anywhere: the two quick readers agree,
    and whatever they accept, the general reader reads to the same Info."""
    raw = (_SEALED[:at] + piece + _SEALED[at + cut :]).encode()
    _readers_agree(raw)
    groups = entry._groups_by_hand(raw.decode("ascii")) if raw.isascii() else None
    if groups is not None:
        info = entry._info_of(groups)
        if info is not None:
            assert info == entry.parse_info_general(raw)


def _edge_values() -> list[str]:
    """Values at every edge of the pattern's parts: numbers with each length bound met and
    passed, leading zeros, every exponent form; quoted strings of each bound's length in
    characters inside and just outside each alphabet; nulls, bare and half-quoted words."""
    numbers = [
        whole + ("" if fraction is None else "." + fraction) + exponent
        for whole in ("", "0", "1", "00", "01", "9" * 19, "9" * 20, "9" * 21)
        for fraction in (None, "", "0", "5" * 20, "5" * 21)
        for exponent in (
            "",
            "e",
            "e5",
            "e+5",
            "e-5",
            "e555",
            "e5555",
            "e+555",
            "e-5555",
            "E5",
            "e_5",
            "e+-5",
        )
    ]
    lengths = (0, 1, 15, 16, 17, 64, 65, 127, 128, 129, 254, 255, 256, 1024, 1025)
    chars = "09afgAFGZz._- \x7f\x1f\\:,"
    strings = [f'"{c * n}"' for c in chars for n in lengths]
    strings += [f'"a{c}b"' for c in chars]
    words = ["null", '"null"', '""', '"', '"abc', 'abc"', "module", '"module"', '"component"',
             '"modules"', '"Module"', "-1", "+1", "1_0", "true"]  # fmt: skip
    return numbers + strings + words


@pytest.mark.parametrize("layout", sorted(entry._LAYOUTS), ids=len)
def test_the_hand_reader_and_the_pattern_agree_at_every_edge(layout):
    """Each field of each layout of seal's form given each edge value in turn (and each
    field named twice): the hand reader groups exactly what the pattern does."""
    base = json.loads(_SEALED)
    values = {name: json.dumps(base[name]) for name in layout}
    edges = _edge_values()
    for name in layout:
        for value in edges:
            fields = [(n, value if n == name else values[n]) for n in layout]
            _readers_agree(("{" + ",".join(f'"{n}":{v}' for n, v in fields) + "}").encode())
        twice = [(n, values[n]) for n in layout] + [(name, values[name])]
        _readers_agree(("{" + ",".join(f'"{n}":{v}' for n, v in twice) + "}").encode())


def test_the_first_reads_are_by_hand_and_later_ones_by_the_pattern(monkeypatch):
    """A start that reads a few entries never compiles the pattern; a listing does."""
    monkeypatch.setattr(entry, "_canonical_pattern", None)
    monkeypatch.setattr(entry, "_by_hand_left", 3)
    raw = _SEALED.encode()
    for _ in range(3):
        assert entry._canonical(raw) == entry.parse_info_general(raw)
        assert entry._canonical_pattern is None
    assert entry._canonical(raw) == entry.parse_info_general(raw)
    assert entry._canonical_pattern is not None


def test_describe_reads_long_metadata_as_read_info_does(tmp_path):
    """Metadata longer than the first read of an entry's end is read whole."""
    for name in ("m.wasm", "x" * 1000):
        sealed = entry.seal(b"\x7fELF" + bytes(100), "module", wc.Origin(name, 5, 0.5))
        path = tmp_path / "e.bin"
        path.write_bytes(b"\x7fELF" + bytes(100) + sealed.tail)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            assert entry.describe(fd, size) == entry.read_info(fd, size)
            assert entry.describe(fd, size).source == name
        finally:
            os.close(fd)
