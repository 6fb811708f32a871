/*
 * kvs_record: the Kafka record a write to a bound table becomes (see
 * README, log-first writes): which values the binding's format carries,
 * what the payload is, and how large the record is against the producer's
 * message.max.bytes.
 *
 * Shared by the worker, which produces the records, and the router, which
 * checks every key of a write split over shards before it sends any part:
 * a part refused by its worker after others were written would leave the
 * write half done, where one bad value must write none of its keys.
 */
#ifndef KVS_RECORD_H
#define KVS_RECORD_H

#include "kvs.pb-c.h"
#include "kvs_config.h"

#include <stddef.h>
#include <stdint.h>

/* The header every record of a log-first write carries: which worker run
 * and request wrote it (KVS_RECORD_ID_LEN bytes). */
#define KVS_RECORD_HEADER "kvs.writer"
#define KVS_RECORD_ID_LEN 16

/* librdkafka's message.max.bytes when kafka.properties does not set it. */
#define KVS_RECORD_MAX_DEFAULT 1000000

/* Whether b's format carries `v`. For format string and raw the payload
 * is the value's bytes (*p, *len); for format value it is the encoded
 * Value, which the caller packs (*p = NULL, *len its size). Returns 1, or
 * 0 when the format cannot carry the value's kind. */
int kvs_record_payload(const kvs_binding_t *b, const Kvs__Value *v, const uint8_t **p, size_t *len);

/* The 400 for a value b's format cannot carry; `where` names the field
 * ("Hmset.pairs[3].value"). */
void kvs_record_format_refusal(const kvs_binding_t *b, const Kvs__Value *v, const char *where,
                               char *msg, size_t mlen);

/* How librdkafka sizes a record of a klen-byte key and a plen-byte
 * payload against message.max.bytes: key and payload, the header, and the
 * most a record's framing may take. */
size_t kvs_record_size(size_t klen, size_t plen);

/* message.max.bytes as kafka.properties sets it, read by librdkafka, or
 * its default. Costs a librdkafka configuration: call it once per config. */
size_t kvs_record_max(const kvs_config_t *cfg);

/* The 413 for a record of `size` bytes past `max`. */
void kvs_record_too_large(size_t size, size_t max, char *msg, size_t mlen);

#endif
