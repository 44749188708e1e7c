# Cross-compiling the extension for Windows x86_64 on a Linux machine with mingw-w64.
#
# The compiler is Debian's x86_64-w64-mingw32-gcc (package mingw-w64). Windows CPython's
# headers and an import library for python3.dll (the stable ABI's DLL) are laid out in a
# folder named by the environment variable WASMCACHE_WIN_PYTHON, as a Windows installation
# lays them out:
#   include/          CPython's Include/ plus PC/pyconfig.h (Windows' own configuration)
#   libs/libpython3.dll.a   made by dlltool from the export list in PC/python3dll.c
# tools/wheels/windows.sh builds that folder and the wheel. The build's Python (running
# scikit-build-core and cffi's generator) stays the host's: it only runs on the build
# machine. The extension uses the stable ABI, so one set of headers serves CPython 3.9 on.
#
#   WASMCACHE_WIN_PYTHON=/path/to/folder pip wheel --no-build-isolation \
#     -C cmake.args=-DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-mingw64.cmake \
#     -C wheel.tags=cp39-abi3-win_amd64 .

set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR AMD64)
set(CMAKE_C_COMPILER x86_64-w64-mingw32-gcc)
set(CMAKE_RC_COMPILER x86_64-w64-mingw32-windres)

set(_wmc_python "$ENV{WASMCACHE_WIN_PYTHON}")
if(NOT _wmc_python)
  message(FATAL_ERROR "set WASMCACHE_WIN_PYTHON to the folder holding Windows CPython's "
                      "include/ and libs/libpython3.dll.a")
endif()
set(_wmc_include "${_wmc_python}/include")
set(_wmc_library "${_wmc_python}/libs/libpython3.dll.a")
if(NOT EXISTS "${_wmc_include}/Python.h" OR NOT EXISTS "${_wmc_include}/pyconfig.h"
   OR NOT EXISTS "${_wmc_library}")
  message(FATAL_ERROR "no Windows Python headers or import library under ${_wmc_python}")
endif()

# FindPython takes these as given instead of asking the (host) interpreter.
set(Python_INCLUDE_DIR "${_wmc_include}" CACHE PATH "Windows Python headers" FORCE)
set(Python_SABI_LIBRARY "${_wmc_library}" CACHE FILEPATH "python3.dll import library" FORCE)


# Programs (the interpreter, cffi's generator) run from the host; nothing else is searched.
set(CMAKE_FIND_ROOT_PATH "${_wmc_python}" /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
