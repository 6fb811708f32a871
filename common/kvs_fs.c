/*
 * kvs_fs: mkdir -p and lock files. flock locks belong to the open file
 * description, so they vanish with the process however it dies (kill -9
 * included): a stale lock file never blocks a restart.
 */
#include "kvs_fs.h"
#include "kvs_err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

int kvs_mkdir_p(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -ENAMETOOLONG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

const char *kvs_fs_kind(mode_t mode)
{
    return S_ISFIFO(mode)   ? "a FIFO"
           : S_ISDIR(mode)  ? "a directory"
           : S_ISSOCK(mode) ? "a socket"
           : S_ISREG(mode)  ? "a file"
                            : "a device";
}

int kvs_fs_check_private(const char *path, char *err, size_t len)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        snprintf(err, len, "data_dir %s: %s", path, strerror(e));
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, len, "data_dir %s is not a directory", path);
        return KVS_EINVAL;
    }
    if (st.st_mode & S_IWOTH) {
        snprintf(err, len,
                 "data_dir %s is writable by every user (mode %04o): anyone could replace its "
                 "shard data or sockets; refusing to start (chmod o-w it, or better 700)",
                 path, (unsigned)(st.st_mode & 07777));
        return KVS_EINVAL;
    }
    return 0;
}

int kvs_lock_file(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        return e == EWOULDBLOCK ? -EBUSY : -e;
    }
    return fd;
}

int kvs_fs_std_fds(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        int got = open("/dev/null", O_RDWR); /* the lowest free one: fd */
        if (got < 0)
            return -1;
        if (got != fd) { /* cannot happen: fd was the lowest closed one */
            close(got);
            return -1;
        }
    }
    return 0;
}

void kvs_fs_name_process(const char *argv0)
{
    if (argv0 == NULL || argv0[0] == '\0')
        return;
    const char *base = strrchr(argv0, '/');
    char name[16];
    snprintf(name, sizeof(name), "%s", base != NULL ? base + 1 : argv0);
    (void)prctl(PR_SET_NAME, name, 0, 0, 0); /* only a name: nothing depends on it */
}

int kvs_fs_replace_synced(const char *path, const char *dir, const char *text, size_t n)
{
    char tmp[4500];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.new", path) >= sizeof(tmp))
        return -ENAMETOOLONG;
    int rc = kvs_fs_write_synced(tmp, dir, text, n, 0);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc == 0)
        return kvs_fs_sync_dir(dir);
    if (rc != -ELOOP && rc != -EINVAL) /* (not a file of ours to remove) */
        unlink(tmp);
    return rc;
}

int kvs_fs_stdout_done(const char *prog)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return 0;
    fprintf(stderr, "%s: cannot write to standard output: %s\n", prog, strerror(errno));
    return EX_IOERR;
}

int kvs_fs_sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

int kvs_fs_write_synced(const char *path, const char *dir, const char *text, size_t n, int append)
{
    /* Non-blocking: a FIFO put in its place never holds the caller. */
    int fd = open(path,
                  O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK |
                      (append ? O_APPEND : O_CREAT | O_TRUNC),
                  0600);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = fstat(fd, &st) != 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
    for (size_t off = 0; rc == 0 && off < n;) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno != EINTR)
            rc = -errno;
        else if (w == 0)
            rc = -EIO; /* no progress and no error: never spin on it */
        else if (w > 0)
            off += (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    return rc == 0 && !append ? kvs_fs_sync_dir(dir) : rc; /* appended: the entry is there */
}
