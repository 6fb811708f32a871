/*
 * cli_resolve: a host name's addresses within a time limit, for the tools
 * (kvs-cli, kvs-bench). getaddrinfo blocks for as long as the resolver
 * takes (a DNS server that does not answer: tens of seconds), which
 * --timeout must bound too: it runs on a thread of its own, and a lookup
 * not done in time is left to finish there, its result dropped.
 */
#ifndef CLI_RESOLVE_H
#define CLI_RESOLVE_H

#include <netdb.h>

/* Resolves host:port (SOCK_STREAM, any family) within `timeout` seconds
 * (0: no limit). Returns 0 with *res (freeaddrinfo it), KVS_ENOTFOUND
 * with the resolver's words in *why, or -ETIMEDOUT (*why says so). */
int cli_resolve(const char *host, const char *port, double timeout, struct addrinfo **res,
                const char **why);

#endif
