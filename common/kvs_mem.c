/*
 * kvs_mem: gives the heap's free memory back to the system (kvs_mem.h).
 */
#include "kvs_mem.h"

#include <malloc.h>

static uint64_t last_ms;
static int ran;

size_t kvs_mem_give_back(uint64_t now_ms)
{
    /* Looked at once a second per process, however many groups sweep:
     * mallinfo2 takes every arena's lock and walks their free lists. */
    if (ran && now_ms - last_ms < KVS_MEM_EVERY_MS)
        return 0;
    ran = 1;
    last_ms = now_ms;
    return kvs_mem_trim();
}

size_t kvs_mem_trim(void)
{
    /* Both sum every arena: the loop thread's, and the thread pool's. */
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks < KVS_MEM_FREE_MIN || mi.fordblks < mi.uordblks)
        return 0;
    malloc_trim(0);
    return mi.fordblks;
}
