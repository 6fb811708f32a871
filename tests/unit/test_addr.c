/*
 * test_addr: kvs_addr parses the three address forms users write in config
 * files and on command lines ("host:port", "[v6]:port", "unix:/path"),
 * rejects everything else with a reason that quotes the input, and formats
 * an address back to the text it came from.
 */
#include "kvs_addr.h"
#include "kvs_err.h"
#include "kvs_test.h"

static char err[256];

static kvs_addr_t parse_ok(const char *s, int allow0)
{
    kvs_addr_t a;
    err[0] = '\0';
    int rc = kvs_addr_parse(s, allow0, &a, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\"%s\": unexpected error: %s\n", s, err);
    CHECK_EQ(rc, 0);
    return a;
}

/* Expects KVS_EINVAL with a reason containing `why` and the input quoted. */
static void parse_fails(const char *s, int allow0, const char *why)
{
    kvs_addr_t a;
    char quoted[400];
    err[0] = '\0';
    CHECK_EQ(kvs_addr_parse(s, allow0, &a, err, sizeof(err)), KVS_EINVAL);
    CHECK_CONTAINS(err, why);
    snprintf(quoted, sizeof(quoted), "\"%s\"", s);
    if (strlen(s) < 100)
        CHECK_CONTAINS(err, quoted);
    /* No error buffer is fine too. */
    CHECK_EQ(kvs_addr_parse(s, allow0, &a, NULL, 0), KVS_EINVAL);
}

KVS_TEST(host_port)
{
    kvs_addr_t a = parse_ok("127.0.0.1:9527", 0);
    CHECK_EQ(a.is_unix, 0);
    CHECK_STR(a.host, "127.0.0.1");
    CHECK_EQ(a.port, 9527);
    a = parse_ok("localhost:1", 0);
    CHECK_STR(a.host, "localhost");
    CHECK_EQ(a.port, 1);
    a = parse_ok("db-1.example.com:65535", 0);
    CHECK_STR(a.host, "db-1.example.com");
    CHECK_EQ(a.port, 65535);
    a = parse_ok("0.0.0.0:0", 1);
    CHECK_STR(a.host, "0.0.0.0");
    CHECK_EQ(a.port, 0);
}

KVS_TEST(ipv6_in_brackets)
{
    kvs_addr_t a = parse_ok("[::1]:7000", 0);
    CHECK_EQ(a.is_unix, 0);
    CHECK_STR(a.host, "::1");
    CHECK_EQ(a.port, 7000);
    a = parse_ok("[2001:db8::42]:443", 0);
    CHECK_STR(a.host, "2001:db8::42");
    CHECK_EQ(a.port, 443);
    a = parse_ok("[::]:0", 1);
    CHECK_STR(a.host, "::");
    CHECK_EQ(a.port, 0);
}

KVS_TEST(unix_path)
{
    kvs_addr_t a = parse_ok("unix:/tmp/kvs.sock", 0);
    CHECK_EQ(a.is_unix, 1);
    CHECK_STR(a.path, "/tmp/kvs.sock");
    CHECK_STR(a.host, "");
    CHECK_EQ(a.port, 0);
    parse_fails("unix:", 0, "unix socket path is empty");
}

KVS_TEST(bad_ports)
{
    parse_fails("host:0", 0, "port must be 1-65535");
    parse_fails("host:65536", 0, "port must be 1-65535");
    parse_fails("host:65536", 1, "port must be 0-65535");
    parse_fails("host:abc", 0, "port must be 1-65535");
    parse_fails("host:abc", 1, "port must be 0-65535");
    parse_fails("host:", 0, "port must be 1-65535");
    parse_fails("host:-1", 1, "port must be 0-65535");
    parse_fails("host:80x", 0, "port must be 1-65535");
    parse_fails("host:99999999999999999999999", 0, "port must be 1-65535");
    parse_fails("[::1]:0", 0, "port must be 1-65535");
    parse_fails("[::1]:", 0, "port must be 1-65535");
    parse_fails("host: 80", 0, "spaces are not allowed");
    parse_fails("host:+80", 0, "port must be 1-65535");
}

