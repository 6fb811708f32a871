/*
 * kvs_time: the monotonic clock in nanoseconds, for durations (request
 * latency, commit time). CLOCK_MONOTONIC is what uv_hrtime reads too; the
 * plugin ABI's timestamps (kvs_request_info_t) are in it.
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

#endif
