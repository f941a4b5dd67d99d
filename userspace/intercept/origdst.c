// SPDX-License-Identifier: Apache-2.0
#include "intercept/origdst.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/sockaddr.h"
#include "intercept/bpfcap.h"

/* From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>,
 * which clash with the libc headers. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

static struct bpfcap *bpf_capture;
/* Node mode: each pod's workers answer from that pod's capture. */
static _Thread_local struct bpfcap *thread_capture;
bool origdst_shortcut_enabled;

void origdst_use_bpf_thread(struct bpfcap *b)
{
        thread_capture = b;
}

void origdst_forget(int fd)
{
        struct bpfcap *b = thread_capture; /* sidecar mode: sockops watches ours */
        struct sockaddr_storage local, peer, out;
        socklen_t ll = sizeof(local), pl = sizeof(peer);
        if (!b || getsockname(fd, (struct sockaddr *)&local, &ll) < 0 ||
            getpeername(fd, (struct sockaddr *)&peer, &pl) < 0)
                return;
        bpfcap_lookup(b, &peer, &local, &out, true);
}

void origdst_use_bpf(struct bpfcap *b)
{
        bpf_capture = b;
        origdst_shortcut_enabled = b != NULL;
}

void origdst_use_ebpf_without_maps(void)
{
        bpf_capture = NULL;
        origdst_shortcut_enabled = true;
}

/* ::ffff:a.b.c.d:port becomes a.b.c.d:port; anything else is left alone. */
static void unmap_v4(struct sockaddr_storage *ss)
{
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)(const void *)ss;
        if (ss->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr))
                return;
        struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = a6->sin6_port};
        memcpy(&a4.sin_addr, &a6->sin6_addr.s6_addr[12], 4);
        memset(ss, 0, sizeof(*ss));
        memcpy(ss, &a4, sizeof(a4));
}

enum origdst_result origdst_get(int fd, const struct sockaddr_storage *local,
                                const struct sockaddr_storage *peer, struct sockaddr_storage *out)
{
        socklen_t len = sizeof(*out);
        int rc;
        memset(out, 0, sizeof(*out));
        struct bpfcap *capture = thread_capture ? thread_capture : bpf_capture;
        if (capture) {
                /* Consumed unless sockops removes it when our socket closes. */
                rc = bpfcap_lookup(capture, peer, local, out, true);
                if (rc == 0) {
                        unmap_v4(out);
                        return ORIGDST_OK;
                }
                if (rc != -ENOENT) {
                        errno = -rc;
                        return ORIGDST_ERROR;
                }
                /* Not in the map: maybe redirected by iptables (inbound). */
                len = sizeof(*out);
                if (local->ss_family == AF_INET6)
                        rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &len);
                else
                        rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &len);
                if (rc < 0 || sockaddr_equal(out, local))
                        return ORIGDST_NOT_REDIRECTED;
                return ORIGDST_OK;
        }
        if (local->ss_family == AF_INET6)
                rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &len);
        else
                rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &len);
        if (rc < 0) {
                /* ENOENT: conntrack has no entry, so nothing was redirected. */
                return errno == ENOENT ? ORIGDST_NOT_REDIRECTED : ORIGDST_ERROR;
        }
        /* Without a NAT the tuple's destination is the listener itself. */
        if (sockaddr_equal(out, local))
                return ORIGDST_NOT_REDIRECTED;
        return ORIGDST_OK;
}

/* Connects a socket to a listener on the loopback of family and asks the
 * kernel for SO_ORIGINAL_DST on the accepted side. Conntrack must answer with
 * the listener's own address; anything else means the kernel cannot tell us
 * where redirected connections were going. */
static int selftest_family(int family, char *why, size_t whylen)
{
        int ls = -1, cs = -1, as = -1, ret = -1;
        struct sockaddr_storage addr;
        socklen_t alen;
        memset(&addr, 0, sizeof(addr));
        if (family == AF_INET) {
                struct sockaddr_in *a = (void *)&addr;
                a->sin_family = AF_INET;
                a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                alen = sizeof(*a);
        } else {
                struct sockaddr_in6 *a = (void *)&addr;
                a->sin6_family = AF_INET6;
                a->sin6_addr = in6addr_loopback;
                alen = sizeof(*a);
        }
        const char *fam = family == AF_INET ? "IPv4" : "IPv6";
        ls = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ls < 0 || bind(ls, (void *)&addr, alen) < 0 || listen(ls, 1) < 0 ||
            getsockname(ls, (void *)&addr, &alen) < 0) {
                snprintf(why, whylen, "%s loopback listener: %s", fam, strerror(errno));
                goto out;
        }
        cs = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (cs < 0 || connect(cs, (void *)&addr, alen) < 0) {
                snprintf(why, whylen, "%s loopback connect: %s (is lo up?)", fam, strerror(errno));
                goto out;
        }
        as = accept(ls, NULL, NULL);
        if (as < 0) {
                snprintf(why, whylen, "%s loopback accept: %s", fam, strerror(errno));
                goto out;
        }
        struct sockaddr_storage local, orig;
        socklen_t llen = sizeof(local);
        getsockname(as, (void *)&local, &llen);
        socklen_t olen = sizeof(orig);
        int rc = family == AF_INET ? getsockopt(as, SOL_IP, SO_ORIGINAL_DST, &orig, &olen)
                                   : getsockopt(as, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &orig, &olen);
        if (rc < 0) {
                if (errno == ENOENT)
                        snprintf(
                            why, whylen,
                            "%s: connection tracking does not see connections "
                            "(SO_ORIGINAL_DST: ENOENT); load nf_conntrack and the nat table "
                            "(modprobe nf_conntrack iptable_nat ip6table_nat) in this namespace",
                            fam);
                else
                        snprintf(why, whylen,
                                 "%s: SO_ORIGINAL_DST unsupported (%s); the kernel needs "
                                 "CONFIG_NF_CONNTRACK and CONFIG_NF_NAT",
                                 fam, strerror(errno));
                goto out;
        }
        if (!sockaddr_equal(&orig, &local)) {
                snprintf(why, whylen, "%s: SO_ORIGINAL_DST returned an unexpected address", fam);
                goto out;
        }
        ret = 0;
out:
        if (as >= 0)
                close(as);
        if (cs >= 0)
                close(cs);
        if (ls >= 0)
                close(ls);
        return ret;
}

int origdst_selftest(char *why, size_t whylen)
{
        if (origdst_shortcut_enabled)
                return 0; /* eBPF mode */
        if (selftest_family(AF_INET, why, whylen) < 0)
                return -1;
        /* IPv6 may be disabled in a pod: only IPv4 is mandatory. */
        char why6[256];
        if (selftest_family(AF_INET6, why6, sizeof(why6)) < 0 && strstr(why6, "listener") == NULL &&
            strstr(why6, "connect") == NULL) {
                snprintf(why, whylen, "%s", why6);
                return -1;
        }
        return 0;
}
