#ifndef PGDBMIGRATOR_CLIBPQ_SHIM_H
#define PGDBMIGRATOR_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