KVS_TEST(missing_colon)
{
    parse_fails("localhost", 0, "missing :PORT");
    parse_fails("", 0, "missing :PORT");
    parse_fails(":80", 0, "missing host (use 0.0.0.0:PORT for every interface)");
    parse_fails("[]:80", 0, "empty address in []");
}

KVS_TEST(ipv6_without_brackets)
{
    parse_fails("::1:80", 0, "an IPv6 address must be in brackets, as in [::1]:9527");
    parse_fails("2001:db8::1:443", 0, "an IPv6 address must be in brackets");
    parse_fails("[::1]80", 0, "missing :PORT");
    parse_fails("[::1", 0, "missing ']' after the IPv6 address");
    parse_fails("[::1]", 0, "missing :PORT");
}

KVS_TEST(too_long)
{
    char s[400];
    /* unix: sun_path holds 107 bytes and the NUL. */
    memcpy(s, "unix:/", 6);
    memset(s + 6, 'p', 106);
    s[6 + 106] = '\0';
    kvs_addr_t a = parse_ok(s, 0);
    CHECK_EQ(strlen(a.path), 107);
    memcpy(s + 6 + 106, "p", 2);
    parse_fails(s, 0, "unix socket path is longer than 107 bytes");

    /* host: a 253-byte name (four labels of 63) fits, 254 bytes do not;
     * a trailing dot does not count. */
    memset(s, 'h', 253);
    s[63] = s[127] = s[191] = '.';
    memcpy(s + 253, ":80", 4);
    a = parse_ok(s, 0);
    CHECK_EQ(strlen(a.host), 253);
    memcpy(s + 253, ".:80", 5);
    a = parse_ok(s, 0);
    CHECK_EQ(strlen(a.host), 254);
    memcpy(s + 253, "h:80", 5);
    parse_fails(s, 0, "host name is too long (at most 253 bytes)");
    memset(s, 'h', 300);
    memcpy(s + 300, ":80", 4);
    parse_fails(s, 0, "host name is too long");
}

/* Every host is checked where it is written, not when it is first used. */
KVS_TEST(hosts_are_validated)
{
    parse_fails("300.1.1.1:9527", 0, "not a valid IPv4 address (four numbers 0-255");
    parse_fails("1.2.3:80", 0, "not a valid IPv4 address");
    parse_fails("127.1:80", 0, "not a valid IPv4 address"); /* getaddrinfo would take it */
    parse_fails("1.2.3.4.5:80", 0, "not a valid IPv4 address");
    parse_fails("2130706433:80", 0, "not a valid IPv4 address");
    parse_fails("[::g]:80", 0, "not a valid IPv6 address");
    parse_fails("[1.2.3.4]:80", 0, "not a valid IPv6 address");
    parse_fails("[fe80::1%]:80", 0, "not a valid IPv6 zone after '%'");
    parse_fails("[fe80::1%e/0]:80", 0, "not a valid IPv6 zone after '%'");
    parse_fails("a..b:80", 0, "empty label in the host name");
    parse_fails(".a:80", 0, "empty label in the host name");
    parse_fails("-a.example:80", 0, "must not start or end with '-'");
    parse_fails("a-.example:80", 0, "must not start or end with '-'");
    parse_fails("ex@mple:80", 0, "a host name may only contain letters, digits, '-', '_' and '.'");
    parse_fails("h\xc3\xa9:80", 0, "a host name may only contain");
    char s[100];
    memset(s, 'a', 64);
    memcpy(s + 64, ".b:80", 6);
    parse_fails(s, 0, "a host name label is longer than 63 bytes");
    s[1] = '.'; /* labels of 1 and 62 */
    parse_ok(s, 0);

    kvs_addr_t a = parse_ok("[fe80::1%eth0]:80", 0);
    CHECK_STR(a.host, "fe80::1%eth0");
    a = parse_ok("[::ffff:10.0.0.1]:80", 0);
    CHECK_STR(a.host, "::ffff:10.0.0.1");
    a = parse_ok("kvs_node-1.example.com.:80", 0);
    CHECK_STR(a.host, "kvs_node-1.example.com.");
    a = parse_ok("255.255.255.255:1", 0);
    CHECK_STR(a.host, "255.255.255.255");
    a = parse_ok("1e100.net:1", 0); /* digits and letters: a name */
    CHECK_STR(a.host, "1e100.net");

    /* The bare reason, for callers that word the message themselves. */
    const char *why = NULL;
    CHECK_EQ(kvs_addr_parse_why("300.1.1.1:9527", 0, &a, &why), KVS_EINVAL);
    CHECK_STR(why, "not a valid IPv4 address (four numbers 0-255, as in 10.0.0.1)");
    CHECK_STR(a.host, ""); /* zeroed on error */
    CHECK_EQ(kvs_addr_parse_why("h:1", 0, &a, &why), 0);
}

