/*
 * Tests for kvs_fs: a process started with its standard descriptors
 * closed gets /dev/null on them (so its first files do not take them),
 * in a child process whose descriptors 0-2 are closed for real.
 */
#include "kvs_test.h"
#include "kvs_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* In a child: closes the descriptors in `closed` (a bit per fd 0-2), runs
 * kvs_fs_std_fds and opens a file; exits 0 when 0-2 are all /dev/null or
 * were left alone and the file took a descriptor above 2. */
static int child_with_closed(unsigned closed)
{
    pid_t pid = fork();
    if (pid == 0) {
        struct stat null_st, st;
        if (stat("/dev/null", &null_st) != 0)
            _exit(10);
        for (int fd = 0; fd <= 2; fd++)
            if (closed & (1u << fd))
                close(fd);
        if (kvs_fs_std_fds() != 0)
            _exit(11);
        for (int fd = 0; fd <= 2; fd++) {
            if (fstat(fd, &st) != 0)
                _exit(12 + fd);
            if ((closed & (1u << fd)) && st.st_rdev != null_st.st_rdev)
                _exit(15 + fd);
        }
        int f = open("/proc/self/status", O_RDONLY);
        _exit(f > 2 ? 0 : 20);
    }
    int status = -1;
    CHECK(pid > 0);
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 99;
}

KVS_TEST(std_fds_get_dev_null_when_closed)
{
    for (unsigned closed = 0; closed < 8; closed++)
        CHECK_EQ(child_with_closed(closed), 0);
}

/* The name /proc/self/comm shows after kvs_fs_name_process(argv0), read
 * in a child (the test's own name stays). */
static void comm_after(const char *argv0, const char *want)
{
    int fds[2];
    char got[32] = "";
    CHECK_EQ(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        kvs_fs_name_process(argv0);
        int f = open("/proc/self/comm", O_RDONLY);
        ssize_t n = f >= 0 ? read(f, got, sizeof(got) - 1) : -1;
        _exit(n > 0 && write(fds[1], got, (size_t)n) == n ? 0 : 1);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], got, sizeof(got) - 1);
    close(fds[0]);
    int status = -1;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && n > 0);
    got[n > 0 ? n : 0] = '\0';
    CHECK_STR(got, want);
}

KVS_TEST(process_named_after_argv0)
{
    comm_after("/usr/local/bin/kvs-node", "kvs-node\n");
    comm_after("kvs-router", "kvs-router\n");
    comm_after("/x/kvs-a-name-longer-than-fifteen", "kvs-a-name-long\n"); /* the kernel's 15 */
}

KVS_TEST_MAIN(KVS_CASE(std_fds_get_dev_null_when_closed), KVS_CASE(process_named_after_argv0))
