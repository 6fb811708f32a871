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
 * is said. `dir` is a path without symbolic links. */
static int check_dir(const char *dir, const struct stat *st, const char *where, const char *name,
                     char *err, size_t errlen)
{
    if (st->st_uid != 0 && st->st_uid != geteuid()) /* its owner may change its mode too */
        return plugin_error(err, errlen,
                            "%s: %s is in %s, a directory owned by uid %u, neither root nor the "
                            "user kvs runs as: that user could put their code in its place",
                            where, name, dir, (unsigned)st->st_uid);
    if (st->st_mode & S_ISVTX)
        return 0;
    if (st->st_mode & S_IWOTH)
        return plugin_error(err, errlen,
                            "%s: %s is in %s, a directory every user may write to (mode %04o): "
                            "any of them could put their code in its place; chmod o-w it, or add "
                            "the sticky bit",
                            where, name, dir, (unsigned)(st->st_mode & 07777));
    if (st->st_mode & S_IWGRP)
        kvs_warn("%s: %s is in %s, a directory its group may write to (mode %04o), whose members "
                 "may put other code in its place; chmod g-w it unless that is meant",
                 where, name, dir, (unsigned)(st->st_mode & 07777));
    return 0;
}

#define WALK_LINKS 40 /* the kernel's own limit on links in one lookup */

/* Resolves `path` as the kernel would, one name at a time, checking
 * that every link on the way is owned by root or this user, and every
 * directory it goes through with check_dir: each one above the file, above every link on
 * the way and above what each link leads to (for a relative path, the
 * working directory and each one above it too). A path that cannot be
 * walked (too long, a loop of links, a name that cannot be looked at) is
 * refused: what was not checked does not run. */
static int walk_checked(const char *path, const char *where, const char *name, char *err,
                        size_t errlen)
{
    char cur[PATH_MAX], todo[2 * PATH_MAX], next[PATH_MAX], link[PATH_MAX];
    struct stat st;
    size_t n = 0;
    const char *why = NULL;
    int links = 0;
    if (path[0] != '/' && getcwd(cur, sizeof(cur)) == NULL)
        why = strerror(errno);
    else if (path[0] == '/')
        cur[0] = '\0'; /* "" is the root */
    if (why == NULL && strlen(path) >= sizeof(todo))
        why = strerror(ENAMETOOLONG);
    if (why == NULL) {
        snprintf(todo, sizeof(todo), "%s", path);
        /* The directories above the start: the root, then down to it. */
        char up[PATH_MAX];
        snprintf(up, sizeof(up), "%s", cur);
        for (size_t i = 0;; i++) {
            if (up[i] != '/' && up[i] != '\0')
                continue;
            char c = up[i];
            up[i] = '\0';
            if (stat(i == 0 ? "/" : up, &st) != 0) {
                why = strerror(errno);
                break;
            }
            int rc = check_dir(i == 0 ? "/" : up, &st, where, name, err, errlen);
            if (rc != 0)
                return rc;
            up[i] = c;
            if (c == '\0')
                break;
        }
    }
    char *p = todo;
    while (why == NULL && *p != '\0') {
        while (*p == '/')
            p++;
        char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *rest = end ? end : p + len;
        if (len == 0 || (len == 1 && p[0] == '.')) {
            p = (char *)rest;
            continue;
        }
        if (len == 2 && p[0] == '.' && p[1] == '.') { /* cur has no links: its parent is plain */
            char *slash = strrchr(cur, '/');
            if (slash != NULL)
                *slash = '\0';
            p = (char *)rest;
            continue;
        }
        n = strlen(cur);
        if (n + 1 + len >= sizeof(next)) {
            why = strerror(ENAMETOOLONG);
            break;
        }
        memcpy(next, cur, n);
        next[n] = '/';
        memcpy(next + n + 1, p, len);
        next[n + 1 + len] = '\0';
        if (lstat(next, &st) != 0) {
            why = strerror(errno);
            break;
        }
        if (S_ISLNK(st.st_mode) && st.st_uid != 0 && st.st_uid != geteuid())
            /* as for the file itself: in a directory with the sticky bit its
             * owner may replace it with a link to other code */
            return plugin_error(err, errlen,
                                "%s: %s goes through %s, a symbolic link owned by uid %u, neither "
                                "root nor the user kvs runs as: that user could make it name "
                                "other code",
                                where, name, next, (unsigned)st.st_uid);
        if (S_ISLNK(st.st_mode)) { /* go on with what it names, then the rest */
            ssize_t got = readlink(next, link, sizeof(link) - 1);
            size_t k = got > 0 ? (size_t)got : 0, tail = strlen(rest);
            if (++links > WALK_LINKS)
                why = strerror(ELOOP);
            else if (got <= 0)
                why = strerror(got < 0 ? errno : ENOENT);
            else if (k + tail + 1 > sizeof(todo))
                why = strerror(ENAMETOOLONG);
            if (why != NULL)
                break;
            memmove(todo + k, rest, tail + 1); /* rest lies in todo */
            memcpy(todo, link, k);
            p = todo;
            if (link[0] == '/')
                cur[0] = '\0';
            continue;
        }
        memcpy(cur, next, n + 1 + len + 1);
        p = (char *)rest;
        while (*p == '/')
            p++;
        if (*p != '\0' && S_ISDIR(st.st_mode)) { /* a directory the file is below */
            int rc = check_dir(cur, &st, where, name, err, errlen);
            if (rc != 0)
                return rc;
        }
    }
    if (why != NULL) /* the reason first: a path this long would hide it */
        return plugin_error(err, errlen,
                            "%s: cannot check the directories on the way to the plugin (%s), so "
                            "it is not loaded: %s",
                            where, why, name);
    return 0;
}

