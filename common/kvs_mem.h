/*
 * kvs_mem: gives the heap's free memory back to the system once much of
 * it is free.
 *
 * glibc returns freed memory to the system only from the top of its heap
 * (or for blocks above the mmap threshold, KVS_CONN_KEEP_BUFFER): what is
 * freed below a block still in use stays resident. A few thousand clients
 * that each made the router grow a buffer of 100 KB, then closed, left
 * some 100 MB resident per router process that nothing used, and more
 * such rounds moved it higher. malloc_trim(3) hands those free pages back
 * (madvise); it costs a walk of the heap's free lists, so it runs only
 * when the free memory is both large and at least what is in use, and the
 * heap is looked at no more than once a second per process (kvs_conn's
 * group sweeps call it).
 *
 * Threads: the loop thread only (a process-wide "last run" time).
 */
#ifndef KVS_MEM_H
#define KVS_MEM_H

#include <stddef.h>
#include <stdint.h>

#define KVS_MEM_FREE_MIN (16u << 20) /* free heap bytes below which nothing is done */
#define KVS_MEM_EVERY_MS 1000u       /* at most one trim per this many ms */

/* Looks at the heap when the last look is KVS_MEM_EVERY_MS before
 * `now_ms` (a monotonic clock), and trims it when it holds at least
 * KVS_MEM_FREE_MIN bytes free and no less free than in use. Returns the
 * free bytes it found when it trimmed, else 0 (also where the allocator
 * does not say: sanitizers). */
size_t kvs_mem_give_back(uint64_t now_ms);

/* The same at once, whenever it last ran: after a rare event that freed
 * much. Loading a configuration file takes some 200 bytes a value while
 * it is read (a file of 9,000 users took 50 MB), freed below what the
 * config keeps; every process calls this after a load (the master runs
 * no connection sweep that would give it back). */
size_t kvs_mem_trim(void);

#endif
