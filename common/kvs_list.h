/*
 * kvs_list: an intrusive doubly linked list (the Linux kernel's list_head
 * and libuv's queue are the models).
 *
 * A list is a head node, a kvs_list_t that kvs_list_init made point at
 * itself; an element embeds a kvs_list_t (its "link") and is found back
 * from it with KVS_LIST_ENTRY. Adding, removing and moving an element take
 * constant time and no memory, so lists serve where a failure must not be
 * possible (a connection's close, a request's end).
 *
 * A link that is on no list is all zeros (as calloc and memset leave it)
 * or was removed: kvs_list_linked says which, and kvs_list_remove of a
 * link on no list does nothing, so an owner's teardown may remove what it
 * does not know to be linked.
 */
#ifndef KVS_LIST_H
#define KVS_LIST_H

#include <stddef.h>

typedef struct kvs_list_s {
    struct kvs_list_s *prev, *next;
} kvs_list_t;

/* The element of type `type` whose member `member` is the link `ptr`. */
#define KVS_LIST_ENTRY(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Every link of the list at `head`, first to last; `pos` must stay on
 * the list through the body. */
#define KVS_LIST_EACH(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* The same, where the body may remove `pos` (only `pos`): `tmp` holds the
 * next link. */
#define KVS_LIST_EACH_SAFE(pos, tmp, head)                                                         \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                               \
         (pos) = (tmp), (tmp) = (pos)->next)

/* Makes `head` an empty list. */
static inline void kvs_list_init(kvs_list_t *head)
{
    head->prev = head->next = head;
}

static inline int kvs_list_empty(const kvs_list_t *head)
{
    return head->next == head;
}

/* Whether the element's link `e` is on a list. */
static inline int kvs_list_linked(const kvs_list_t *e)
{
    return e->next != NULL;
}

/* The list's first and last links, or NULL when it is empty. */
static inline kvs_list_t *kvs_list_first(const kvs_list_t *head)
{
    return head->next != head ? head->next : NULL;
}

static inline kvs_list_t *kvs_list_last(const kvs_list_t *head)
{
    return head->prev != head ? head->prev : NULL;
}

/* Puts `e` (on no list) just before `at`, a link on a list or its head
 * (before the head: at the list's end). */
static inline void kvs_list_insert_before(kvs_list_t *at, kvs_list_t *e)
{
    e->next = at;
    e->prev = at->prev;
    at->prev->next = e;
    at->prev = e;
}

static inline void kvs_list_push_back(kvs_list_t *head, kvs_list_t *e)
{
    kvs_list_insert_before(head, e);
}

static inline void kvs_list_push_front(kvs_list_t *head, kvs_list_t *e)
{
    kvs_list_insert_before(head->next, e);
}

/* Takes `e` off its list; nothing when it is on none. */
static inline void kvs_list_remove(kvs_list_t *e)
{
    if (e->next == NULL)
        return;
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = NULL;
}

#endif