KVS_TEST(format_round_trip)
{
    static const char *const texts[] = {
        "127.0.0.1:9527",  "localhost:1",        "[::1]:7000",
        "[fe80::1]:65535", "unix:/tmp/kvs.sock", "unix:relative/path.sock",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        kvs_addr_t a = parse_ok(texts[i], 0), b;
        char buf[300];
        CHECK(kvs_addr_format(&a, buf, sizeof(buf)) == buf);
        CHECK_STR(buf, texts[i]);
        b = parse_ok(buf, 0);
        CHECK_EQ(b.is_unix, a.is_unix);
        CHECK_STR(b.host, a.host);
        CHECK_EQ(b.port, a.port);
        CHECK_STR(b.path, a.path);
    }
}

KVS_TEST(format_port0_and_truncation)
{
    kvs_addr_t a = parse_ok("[::]:0", 1);
    char buf[64];
    CHECK_STR(kvs_addr_format(&a, buf, sizeof(buf)), "[::]:0");
    /* A short buffer gets a NUL-terminated prefix. */
    a = parse_ok("127.0.0.1:9527", 0);
    CHECK_STR(kvs_addr_format(&a, buf, 6), "127.0");
}

static int loopback(const char *s)
{
    kvs_addr_t a = parse_ok(s, 0);
    return kvs_addr_is_loopback(&a);
}

/* Loopback is loopback in every form it is written: an IPv4-mapped
 * 127.0.0.1 is the address a dual-stack socket sees, and the warnings about
 * exposed listeners must agree with how peers are judged local. */
/* A --host option's text: "[::1]" loses its brackets, other text is
 * copied; empty or too long is refused, leaving the buffer as it was. */
KVS_TEST(host_arg_forms)
{
    char out[8];
    CHECK_EQ(kvs_addr_host_arg("[::1]", out, sizeof(out)), 0);
    CHECK_STR(out, "::1");
    CHECK_EQ(kvs_addr_host_arg("::1", out, sizeof(out)), 0);
    CHECK_STR(out, "::1");
    CHECK_EQ(kvs_addr_host_arg("kafka", out, sizeof(out)), 0);
    CHECK_STR(out, "kafka");
    CHECK_EQ(kvs_addr_host_arg("[]", out, sizeof(out)), 0); /* not an address: left to resolve */
    CHECK_STR(out, "[]");
    CHECK_EQ(kvs_addr_host_arg("[1234567]", out, sizeof(out)), 0); /* 7 bytes inside: fits */
    CHECK_STR(out, "1234567");
    CHECK_EQ(kvs_addr_host_arg("12345678", out, sizeof(out)), -1);
    CHECK_EQ(kvs_addr_host_arg("", out, sizeof(out)), -1);
    CHECK_STR(out, "1234567");
}

