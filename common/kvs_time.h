/*
 * kvs_time: the monotonic clock in nanoseconds, for durations (request
 * latency, commit time). CLOCK_MONOTONIC is what uv_hrtime reads too; the
 * plugin ABI's timestamps (kvs_request_info_t) are in it. And the
 * calling thread's CPU time, for the cost of a piece of work: unlike a
 * duration on the wall clock it does not count the time the thread waited
 * for a core on a loaded machine.
 */
#ifndef KVS_TIME_H
#define KVS_TIME_H

#include <stdint.h>
#include <time.h>

static inline uint64_t kvs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The calling thread's CPU time in nanoseconds; 0 if the clock is not
 * there (then every cost measured with it is 0). */
static inline uint64_t kvs_thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
