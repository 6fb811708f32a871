/*
 * kvs_record: the Kafka record of a write to a bound table. See
 * kvs_record.h.
 */
#include "kvs_record.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A v2 record's framing at most (librdkafka's
 * RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD: 36 bytes of varints), and the header:
 * a varint length, the name, a varint length, the id. */
#define RECORD_FRAMING 36
#define RECORD_HEADER (1 + sizeof(KVS_RECORD_HEADER) - 1 + 1 + KVS_RECORD_ID_LEN)

static const char *kind_name(Kvs__Value__KindCase k)
{
    switch (k) {
    case KVS__VALUE__KIND_STRING_VALUE:
        return "string_value";
    case KVS__VALUE__KIND_BINARY_VALUE:
        return "binary_value";
    case KVS__VALUE__KIND_INTEGER_VALUE:
        return "integer_value";
    case KVS__VALUE__KIND_FLOAT_VALUE:
        return "float_value";
    case KVS__VALUE__KIND_BOOL_VALUE:
        return "bool_value";
    default:
        return "empty";
    }
}

int kvs_record_payload(const kvs_binding_t *b, const Kvs__Value *v, const uint8_t **p, size_t *len)
{
    switch (b->format) {
    case KVS_FORMAT_STRING:
        if (v->kind_case != KVS__VALUE__KIND_STRING_VALUE)
            return 0;
        *p = v->string_value.data ? v->string_value.data : (const uint8_t *)"";
        *len = v->string_value.len;
        return 1;
    case KVS_FORMAT_RAW:
        if (v->kind_case != KVS__VALUE__KIND_BINARY_VALUE)
            return 0;
        *p = v->binary_value.data ? v->binary_value.data : (const uint8_t *)"";
        *len = v->binary_value.len;
        return 1;
    default:
        *p = NULL;
        *len = kvs__value__get_packed_size(v);
        return 1;
    }
}

void kvs_record_format_refusal(const kvs_binding_t *b, const Kvs__Value *v, const char *where,
                               char *msg, size_t mlen)
{
    int text = b->format == KVS_FORMAT_STRING;
    snprintf(msg, mlen,
             "%s is %s, but table \"%s\" is bound to topic %s with format: %s, which carries "
             "only %s values; send a %s (or bind the table with format: value, which carries "
             "every kind)",
             where, kind_name(v->kind_case), b->table, b->topic, text ? "string" : "raw",
             text ? "text" : "binary", text ? "string_value" : "binary_value");
}

size_t kvs_record_size(size_t klen, size_t plen)
{
    return RECORD_FRAMING + RECORD_HEADER + klen + plen;
}

size_t kvs_record_max(const kvs_config_t *cfg)
{
    /* librdkafka reads the value its own way (any base, trailing text
     * ignored, a range of its own): it is asked, so the router's check is
     * the producer's. */
    const char *set = kvs_config_kafka_property(cfg, "message.max.bytes");
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[256], value[32] = "";
    size_t n = sizeof(value);
    size_t max = KVS_RECORD_MAX_DEFAULT;
    if (conf != NULL &&
        (set == NULL || rd_kafka_conf_set(conf, "message.max.bytes", set, errstr, sizeof(errstr)) ==
                            RD_KAFKA_CONF_OK) &&
        rd_kafka_conf_get(conf, "message.max.bytes", value, &n) == RD_KAFKA_CONF_OK)
        max = (size_t)strtoull(value, NULL, 10);
    if (conf != NULL)
        rd_kafka_conf_destroy(conf);
    return max; /* a value librdkafka refuses stops the worker's producer */
}

void kvs_record_too_large(size_t size, size_t max, char *msg, size_t mlen)
{
    snprintf(msg, mlen,
             "value is too large for Kafka: the record of a key takes %zu bytes (key, value and "
             "kvs's header), more than the producer's message.max.bytes (%zu) lets it send; "
             "nothing was written (raise message.max.bytes in kafka.properties and on the "
             "brokers, or write a smaller value)",
             size, max);
}
