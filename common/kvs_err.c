/*
 * kvs_err: error code to text. The KVS_E* codes are generated from the one
 * X-macro table in kvs_err.h, so a new code cannot be added without its
 * message. Anything else is taken as -errno (the convention libuv shares).
 */
#include "kvs_err.h"

#include <string.h>

const char *kvs_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define KVS_ERR_CASE(name, value, msg)                                                             \
    case name:                                                                                     \
        return msg;
        KVS_ERRNO_MAP(KVS_ERR_CASE)
#undef KVS_ERR_CASE
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}