/* Opens entry `i` and checks that it is a plugin of our ABI. The path is
 * resolved one name at a time, every directory on the way checked
 * (walk_checked), and what is loaded must still be the file checked, so it
 * is the one that runs unless someone the checks trust swaps it. (Loading
 * through /proc/self/fd would close even that, but a plugin's $ORIGIN
 * would then be /proc/self/fd: the libraries it ships beside itself would
 * not be found.) */
static int open_one(const kvs_config_t *cfg, size_t i, loaded_t *l, const char *where, char *err,
                    size_t errlen)
{
    const kvs_plugin_conf_t *pc = &cfg->plugins[i];
    char path[4200];
    snprintf(path, sizeof(path), "%s%s", strchr(pc->path, '/') ? "" : "./", pc->path);
    /* dlopen opens whatever the path names: a FIFO would block this
     * process (and every worker) until some writer came, and opening a
     * device may do something. So the file is stat'ed first, and again
     * just before it is loaded: it must still be the file checked. */
    struct stat st, at;
    int rc = 0;
    if (stat(path, &st) != 0)
        rc =
            plugin_error(err, errlen, "%s cannot be loaded: %s: cannot open shared object file: %s",
                         where, pc->path, strerror(errno));
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
    else if (st.st_uid != 0 && st.st_uid != geteuid())
        rc = plugin_error(err, errlen,
                          "%s: %s is owned by uid %u, neither root nor the user kvs runs as: "
                          "that user could make kvs run their code",
                          where, pc->path, (unsigned)st.st_uid);
    else {
        if (st.st_mode & S_IWGRP)
            kvs_warn("%s: %s is writable by its group (mode %04o), whose members may change the "
                     "code kvs runs; chmod g-w it unless that is meant",
                     where, pc->path, (unsigned)(st.st_mode & 07777));
        rc = walk_checked(path, where, pc->path, err, errlen);
    }
    if (rc != 0)
        return rc;
    /* Loaded by the path as configured, not the resolved one: the dynamic
     * loader takes a plugin's $ORIGIN from the name it was given, so a
     * plugin linked into a directory of its libraries finds them there. */
    if (stat(path, &at) != 0 || at.st_dev != st.st_dev || at.st_ino != st.st_ino)
        return plugin_error(err, errlen, "%s: %s changed while it was checked; not loaded", where,
                            pc->path);
    dlerror();
    l->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (l->dl == NULL) {
        const char *why = dlerror();
        return plugin_error(err, errlen, "%s cannot be loaded: %s", where,
                            why ? why : "unknown error");
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
    }
    free(p->loaded);
    free(p);
}
