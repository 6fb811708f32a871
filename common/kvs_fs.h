/*
 * kvs_fs: the filesystem chores every kvs process shares: creating the data
 * directory (private to the node's user), refusing one anybody may write
 * to, and holding a lock file that makes a directory one process's (a
 * second router or worker on the same data refuses to start).
 */
#ifndef KVS_FS_H
#define KVS_FS_H

#include <stddef.h>
#include <sys/types.h>

/* mkdir -p: creates `path` (mode 0700: the data of kvs, its sockets and
 * locks are the node user's alone) and its missing parents (0755).
 * Returns 0 or -errno. */
int kvs_mkdir_p(const char *path);

/* Checks that `path` (the data directory) is a directory other users may
 * not write to: whoever can write there could swap shard data or sockets.
 * Returns 0, or KVS_EINVAL (a world-writable directory, or not a
 * directory) or -errno, with the reason in err[0..len). */
int kvs_fs_check_private(const char *path, char *err, size_t len);

/* What a stat mode names, for a message: "a FIFO", "a directory", "a
 * socket", "a device" or "a file". Paths handed to a library that opens
 * and reads them (OpenSSL, dlopen) are checked with it first: a FIFO
 * would block the process until some writer came. */
const char *kvs_fs_kind(mode_t mode);

/* Opens (creating, mode 0600) `path` and takes an exclusive, non-blocking flock on
 * it, held until the returned descriptor is closed or the process exits
 * (the descriptor is close-on-exec, so children do not inherit it).
 * Returns the descriptor, -EBUSY when another process holds the lock, or
 * another -errno. */
int kvs_lock_file(const char *path);

/* fsync(2) of directory `dir`, so that an entry created, renamed or
 * removed in it survives a crash. Returns 0 or -errno. */
int kvs_fs_sync_dir(const char *dir);

/* Writes text[0..n) to `path` (mode 0600, not following a symlink) and
 * syncs it, and `dir` (its directory) for the new entry; `append` adds
 * the text at the end of an existing file instead of replacing it.
 * Returns 0 or -errno (-EINVAL: `path` is not a regular file; a FIFO is
 * never waited for); after an error the file may hold part of the text. */
int kvs_fs_write_synced(const char *path, const char *dir, const char *text, size_t n, int append);

/* Replaces `path` (in directory `dir`) by text[0..n) through `path`.new,
 * written and synced (kvs_fs_write_synced), renamed over it, and `dir`
 * synced: a crash leaves the old file or the new one. Returns 0 or -errno
 * (a .new that is not a file of ours, a symlink or FIFO, is left alone). */
int kvs_fs_replace_synced(const char *path, const char *dir, const char *text, size_t n);

/* Flushes standard output after --version or --help: a write that failed
 * (a closed pipe, a full disk) must not end in exit status 0. Returns 0,
 * or EX_IOERR (74) after "<prog>: cannot write to standard output: ..."
 * on stderr: the value for exit(). */
int kvs_fs_stdout_done(const char *prog);

/* Opens /dev/null on whichever of descriptors 0, 1 and 2 is closed: a
 * process started with them closed would otherwise hand them to the first
 * files it opens, and write its log into one of those. Call first thing
 * in main. Returns 0, or -1 when /dev/null cannot be opened (the caller
 * cannot even say so: it exits). */
int kvs_fs_std_fds(void);

/* Names the process after argv0's last component (at most 15 bytes, the
 * kernel's limit): the name `top`, `pgrep`, `ps -C` and core files use,
 * which the kernel took from the executed path, "100" for a child the
 * master started through /proc/self/fd/100. */
void kvs_fs_name_process(const char *argv0);

#endif
