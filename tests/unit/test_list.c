/*
 * Unit tests for kvs_list: order, removal from anywhere, removal of a link
 * on no list, iteration that removes, and finding the element from its
 * link.
 */
#include "kvs_list.h"
#include "kvs_test.h"

#include <string.h>

typedef struct {
    int id;
    kvs_list_t link;
} item_t;

/* The ids of the list's elements, first to last, as digits ("" when empty). */
static const char *order(const kvs_list_t *head)
{
    static char buf[32];
    size_t n = 0;
    const kvs_list_t *pos;
    KVS_LIST_EACH(pos, head)
    {
        CHECK(n + 1 < sizeof(buf));
        buf[n++] = (char)('0' + KVS_LIST_ENTRY(pos, item_t, link)->id);
    }
    buf[n] = '\0';
    return buf;
}

KVS_TEST(keeps_order_and_removes_from_anywhere)
{
    kvs_list_t head;
    item_t it[5];
    memset(it, 0, sizeof(it)); /* zeroed links: on no list */
    kvs_list_init(&head);
    CHECK(kvs_list_empty(&head));
    CHECK(kvs_list_first(&head) == NULL && kvs_list_last(&head) == NULL);
    for (int i = 0; i < 5; i++) {
        it[i].id = i;
        CHECK(!kvs_list_linked(&it[i].link));
    }
    kvs_list_push_back(&head, &it[1].link);
    kvs_list_push_back(&head, &it[2].link);
    kvs_list_push_front(&head, &it[0].link);
    kvs_list_insert_before(&it[2].link, &it[3].link);
    CHECK_STR(order(&head), "0132");
    CHECK(kvs_list_first(&head) == &it[0].link && kvs_list_last(&head) == &it[2].link);
    CHECK(KVS_LIST_ENTRY(kvs_list_last(&head), item_t, link) == &it[2]);
    kvs_list_remove(&it[3].link); /* the middle */
    CHECK(!kvs_list_linked(&it[3].link));
    CHECK_STR(order(&head), "012");
    kvs_list_remove(&it[3].link); /* twice: nothing */
    kvs_list_remove(&it[4].link); /* never added: nothing */
    CHECK_STR(order(&head), "012");
    kvs_list_remove(&it[0].link); /* the first */
    kvs_list_remove(&it[2].link); /* the last */
    CHECK_STR(order(&head), "1");
    kvs_list_remove(&it[1].link);
    CHECK(kvs_list_empty(&head));
    kvs_list_push_back(&head, &it[2].link); /* a link removed may be added again */
    CHECK_STR(order(&head), "2");
}

KVS_TEST(safe_iteration_may_remove_the_current_link)
{
    kvs_list_t head, *pos, *tmp;
    item_t it[6];
    memset(it, 0, sizeof(it));
    kvs_list_init(&head);
    for (int i = 0; i < 6; i++) {
        it[i].id = i;
        kvs_list_push_back(&head, &it[i].link);
    }
    KVS_LIST_EACH_SAFE(pos, tmp, &head)
    {
        if (KVS_LIST_ENTRY(pos, item_t, link)->id % 2 == 0)
            kvs_list_remove(pos);
    }
    CHECK_STR(order(&head), "135");
    KVS_LIST_EACH_SAFE(pos, tmp, &head)
    {
        kvs_list_remove(pos);
    }
    CHECK(kvs_list_empty(&head));
}

KVS_TEST_MAIN(KVS_CASE(keeps_order_and_removes_from_anywhere),
              KVS_CASE(safe_iteration_may_remove_the_current_link))
