/*
 * kvs_fs: the two filesystem chores every kvs process shares: creating the
 * data directory, and holding a lock file that makes a directory one
 * process's (a second router or worker on the same data refuses to start).
 */
#ifndef KVS_FS_H
#define KVS_FS_H

/* mkdir -p: creates `path` and its missing parents (mode 0755). Returns 0
 * or -errno. */
int kvs_mkdir_p(const char *path);

/* Opens (creating) `path` and takes an exclusive, non-blocking flock on
 * it, held until the returned descriptor is closed or the process exits
 * (the descriptor is close-on-exec, so children do not inherit it).
 * Returns the descriptor, -EBUSY when another process holds the lock, or
 * another -errno. */
int kvs_lock_file(const char *path);

#endif
