/*
 * kvs_plugins: dlopen the plugins of config.yaml and keep what they
 * register.
 *
 * Each entry is loaded with RTLD_NOW | RTLD_LOCAL: every symbol is resolved
 * at load (a plugin missing one is refused at start, not when a hook first
 * runs), and plugins do not see each other's symbols. A path without a '/'
 * is taken relative to the working directory ("./name"), never searched
 * for in the system's library directories, so the file that runs is the
 * file the config names.
 *
 * Checks, in order, each with a message naming the entry's line in
 * config.yaml: the file loads; it exports KVS_PLUGIN_SYMBOL; its
 * abi_version is ours (the only compatibility promise; struct_size must be
 * at least what ABI version 1 defined, so every field we read exists); its
 * init returns 0. Hooks registered by init go to a list kept here (not
 * straight into a chain), so kvs_plugins_attach can add them to a chain
 * rebuilt at any time.
 *
 * Lifetime: plugins stay loaded until kvs_plugins_free (at exit), which
 * calls each fini in reverse load order, then dlclose.
 */
#include "kvs_plugins.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PLUGIN_V1_SIZE (offsetof(kvs_plugin_t, fini) + sizeof(void (*)(void *)))

typedef struct reg_s {
    unsigned events;
    kvs_hook_fn fn;
    void *state;
} reg_t;

typedef struct loaded_s {
    int fd; /* the file loaded, open while it is: see open_one */
    void *dl;
    const kvs_plugin_t *plugin;
    void *state;
    int inited;
} loaded_t;

struct kvs_plugins_s {
    loaded_t *loaded;
    size_t n_loaded;
    reg_t regs[KVS_HOOK_EVENTS * KVS_HOOK_MAX];
    size_t n_regs;
    unsigned per_event[KVS_HOOK_EVENTS];
};

static void host_log(int level, const char *fmt, ...)
{
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (level < KVS_LOG_DEBUG)
        level = KVS_LOG_DEBUG;
    if (level > KVS_LOG_ERROR)
        level = KVS_LOG_ERROR;
    kvs_log((kvs_log_level_t)level, "%s", text);
}

/* host->add_hook: recorded, counted against the chain's room per event. */
static int host_add_hook(const kvs_plugin_host_t *host, unsigned events, kvs_hook_fn fn,
                         void *state)
{
    kvs_plugins_t *p = host->host_data;
    if ((events & KVS_HOOK_ALL) == 0 || fn == NULL ||
        p->n_regs == sizeof(p->regs) / sizeof(p->regs[0]))
        return -1;
    /* Leave room for the built-in hooks (metrics, slow log) on every event. */
    for (unsigned ev = 0; ev < KVS_HOOK_EVENTS; ev++)
        if ((events & KVS_HOOK_MASK(ev)) && p->per_event[ev] + 2 >= KVS_HOOK_MAX)
            return -1;
    for (unsigned ev = 0; ev < KVS_HOOK_EVENTS; ev++)
        if (events & KVS_HOOK_MASK(ev))
            p->per_event[ev]++;
    p->regs[p->n_regs++] = (reg_t){events & KVS_HOOK_ALL, fn, state};
    return 0;
}

__attribute__((format(printf, 3, 4))) static int plugin_error(char *err, size_t errlen,
                                                              const char *fmt, ...)
{
    if (errlen == 0)
        return KVS_ECONFIG;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return KVS_ECONFIG;
}

/* Whoever may write a directory on the way to the plugin may put another
 * file in its place: one every user may write (without the sticky bit,
 * which keeps others' entries theirs) is refused, one its group may write
 * is said. `dir` is a resolved path (no symbolic links); each of its
 * ancestors is checked up to "/". */
static int check_dirs(const char *dir, const char *where, const char *name, char *err,
                      size_t errlen)
{
    char d[4200];
    snprintf(d, sizeof(d), "%s", dir);
    for (;;) {
        struct stat st;
        if (stat(d[0] ? d : "/", &st) == 0 && !(st.st_mode & S_ISVTX)) {
            if (st.st_mode & S_IWOTH)
                return plugin_error(err, errlen,
                                    "%s: %s is in %s, a directory every user may write to (mode "
                                    "%04o): any of them could put their code in its place; chmod "
                                    "o-w it, or add the sticky bit",
                                    where, name, d[0] ? d : "/", (unsigned)(st.st_mode & 07777));
            if (st.st_mode & S_IWGRP)
                kvs_warn("%s: %s is in %s, a directory its group may write to (mode %04o), whose "
                         "members may put other code in its place; chmod g-w it unless that is "
                         "meant",
                         where, name, d[0] ? d : "/", (unsigned)(st.st_mode & 07777));
        }
        char *slash = strrchr(d, '/');
        if (slash == NULL || d[0] == '\0')
            return 0;
        *slash = '\0'; /* "/usr/lib" -> "/usr" -> "" (the root) */
    }
}

