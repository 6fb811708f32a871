/*
 * kvs_glob: the table-name patterns of users' grants (README, Security).
 *
 * "*" any run of characters, "?" one character, "[...]" one of a set
 * ("!" or "^" first: none of it; ranges by code point; POSIX classes,
 * ASCII only), a backslash makes the next character plain. Characters,
 * not bytes: fnmatch in the C locale the processes run in takes "?" for
 * one byte and a set of accented letters for a set of bytes, so that a
 * grant on "[\xc3\xa9\xc3\xbc]*" (e-acute, u-umlaut) covered every table
 * whose first letter shares their first byte (o-umlaut, ...).
 *
 * A set that names a class there is none of ("[:alphanum:]") or a range
 * whose ends are reversed ("[z-a]") is a typo that, negated, would take
 * every character: the config refuses such a pattern (kvs_glob_problem),
 * and kvs_glob_match takes it to match nothing.
 */
#ifndef KVS_GLOB_H
#define KVS_GLOB_H

#include <stddef.h>

/* Whether table name t[0..tn) (UTF-8) matches pattern `p`: 1 or 0. */
int kvs_glob_match(const char *p, const char *t, size_t tn);

/* NULL when `p` is a pattern a grant may hold; else what is wrong with it. */
const char *kvs_glob_problem(const char *p);

#endif
