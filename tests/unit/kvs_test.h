/*
 * kvs_test: the smallest test harness that does the job.
 *
 * A test file defines cases with KVS_TEST(name) { ... } at the start of a
 * line and lists them in KVS_TEST_MAIN. Without an argument (what ctest
 * runs: one ctest per test program) every case runs in a process of its
 * own, forked from the program, so no case sees what another left behind
 * (globals, atexit handlers, a failing-allocation countdown) and a crash
 * names its case; the program fails if any case did. `test_x name` runs
 * that one case in the program's own process (handy under a debugger).
 * A failed CHECK prints file:line and the expression, then aborts.
 */
#ifndef KVS_TEST_H
#define KVS_TEST_H

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    const char *name;
    void (*fn)(void);
} kvs_test_case_t;

#define KVS_TEST(name) static void test_##name(void)
#define KVS_CASE(name)                                                                             \
    {                                                                                              \
#name, test_##name                                                                         \
    }

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long kvs_a_ = (long long)(a), kvs_b_ = (long long)(b);                                \
        if (kvs_a_ != kvs_b_) {                                                                    \
            fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s) failed: %lld != %lld\n", __FILE__, __LINE__,  \
                    #a, #b, kvs_a_, kvs_b_);                                                       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *kvs_a_ = (a), *kvs_b_ = (b);                                                   \
        if (strcmp(kvs_a_, kvs_b_) != 0) {                                                         \
            fprintf(stderr, "%s:%d: CHECK_STR(%s, %s) failed: \"%s\" != \"%s\"\n", __FILE__,       \
                    __LINE__, #a, #b, kvs_a_, kvs_b_);                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Substring check, for error messages. */
#define CHECK_CONTAINS(hay, needle)                                                                \
    do {                                                                                           \
        const char *kvs_h_ = (hay), *kvs_n_ = (needle);                                            \
        if (strstr(kvs_h_, kvs_n_) == NULL) {                                                      \
            fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, kvs_h_, \
                    kvs_n_);                                                                       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The case's scratch directory, made by kvs_test_fresh_dir. */
static inline char *kvs_test_dir(void)
{
    static char dir[256];
    return dir;
}

static inline void kvs_test_remove_dir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", kvs_test_dir());
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", kvs_test_dir());
}

/* Makes a new directory /tmp/kvs-test-NAME-XXXXXX, removed when the case's
 * process exits, and returns its path (kvs_test_dir). Needs <stdlib.h>'s
 * mkdtemp (_DEFAULT_SOURCE or _GNU_SOURCE). */
#define KVS_TEST_FRESH_DIR(name)                                                                   \
    do {                                                                                           \
        snprintf(kvs_test_dir(), 256, "/tmp/kvs-test-%s-XXXXXX", (name));                          \
        CHECK(mkdtemp(kvs_test_dir()) != NULL);                                                    \
        atexit(kvs_test_remove_dir);                                                               \
    } while (0)

/* As every kvs program does at start: a write to a peer that went away is
 * an EPIPE error for the code under test to handle, not the death of the
 * test (a TLS close_notify written after the client closed, say). */
static inline void kvs_test_ignore_sigpipe(void)
{
#ifdef SIGPIPE
    signal(SIGPIPE, SIG_IGN);
#endif
}

/* Capturing stderr (what kvs_log writes): kvs_capture_start sends it to
 * a temporary file, kvs_capture_end restores it and returns what was
 * written (malloc'd, NUL-terminated; its length in *len when not NULL). */
typedef struct {
    FILE *file;
    int saved_fd;
} kvs_capture_t;

static inline void kvs_capture_start(kvs_capture_t *c)
{
    fflush(stderr);
    c->file = tmpfile();
    CHECK(c->file != NULL);
    c->saved_fd = dup(STDERR_FILENO);
    CHECK(c->saved_fd >= 0);
    CHECK(dup2(fileno(c->file), STDERR_FILENO) == STDERR_FILENO);
}

static inline char *kvs_capture_end(kvs_capture_t *c, size_t *len)
{
    fflush(stderr);
    CHECK(dup2(c->saved_fd, STDERR_FILENO) == STDERR_FILENO);
    close(c->saved_fd);
    CHECK(fseek(c->file, 0, SEEK_END) == 0);
    long n = ftell(c->file);
    CHECK(n >= 0);
    rewind(c->file);
    char *text = malloc((size_t)n + 1);
    CHECK(text != NULL);
    CHECK_EQ(fread(text, 1, (size_t)n, c->file), n);
    text[n] = '\0';
    fclose(c->file);
    if (len != NULL)
        *len = (size_t)n;
    return text;
}

/* Runs cases[i] in a forked child and says how it ended; 0 if it passed. */
static inline int kvs_test_run_forked(const kvs_test_case_t *c)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        c->fn();
        printf("ok %s\n", c->name);
        exit(0);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        CHECK(errno == EINTR);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (WIFSIGNALED(status))
        fprintf(stderr, "FAILED %s: killed by signal %d\n", c->name, WTERMSIG(status));
    else
        fprintf(stderr, "FAILED %s: exit status %d\n", c->name, WEXITSTATUS(status));
    return 1;
}

#define KVS_TEST_MAIN(...)                                                                         \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        static const kvs_test_case_t cases[] = {__VA_ARGS__};                                      \
        size_t n = sizeof(cases) / sizeof(cases[0]);                                               \
        kvs_test_ignore_sigpipe();                                                                 \
        if (argc > 1) {                                                                            \
            for (size_t i = 0; i < n; i++)                                                         \
                if (strcmp(argv[1], cases[i].name) == 0) {                                         \
                    cases[i].fn();                                                                 \
                    printf("ok %s\n", cases[i].name);                                              \
                    return 0;                                                                      \
                }                                                                                  \
            fprintf(stderr, "no test case named %s\n", argv[1]);                                   \
            return 2;                                                                              \
        }                                                                                          \
        int failed = 0;                                                                            \
        for (size_t i = 0; i < n; i++)                                                             \
            failed += kvs_test_run_forked(&cases[i]);                                              \
        printf("%zu cases, %d failed\n", n, failed);                                               \
        return failed ? 1 : 0;                                                                     \
    }

#endif
