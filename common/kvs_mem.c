/*
 * kvs_mem: gives the heap's free memory back to the system (kvs_mem.h).
 */
#include "kvs_mem.h"

#include <malloc.h>

static uint64_t last_ms;
static int ran;

size_t kvs_mem_give_back(uint64_t now_ms)
{
    if (ran && now_ms - last_ms < KVS_MEM_EVERY_MS)
        return 0;
    /* mallinfo2 counts the main arena, where the loop thread allocates;
     * malloc_trim trims every arena. */
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks < KVS_MEM_FREE_MIN || mi.fordblks < mi.uordblks)
        return 0;
    ran = 1;
    last_ms = now_ms;
    malloc_trim(0);
    return mi.fordblks;
}
