/*
 * kvs_log: one formatted line per call, written with a single write(2) so
 * lines from several processes sharing a terminal or journal never
 * interleave mid-line. Timestamps are UTC with milliseconds.
 */
#include "kvs_log.h"
#include "kvs_err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static char log_role[16] = "kvs";
static int log_shard = -1;
static kvs_log_level_t log_level = KVS_LOG_INFO;

static const char *const level_names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void kvs_log_init(const char *role, int shard, kvs_log_level_t level)
{
    snprintf(log_role, sizeof(log_role), "%s", role);
    log_shard = shard;
    log_level = level;
}

void kvs_log_set_level(kvs_log_level_t level)
{
    log_level = level;
}

int kvs_log_level_parse(const char *s, kvs_log_level_t *out)
{
    if (strcasecmp(s, "debug") == 0)
        *out = KVS_LOG_DEBUG;
    else if (strcasecmp(s, "info") == 0)
        *out = KVS_LOG_INFO;
    else if (strcasecmp(s, "warn") == 0 || strcasecmp(s, "warning") == 0)
        *out = KVS_LOG_WARN;
    else if (strcasecmp(s, "error") == 0)
        *out = KVS_LOG_ERROR;
    else
        return KVS_EINVAL;
    return 0;
}

int kvs_log_enabled(kvs_log_level_t level)
{
    return level >= log_level;
}

void kvs_log(kvs_log_level_t level, const char *fmt, ...)
{
    if (level < log_level)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    int k;
    if (log_shard >= 0)
        k = snprintf(line + n, sizeof(line) - n, ".%03ldZ %s[%d] %s ", ts.tv_nsec / 1000000,
                     log_role, log_shard, level_names[level]);
    else
        k = snprintf(line + n, sizeof(line) - n, ".%03ldZ %s %s ", ts.tv_nsec / 1000000, log_role,
                     level_names[level]);
    n += (size_t)k;
    va_list ap;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (k < 0)
        k = 0;
    n += (size_t)k;
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2; /* truncated: keep the newline */
    line[n++] = '\n';
    const char *p = line;
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}
