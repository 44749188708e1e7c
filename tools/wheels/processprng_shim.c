/* bcryptprimitives.dll for Wine 8, which lacks ProcessPrng: the one function wasmtime's
 * Rust standard library imports from it, answered from RtlGenRandom (SystemFunction036 in
 * advapi32), which Wine implements on top of the host's random source. Windows has the
 * real DLL; this one exists only to run tests under Wine.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll processprng_shim.c \
 *        processprng_shim.def -ladvapi32   (the .def is written by wine_python.sh)
 */
#include <windows.h>

/* RtlGenRandom takes a ULONG length: longer requests are served in pieces. */
typedef BOOLEAN(WINAPI *gen_random_fn)(PVOID, ULONG);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    static gen_random_fn gen_random;
    if (gen_random == NULL) {
        HMODULE advapi = LoadLibraryW(L"advapi32.dll");
        if (advapi == NULL) return FALSE;
        gen_random = (gen_random_fn)(void *)GetProcAddress(advapi, "SystemFunction036");
        if (gen_random == NULL) return FALSE;
    }
    while (length > 0) {
        ULONG piece = length > 0x40000000u ? 0x40000000u : (ULONG)length;
        if (!gen_random(data, piece)) return FALSE;
        data += piece;
        length -= piece;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}
