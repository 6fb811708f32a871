/*
 * fini_mark: a test plugin that registers no hook and, in its fini, appends
 * one line "fini ROLE SHARD" to the file named by its arg, so a test can
 * tell that a process ran its plugins' fini when it stopped (the plugin
 * ABI promises fini at exit). Used by test_logfirst.py.
 */
#include "kvs_plugin.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct mark_s {
    char path[4096];
    char line[64];
} mark_t;

static int mark_init(const kvs_plugin_host_t *host, void **state)
{
    mark_t *m = calloc(1, sizeof(*m));
    if (m == NULL || host->arg[0] == '\0') {
        free(m);
        snprintf(host->error, host->error_len, "fini_mark needs a file as its arg");
        return -1;
    }
    snprintf(m->path, sizeof(m->path), "%s", host->arg);
    snprintf(m->line, sizeof(m->line), "fini %s %d\n", host->role, (int)host->shard);
    *state = m;
    return 0;
}

static void mark_fini(void *state)
{
    mark_t *m = state;
    int fd = open(m->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        ssize_t w = write(fd, m->line, strlen(m->line)); /* a short line: whole or not at all */
        (void)w;                                         /* the test sees a missing line */
        close(fd);
    }
    free(m);
}

KVS_PLUGIN_EXPORT const kvs_plugin_t kvs_plugin = {
    .struct_size = sizeof(kvs_plugin_t),
    .abi_version = KVS_PLUGIN_ABI_VERSION,
    .name = "fini_mark",
    .init = mark_init,
    .fini = mark_fini,
};
