/*
 * kvs_pos: positions in bound topics, and the token that carries them.
 *
 * A write to a table bound to a Kafka topic is a record in that topic; its
 * position is (topic, partition, offset of the record). A read that must
 * see some writes carries their positions, and a worker serves it only
 * once it has applied the record at every such offset of the partitions
 * the read touches (kvs_fresh decides).
 *
 * On the wire (CommandResponse.position, CommandRequest.min_position) a set
 * of positions is one opaque, compact token, versioned so it can grow:
 *
 *   token = 0x01 group+
 *   group = varint(len(topic)) topic varint(count) entry{count}
 *   entry = varint(partition) varint(offset)
 *
 * Varints are protobuf's (7 bits per byte, little-endian groups). A token
 * is canonical: groups in strictly increasing byte order of topic names
 * (shorter first on a common prefix), entries in strictly increasing
 * partition order, count >= 1, topic names 1..249 bytes, partitions below
 * 2^31, offsets below 2^63. Decoding accepts only canonical tokens, so a
 * token has exactly one meaning and two tokens merge by a single walk. No
 * positions at all is the empty byte string (the field left unset).
 *
 * Text form, for people and kvs-cli: "topic:partition:offset" entries
 * joined by ',' (Kafka topic names hold no ':' or ','), in token order.
 *
 * Building: a kvs_pos_set_t collects entries in any order (the highest
 * offset per (topic, partition) wins) and encodes the canonical token,
 * sorting once (n log n, whatever the input). Memory: a set owns its entry
 * array but not the topic names: they must stay valid until the set is
 * encoded or cleared (binding names from the config, a token being read).
 */
#ifndef KVS_POS_H
#define KVS_POS_H

#include "kvs_buf.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_POS_VERSION 1
#define KVS_POS_TOPIC_MAX 249

/* Whether t[0..n) is made as Kafka makes topic names: letters, digits,
 * '.', '_' and '-', and not "." or ".." (the length is the caller's). */
int kvs_pos_topic_chars_ok(const void *t, size_t n);

/* One position. `topic` is not NUL-terminated. */
typedef struct kvs_pos_entry_s {
    const char *topic;
    size_t topic_len;
    uint32_t partition;
    int64_t offset;
} kvs_pos_entry_t;

/* ---- reading tokens -------------------------------------------------- */

typedef struct kvs_pos_iter_s {
    const uint8_t *p, *end;
    const char *topic; /* the current group's */
    size_t topic_len;
    uint64_t left; /* entries left in the current group */
    int64_t last_partition;
} kvs_pos_iter_t;

/* Starts walking `tok`. Returns 0, or KVS_EPROTO when it does not start
 * with a known version byte (an empty token walks nothing: returns 0). */
int kvs_pos_iter_init(kvs_pos_iter_t *it, const uint8_t *tok, size_t len);

/* The next position, in token order: returns 1 with *e set (its topic
 * points into the token), 0 at the end, KVS_EPROTO when the token is
 * malformed or not canonical at this point. */
int kvs_pos_iter_next(kvs_pos_iter_t *it, kvs_pos_entry_t *e);

/* True when tok[0..len) is a canonical token (or empty). */
int kvs_pos_valid(const uint8_t *tok, size_t len);

/* The offset `tok` holds for (topic, partition), or -1 when it holds none
 * (or is malformed). */
int64_t kvs_pos_find(const uint8_t *tok, size_t len, const char *topic, size_t topic_len,
                     uint32_t partition);

/* Writes the text form of `tok` into out[0..cap) (NUL-terminated; "..."
 * when cut short). Returns 0, or KVS_EPROTO for a malformed token. */
int kvs_pos_format(const uint8_t *tok, size_t len, char *out, size_t cap);

/* ---- building tokens ------------------------------------------------- */

/* Bytes a token of one position takes at most. */
#define KVS_POS_ONE_MAX (1 + 2 + KVS_POS_TOPIC_MAX + 1 + 5 + 10)

/* Writes the token holding just (topic, partition, offset) into
 * out[0..KVS_POS_ONE_MAX) without allocating; returns its length, or 0
 * when the position is out of range (as for kvs_pos_set_add). */
size_t kvs_pos_encode_one(uint8_t *out, const char *topic, size_t topic_len, uint32_t partition,
                          int64_t offset);

typedef struct kvs_pos_set_s {
    kvs_pos_entry_t *e;
    size_t n, cap;
} kvs_pos_set_t;

void kvs_pos_set_init(kvs_pos_set_t *s);
void kvs_pos_set_free(kvs_pos_set_t *s);
void kvs_pos_set_clear(kvs_pos_set_t *s);

/* Adds one position (the topic is referenced, not copied); for a (topic,
 * partition) already in the set the higher offset stays. Returns 0,
 * KVS_EINVAL for a topic name that is empty or too long, a partition >=
 * 2^31 or a negative offset, or -ENOMEM. */
int kvs_pos_set_add(kvs_pos_set_t *s, const char *topic, size_t topic_len, uint32_t partition,
                    int64_t offset);

/* Adds every position of `tok`. Returns 0, KVS_EPROTO for a malformed
 * token (the set may then hold some of it), or -ENOMEM. */
int kvs_pos_set_add_token(kvs_pos_set_t *s, const uint8_t *tok, size_t len);

/* Adds the positions of `tok` in one topic, topic[0..topic_len), on its
 * partitions below `partitions`: what a read of that topic's table can
 * use. The set grows by at most `partitions` entries, however large the
 * token (a client's may hold a million). Returns 0, KVS_EPROTO for a
 * malformed token, or -ENOMEM. */
int kvs_pos_set_add_topic(kvs_pos_set_t *s, const uint8_t *tok, size_t len, const char *topic,
                          size_t topic_len, uint32_t partitions);

/* Sorts the set into token order and merges duplicates (highest offset
 * wins); returns the number of entries left. */
size_t kvs_pos_set_normalize(kvs_pos_set_t *s);

/* Appends the canonical token of the set to `out` (nothing for an empty
 * set), normalizing it first. Returns 0 or -ENOMEM. */
int kvs_pos_set_encode(kvs_pos_set_t *s, kvs_buf_t *out);

/* Parses the text form ("t:p:o,t:p:o") into the set (topics point into
 * `text`). Returns 0, KVS_EINVAL with err saying what is wrong, or
 * -ENOMEM. */
int kvs_pos_set_parse(kvs_pos_set_t *s, const char *text, char *err, size_t errlen);

#endif
