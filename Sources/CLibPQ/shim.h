#ifndef PGDBMIGRATOR_CLIBPQ_SHIM_H
#define PGDBMIGRATOR_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#include <dlfcn.h>
#include <stdint.h>

/// OpenSSL frees its locks in an atexit handler. libpq hashes SCRAM passwords
/// (and speaks TLS) through OpenSSL, so a thread still connecting when the
/// process exits would take those freed locks and crash the exit (SIGSEGV
/// instead of the exit code meant). Called before libpq first uses OpenSSL,
/// this asks it not to register that handler (OPENSSL_INIT_NO_ATEXIT). Looked
/// up at run time among the libraries already loaded: no build dependency on
/// OpenSSL, and nothing happens where libpq is built without it.
static inline void pgdm_keep_openssl_until_exit(void) {
    void *process = dlopen(NULL, RTLD_NOW);
    if (process == NULL) return;
    int (*init_crypto)(uint64_t, const void *) =
        (int (*)(uint64_t, const void *))dlsym(process, "OPENSSL_init_crypto");
    if (init_crypto != NULL) (void)init_crypto(UINT64_C(0x00080000), NULL);
    dlclose(process);
}
#endif
