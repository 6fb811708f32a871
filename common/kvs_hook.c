/*
 * kvs_hook: the request hook chain. See kvs_hook.h; the ABI hooks are
 * written against is include/kvs_plugin.h.
 */
#include "kvs_hook.h"
#include "kvs_msg.h"

#include <stdio.h>
#include <string.h>

void kvs_hook_chain_init(kvs_hook_chain_t *c)
{
    memset(c, 0, sizeof(*c));
}

int kvs_hook_add(kvs_hook_chain_t *c, unsigned events, kvs_hook_fn fn, void *state, unsigned flags)
{
    if ((events & KVS_HOOK_ALL) == 0 || fn == NULL)
        return -1;
    for (unsigned ev = 0; ev < KVS_HOOK_EVENTS; ev++)
        if ((events & KVS_HOOK_MASK(ev)) && c->n[ev] >= KVS_HOOK_MAX)
            return -1;
    for (unsigned ev = 0; ev < KVS_HOOK_EVENTS; ev++) {
        if (!(events & KVS_HOOK_MASK(ev)))
            continue;
        c->hooks[ev][c->n[ev]++] = (kvs_hook_t){fn, state};
        if ((flags & KVS_HOOK_KEEP_REQUEST) && ev != KVS_HOOK_RECEIVED)
            c->keep_request = 1;
    }
    return 0;
}

/* Makes the hook's message msg[0..msglen) (NUL-terminated) fit for an
 * answer: CommandResponse.message is a protobuf string (UTF-8, or no
 * client parses the answer) and reaches terminals, logs and Redis error
 * lines. Printable characters stay; anything else (a byte that is not
 * UTF-8, a control character, a character cut short where the hook filled
 * the buffer) becomes \xHH; the text ends at a whole character. */
static void make_printable(char *msg, size_t msglen)
{
    char out[KVS_HOOK_MSG];
    size_t cap = msglen < sizeof(out) ? msglen : sizeof(out), n = 0;
    const uint8_t *s = (const uint8_t *)msg;
    size_t left = strlen(msg);
    while (left > 0) {
        size_t k = kvs_text_printable(s, left);
        size_t need = k > 0 ? k : 4;
        if (n + need + 1 > cap)
            break;
        if (k > 0)
            memcpy(out + n, s, k);
        else
            snprintf(out + n, 5, "\\x%02x", s[0]);
        n += need;
        s += k > 0 ? k : 1;
        left -= k > 0 ? k : 1;
    }
    out[n] = '\0';
    memcpy(msg, out, n + 1);
}

uint32_t kvs_hook_call(const kvs_hook_chain_t *c, kvs_hook_event_t ev,
                       const kvs_request_info_t *req, char *msg, size_t msglen)
{
    int may_stop = ev == KVS_HOOK_RECEIVED || ev == KVS_HOOK_EXECUTED;
    for (uint32_t i = 0; i < c->n[ev]; i++) {
        const kvs_hook_t *h = &c->hooks[ev][i];
        if (msglen > 0)
            msg[0] = '\0';
        uint32_t st = h->fn(h->state, ev, req, msg, msglen);
        if (st == 0 || !may_stop)
            continue;
        if (msglen > 0 && memchr(msg, '\0', msglen) == NULL)
            msg[msglen - 1] = '\0'; /* a hook that filled the buffer to the brim */
        if (st < 400 || st > 599) {
            if (msglen > 0)
                snprintf(msg, msglen, "a request hook failed (it returned %u, not a status)", st);
            return 500;
        }
        if (msglen > 0 && msg[0] == '\0')
            snprintf(msg, msglen, "stopped by a request hook");
        else if (msglen > 0)
            make_printable(msg, msglen);
        return st;
    }
    return 0;
}