KVS_TEST(loopback_forms)
{
    CHECK_EQ(loopback("127.0.0.1:1"), 1);
    CHECK_EQ(loopback("127.8.9.10:1"), 1);
    CHECK_EQ(loopback("localhost:1"), 1);
    CHECK_EQ(loopback("LocalHost.:1"), 1);
    CHECK_EQ(loopback("[::1]:1"), 1);
    CHECK_EQ(loopback("[0:0::1]:1"), 1);
    CHECK_EQ(loopback("[::ffff:127.0.0.1]:1"), 1);
    CHECK_EQ(loopback("[::ffff:127.3.2.1]:1"), 1);
    CHECK_EQ(loopback("unix:/tmp/x.sock"), 1);
    CHECK_EQ(loopback("[::ffff:10.0.0.1]:1"), 0);
    CHECK_EQ(loopback("[::]:1"), 0);
    CHECK_EQ(loopback("0.0.0.0:1"), 0);
    CHECK_EQ(loopback("[fe80::1%lo]:1"), 0);
    CHECK_EQ(loopback("128.0.0.1:1"), 0);
    CHECK_EQ(loopback("localhost.example:1"), 0);
}

static int unspecified(const char *s)
{
    kvs_addr_t a = parse_ok(s, 0);
    return kvs_addr_is_unspecified(&a);
}

/* "Every address" in each form it is written: a cluster map that named a
 * node so had its peers connect to themselves. */
KVS_TEST(unspecified_forms)
{
    CHECK_EQ(unspecified("0.0.0.0:1"), 1);
    CHECK_EQ(unspecified("[::]:1"), 1);
    CHECK_EQ(unspecified("[0:0::0]:1"), 1);
    CHECK_EQ(unspecified("[::ffff:0.0.0.0]:1"), 1);
    CHECK_EQ(unspecified("0.0.0.1:1"), 0);
    CHECK_EQ(unspecified("[::1]:1"), 0);
    CHECK_EQ(unspecified("localhost:1"), 0);
    CHECK_EQ(unspecified("zero.example:1"), 0);
    CHECK_EQ(unspecified("unix:/tmp/x.sock"), 0);
}

static int same(const char *x, const char *y)
{
    kvs_addr_t a, b;
    CHECK_EQ(kvs_addr_parse(x, 0, &a, NULL, 0), 0);
    CHECK_EQ(kvs_addr_parse(y, 0, &b, NULL, 0), 0);
    CHECK_EQ(kvs_addr_same_host(&a, &b), kvs_addr_same_host(&b, &a));
    return kvs_addr_same_host(&a, &b);
}

/* The cluster map's overlap check compares hosts as addresses: one node's
 * workers written two ways were taken for two nodes' replicas. */
KVS_TEST(same_host_forms)
{
    CHECK_EQ(same("127.0.0.1:1", "127.0.0.1:2"), 1);
    CHECK_EQ(same("127.0.0.1:1", "localhost:2"), 1);
    CHECK_EQ(same("127.0.0.1:1", "LOCALHOST.:2"), 1);
    CHECK_EQ(same("[::1]:1", "localhost:2"), 1);
    CHECK_EQ(same("[0:0::1]:1", "[::1]:2"), 1);
    CHECK_EQ(same("[::ffff:127.0.0.1]:1", "127.0.0.1:2"), 1);
    CHECK_EQ(same("[::ffff:10.1.2.3]:1", "10.1.2.3:2"), 1);
    CHECK_EQ(same("Node-A.example:1", "node-a.example.:2"), 1);
    CHECK_EQ(same("localhost:1", "localhost.:2"), 1);
    CHECK_EQ(same("127.0.0.1:1", "127.0.0.2:2"), 0);
    CHECK_EQ(same("127.0.0.2:1", "localhost:2"), 0);
    CHECK_EQ(same("[::1]:1", "127.0.0.1:2"), 0);
    CHECK_EQ(same("10.0.0.1:1", "[::ffff:10.0.0.2]:2"), 0);
    CHECK_EQ(same("a.example:1", "b.example:2"), 0);
    CHECK_EQ(same("a.example:1", "127.0.0.1:2"), 0);
    CHECK_EQ(same("[fe80::1%eth0]:1", "[fe80::1%eth1]:2"), 0);
    CHECK_EQ(same("[fe80::1%eth0]:1", "[fe80::1%eth0]:2"), 1);
}