/* The directory part of `path`, resolved, checked with check_dirs. A path
 * that does not resolve is left to the open that follows. */
static int check_dir_of(const char *path, const char *where, const char *name, char *err,
                        size_t errlen)
{
    char dir[4200], real[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return 0;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    if (realpath(dir, real) == NULL)
        return 0;
    return check_dirs(strcmp(real, "/") == 0 ? "" : real, where, name, err, errlen);
}

/* Opens entry `i` and checks that it is a plugin of our ABI. The checks
 * are made on the file opened, and dlopen loads that open file (through
 * /proc/self/fd), so the code that runs is the file checked, even if the
 * path is changed meanwhile. */
static int open_one(const kvs_config_t *cfg, size_t i, loaded_t *l, const char *where, char *err,
                    size_t errlen)
{
    const kvs_plugin_conf_t *pc = &cfg->plugins[i];
    char path[4200], real[PATH_MAX];
    snprintf(path, sizeof(path), "%s%s", strchr(pc->path, '/') ? "" : "./", pc->path);
    /* dlopen opens whatever the path names: a FIFO would block this
     * process (and every worker) until some writer came, and opening a
     * device may do something. So the path is stat'ed before it is opened
     * (without blocking), and what was opened is checked again. */
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return plugin_error(err, errlen, "%s: %s is %s, not a shared object file", where, pc->path,
                            kvs_fs_kind(st.st_mode));
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return plugin_error(err, errlen,
                            "%s cannot be loaded: %s: cannot open shared object file: %s",
                            where, pc->path, strerror(errno));
    int rc = 0;
    if (fstat(fd, &st) != 0)
        rc = plugin_error(err, errlen, "%s cannot be loaded: %s: %s", where, pc->path,
                          strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = plugin_error(err, errlen, "%s: %s is %s, not a shared object file", where, pc->path,
                          kvs_fs_kind(st.st_mode));
    /* Whoever may write the file, or a directory on its way, decides what
     * code every process runs: what every user may write is refused (as a
     * data_dir every user may write is), what its group may write is said. */
    else if (st.st_mode & S_IWOTH)
        rc = plugin_error(err, errlen,
                          "%s: %s is writable by every user (mode %04o): any of them could "
                          "make kvs run their code; chmod o-w it",
                          where, pc->path, (unsigned)(st.st_mode & 07777));
    else {
        if (st.st_mode & S_IWGRP)
            kvs_warn("%s: %s is writable by its group (mode %04o), whose members may change the "
                     "code kvs runs; chmod g-w it unless that is meant",
                     where, pc->path, (unsigned)(st.st_mode & 07777));
        rc = check_dir_of(path, where, pc->path, err, errlen); /* a link's own directory */
        if (rc == 0 && realpath(path, real) != NULL && strcmp(real, path) != 0)
            rc = check_dir_of(real, where, pc->path, err, errlen); /* where it leads */
    }
    if (rc != 0) {
        close(fd);
        return rc;
    }
    /* The descriptor stays open while the plugin is loaded: the dynamic
     * loader knows a loaded object by the name it was opened under, and a
     * later plugin opened on the same descriptor number would be taken for
     * this one. */
    char self[64];
    snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
    l->fd = fd;
    dlerror();
    l->dl = dlopen(self, RTLD_NOW | RTLD_LOCAL);
    if (l->dl == NULL) {
        const char *why = dlerror();
        size_t n = strlen(self);
        if (why == NULL)
            why = "unknown error";
        else if (strncmp(why, self, n) == 0 && strncmp(why + n, ": ", 2) == 0)
            why += n + 2; /* "/proc/self/fd/7: invalid ELF header": the config's path instead */
        return plugin_error(err, errlen, "%s cannot be loaded: %s: %s", where, pc->path, why);
    }
    l->plugin = dlsym(l->dl, KVS_PLUGIN_SYMBOL);
    if (l->plugin == NULL)
        return plugin_error(err, errlen,
                            "%s: %s is not a kvs plugin: it exports no \"%s\" symbol (see "
                            "kvs_plugin.h)",
                            where, pc->path, KVS_PLUGIN_SYMBOL);
    if (l->plugin->abi_version != KVS_PLUGIN_ABI_VERSION)
        return plugin_error(err, errlen,
                            "%s: %s was built for kvs plugin ABI version %u, but this kvs has "
                            "ABI version %u; rebuild it against this kvs's kvs_plugin.h",
                            where, pc->path, l->plugin->abi_version, KVS_PLUGIN_ABI_VERSION);
    if (l->plugin->struct_size < PLUGIN_V1_SIZE || l->plugin->init == NULL)
        return plugin_error(err, errlen,
                            "%s: %s has a malformed kvs_plugin (struct_size %u, init %s); "
                            "rebuild it against this kvs's kvs_plugin.h",
                            where, pc->path, l->plugin->struct_size,
                            l->plugin->init ? "set" : "missing");
    return 0;
}

/* Loads and initializes entry `i`. */
static int load_one(kvs_plugins_t *p, const kvs_config_t *cfg, size_t i, const char *role,
                    int shard, char *err, size_t errlen)
{
    const kvs_plugin_conf_t *pc = &cfg->plugins[i];
    loaded_t *l = &p->loaded[p->n_loaded++];
    l->fd = -1;
    char where[4400], why[512] = "";
    if (pc->line > 0)
        snprintf(where, sizeof(where), "%s:%u:%u: plugins[%zu]", cfg->path, pc->line, pc->column,
                 i);
    else
        snprintf(where, sizeof(where), "%s: plugins[%zu]", cfg->path, i);
    int rc = open_one(cfg, i, l, where, err, errlen);
    if (rc != 0)
        return rc;
    kvs_plugin_host_t host = {
        .struct_size = sizeof(kvs_plugin_host_t),
        .abi_version = KVS_PLUGIN_ABI_VERSION,
        .role = role,
        .shard = shard,
        .arg = pc->arg ? pc->arg : "",
        .config_path = cfg->path,
        .add_hook = host_add_hook,
        .log = host_log,
        .error = why,
        .error_len = sizeof(why),
        .host_data = p,
    };
    if (l->plugin->init(&host, &l->state) != 0) {
        why[sizeof(why) - 1] = '\0';
        return plugin_error(err, errlen, "%s: plugin %s (%s) refused to start: %s", where,
                            l->plugin->name ? l->plugin->name : "?", pc->path,
                            why[0] ? why : "its init failed without saying why");
    }
    l->inited = 1;
    kvs_info("plugin %s loaded from %s", l->plugin->name ? l->plugin->name : "?", pc->path);
    return 0;
}

int kvs_plugins_load(const kvs_config_t *cfg, const char *role, int shard, kvs_plugins_t **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    if (cfg->n_plugins == 0)
        return 0;
    kvs_plugins_t *p = calloc(1, sizeof(*p));
    if (p == NULL || (p->loaded = calloc(cfg->n_plugins, sizeof(loaded_t))) == NULL) {
        free(p);
        snprintf(err, errlen, "out of memory loading plugins");
        return -ENOMEM;
    }
    for (size_t i = 0; i < cfg->n_plugins; i++) {
        int rc = load_one(p, cfg, i, role, shard, err, errlen);
        if (rc != 0) {
            kvs_plugins_free(p);
            return rc;
        }
    }
    *out = p;
    return 0;
}

int kvs_plugins_attach(const kvs_plugins_t *p, kvs_hook_chain_t *chain)
{
    for (size_t i = 0; p != NULL && i < p->n_regs; i++)
        if (kvs_hook_add(chain, p->regs[i].events, p->regs[i].fn, p->regs[i].state,
                         KVS_HOOK_KEEP_REQUEST) != 0)
            return -1;
    return 0;
}

size_t kvs_plugins_count(const kvs_plugins_t *p)
{
    return p != NULL ? p->n_loaded : 0;
}

void kvs_plugins_free(kvs_plugins_t *p)
{
    if (p == NULL)
        return;
    for (size_t i = p->n_loaded; i-- > 0;) {
        loaded_t *l = &p->loaded[i];
        if (l->inited && l->plugin->fini != NULL)
            l->plugin->fini(l->state);
        if (l->dl != NULL)
            dlclose(l->dl);
        if (l->fd >= 0)
            close(l->fd);
    }
    free(p->loaded);
    free(p);
}
