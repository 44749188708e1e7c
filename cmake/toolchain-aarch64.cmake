# Cross-compiling the extension for Linux aarch64 on an x86_64 Debian machine.
#
# The compiler and C library are Debian's cross toolchain (gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross). The Python headers come from an arm64 Python unpacked into a
# folder (libpython3.11-dev:arm64 extracted with dpkg-deb -x), named by the environment
# variable WASMCACHE_AARCH64_SYSROOT. The build's Python (the one running scikit-build-core
# and cffi's generator) stays the host's: it only runs on the build machine. The extension
# uses the stable ABI, so the 3.11 headers serve every CPython from 3.9 on.
#
#   WASMCACHE_AARCH64_SYSROOT=/path/to/sysroot pip wheel \
#     -C cmake.args=-DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64.cmake \
#     -C wheel.tags=cp39-abi3-linux_aarch64 .

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)

set(_wmc_sysroot "$ENV{WASMCACHE_AARCH64_SYSROOT}")
if(NOT _wmc_sysroot)
  message(FATAL_ERROR "set WASMCACHE_AARCH64_SYSROOT to the folder holding the arm64 Python")
endif()
# Debian splits the headers: the portable ones in include/python3.11, pyconfig.h (which
# differs per architecture) in include/aarch64-linux-gnu/python3.11.
set(_wmc_include "${_wmc_sysroot}/usr/include/python3.11")
set(_wmc_pyconfig "${_wmc_sysroot}/usr/include/aarch64-linux-gnu/python3.11/pyconfig.h")
if(NOT EXISTS "${_wmc_include}/Python.h" OR NOT EXISTS "${_wmc_pyconfig}")
  message(FATAL_ERROR "no arm64 Python headers under ${_wmc_sysroot}")
endif()

# FindPython takes these as given instead of asking the (host) interpreter.
set(Python_INCLUDE_DIR "${_wmc_include}" CACHE PATH "arm64 Python headers" FORCE)
# Debian's include/python3.11/pyconfig.h includes <aarch64-linux-gnu/python3.11/pyconfig.h>
# when __aarch64__ is defined; its root is the sysroot's include folder, searched after the
# cross C library's own headers so that those are the ones used.
set(CMAKE_C_FLAGS_INIT "-idirafter ${_wmc_sysroot}/usr/include")

# Programs (the interpreter, cffi's generator) run from the host; nothing else is searched.
set(CMAKE_FIND_ROOT_PATH "${_wmc_sysroot}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
