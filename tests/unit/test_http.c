/*
 * test_http: what the metrics listener (router_http) reads from a
 * request besides its line: the scraper's deadline header.
 */
#include "kvs_test.h"
#include "router_http.h"

KVS_TEST(scrape_timeout_values_prometheus_writes)
{
    CHECK_EQ(router_http_timeout_ms("10"), 10000);
    CHECK_EQ(router_http_timeout_ms("9.5"), 9500);
    CHECK_EQ(router_http_timeout_ms("2 "), 2000); /* blanks after the number */
    CHECK_EQ(router_http_timeout_ms(" 2"), 2000); /* and before it (strtod) */
    CHECK_EQ(router_http_timeout_ms("0.001"), 1);
    CHECK_EQ(router_http_timeout_ms("0.0001"), 1); /* under a millisecond: the least */
    CHECK_EQ(router_http_timeout_ms("86399"), 86399000);
}

KVS_TEST(scrape_timeout_anything_else_is_no_deadline)
{
    static const char *const bad[] = {"",   "abc", "-1",  "0",    "1e9",   "86400",
                                      "2x", "nan", "inf", "-inf", "2\t s", " "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (router_http_timeout_ms(bad[i]) != 0) {
            fprintf(stderr, "\"%s\" gave a deadline\n", bad[i]);
            CHECK(0);
        }
    }
}

KVS_TEST_MAIN(KVS_CASE(scrape_timeout_values_prometheus_writes),
              KVS_CASE(scrape_timeout_anything_else_is_no_deadline))