static int clash(const char *x, const char *y)
{
    kvs_addr_t a, b;
    CHECK_EQ(kvs_addr_parse(x, 0, &a, NULL, 0), 0);
    CHECK_EQ(kvs_addr_parse(y, 0, &b, NULL, 0), 0);
    CHECK_EQ(kvs_addr_listeners_clash(&a, &b), kvs_addr_listeners_clash(&b, &a));
    return kvs_addr_listeners_clash(&a, &b);
}

/* A node's own listeners on one port passed the config check and failed
 * the start with "another process holds this port". */
KVS_TEST(listeners_clash_forms)
{
    CHECK_EQ(clash("127.0.0.1:7", "127.0.0.1:7"), 1);
    CHECK_EQ(clash("127.0.0.1:7", "localhost:7"), 1);
    CHECK_EQ(clash("0.0.0.0:7", "127.0.0.1:7"), 1);
    CHECK_EQ(clash("0.0.0.0:7", "10.1.2.3:7"), 1);
    CHECK_EQ(clash("0.0.0.0:7", "[::ffff:10.1.2.3]:7"), 1);
    CHECK_EQ(clash("[::]:7", "127.0.0.1:7"), 1);
    CHECK_EQ(clash("[::]:7", "[::1]:7"), 1);
    CHECK_EQ(clash("[::]:7", "0.0.0.0:7"), 1);
    CHECK_EQ(clash("[::]:7", "node.example:7"), 1);
    CHECK_EQ(clash("a.example:7", "A.example.:7"), 1);
    CHECK_EQ(clash("127.0.0.1:7", "127.0.0.1:8"), 0);
    CHECK_EQ(clash("[::]:7", "[::]:8"), 0);
    CHECK_EQ(clash("127.0.0.1:7", "127.0.0.2:7"), 0);
    CHECK_EQ(clash("0.0.0.0:7", "[::1]:7"), 0);
    CHECK_EQ(clash("0.0.0.0:7", "localhost:7"), 0); /* localhost may be ::1 first */
    CHECK_EQ(clash("0.0.0.0:7", "node.example:7"), 0);
    CHECK_EQ(clash("127.0.0.1:7", "[::1]:7"), 0);
    CHECK_EQ(clash("unix:/tmp/a.sock", "unix:/tmp/a.sock"), 0);
}

/* The host a peer counts as, for limits per client host: IPv4 as it is
 * (also mapped into IPv6), IPv6 by its /64, loopback as it is. */
KVS_TEST(peer_host_forms)
{
    char h[64];
    static const struct {
        const char *peer, *host;
    } cases[] = {
        {"1.2.3.4:5678", "1.2.3.4"},
        {"[::ffff:1.2.3.4]:5678", "1.2.3.4"},
        {"[2001:db8:1:2::9]:5678", "2001:db8:1:2::/64"},
        {"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:1", "2001:db8:1:2::/64"},
        {"[::1]:5678", "::1"},
        {"127.0.0.2:9", "127.0.0.2"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kvs_addr_peer_host(cases[i].peer, h, sizeof(h));
        CHECK_STR(h, cases[i].host);
    }
    kvs_addr_peer_host("123.123.123.123:1", h, 4); /* cut to what fits */
    CHECK_STR(h, "123");
}

KVS_TEST_MAIN(KVS_CASE(host_port), KVS_CASE(ipv6_in_brackets), KVS_CASE(unix_path),
              KVS_CASE(bad_ports), KVS_CASE(missing_colon), KVS_CASE(ipv6_without_brackets),
              KVS_CASE(too_long), KVS_CASE(hosts_are_validated), KVS_CASE(format_round_trip),
              KVS_CASE(format_port0_and_truncation), KVS_CASE(loopback_forms),
              KVS_CASE(host_arg_forms), KVS_CASE(same_host_forms), KVS_CASE(unspecified_forms),
              KVS_CASE(listeners_clash_forms), KVS_CASE(peer_host_forms))
