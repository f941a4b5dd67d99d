// SPDX-License-Identifier: Apache-2.0
/* node/identity: one certificate store per namespace/service account of the
 * node's READY pods, counted by them, dropped after the drain; the bound;
 * fail closed until a certificate is held. Pods are told through the
 * observer as node_pods tells them; certificates come from the built-in CA
 * behind a source that can be made to fail (shunt-ca down). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sys/socket.h>

#include "core/clock.h"
#include "node/identity.h"
#include "test_tls_util.h"
#include "tls/conn.h"
#include "tls/source.h"

#define TD    "cluster.local"
#define DRAIN 60

struct fx {
        char *dir;
        struct node_identities *ids;
        const struct node_pods_observer *obs;
        int made;  /* sources made */
        bool fail; /* fetches fail (the CA is down) */
};

/* A source that fails while f->fail, else asks the built-in CA. */
struct flaky {
        struct tls_source src;
        struct tls_source *inner;
        struct fx *f;
};

static int flaky_fetch(struct tls_source *src, struct tls_material **out, char *err, size_t len)
{
        struct flaky *s = (struct flaky *)src;
        if (s->f->fail) {
                snprintf(err, len, "shunt-ca is unreachable (test)");
                return -EAGAIN;
        }
        return s->inner->ops->fetch(s->inner, out, err, len);
}

static void flaky_destroy(struct tls_source *src)
{
        struct flaky *s = (struct flaky *)src;
        tls_source_free(s->inner);
        free(s);
}

static const struct tls_source_ops flaky_ops = {
    .kind = "flaky", .rotates = true, .fetch = flaky_fetch, .destroy = flaky_destroy};

static int make_source(void *ctx, const char *ns, const char *sa, const char *spiffe_id,
                       struct tls_source **out, char *err, size_t errlen)
{
        struct fx *f = ctx;
        struct flaky *s = calloc(1, sizeof(*s));
        assert_non_null(s);
        struct tls_builtin_options bo = {
            .ca = {.state_dir = f->dir, .trust_domain = TD, .key_type = TLS_KEY_ECDSA_P256},
            .spiffe_id = spiffe_id,
            .key_type = TLS_KEY_ECDSA_P256,
        };
        assert_int_equal(tls_source_builtin_new(&bo, &s->inner), 0);
        s->src.ops = &flaky_ops;
        s->f = f;
        f->made++;
        *out = &s->src;
        return 0;
}

static struct fx *fx_new(uint32_t max)
{
        struct fx *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->dir = tu_mkdtemp();
        struct node_identities_config c = {.trust_domain = TD,
                                           .max_identities = max,
                                           .drain_s = DRAIN,
                                           .clock_skew_s = 300,
                                           .make_source = make_source,
                                           .source_ctx = f};
        char err[256];
        f->ids = node_identities_new(&c, NULL, err, sizeof(err));
        assert_non_null(f->ids);
        f->obs = node_identities_observer(f->ids);
        return f;
}

static void fx_free(struct fx *f)
{
        node_identities_free(f->ids);
        tu_rmrf(f->dir);
        free(f->dir);
        free(f);
}

static void pod(struct fx *f, bool ready, const char *ns, const char *name, const char *sa,
                uint64_t gen)
{
        struct node_pod_info p = {
            .ns = ns, .name = name, .uid = "u", .sa = sa, .gen = gen, .netns_fd = -1};
        if (ready)
                f->obs->ready(f->obs->ctx, &p);
        else
                f->obs->gone(f->obs->ctx, &p);
}

/* The identity in ns/sa's slot now, or "" when the slot holds none. */
static const char *held(struct fx *f, const char *ns, const char *sa, char *buf, size_t len)
{
        struct snapshot_slot *slot = node_identity_slot(f->ids, ns, sa);
        assert_non_null(slot);
        struct snapshot_reader r = {0};
        struct tls_snapshot *snap = tls_snapshot_get(snapshot_reader_get(&r, slot));
        snprintf(buf, len, "%s", snap ? tls_snapshot_identity(snap) : "");
        snapshot_reader_release(&r);
        return buf;
}

static void test_counted_and_dropped(void **state)
{
        struct fx *f = fx_new(8);
        char b[256];
        pod(f, true, "shop", "web-1", "web", 1);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_FETCHING);
        /* fail closed: the slot exists, no certificate in it yet */
        assert_string_equal(held(f, "shop", "web", b, sizeof(b)), "");
        node_identities_tick(f->ids);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_READY);
        assert_string_equal(held(f, "shop", "web", b, sizeof(b)),
                            "spiffe://cluster.local/ns/shop/sa/web");
        struct snapshot_slot *slot = node_identity_slot(f->ids, "shop", "web");

        /* a second pod of the same account: counted, nothing new fetched */
        pod(f, true, "shop", "web-2", "web", 2);
        node_identities_tick(f->ids);
        assert_int_equal(f->made, 1);
        assert_int_equal(node_identity_pods(f->ids, "shop", "web"), 2);
        assert_ptr_equal(node_identity_slot(f->ids, "shop", "web"), slot);
        /* another account, and the same name in another namespace */
        pod(f, true, "shop", "db-1", "db", 3);
        pod(f, true, "bank", "web-1", "web", 4);
        node_identities_tick(f->ids);
        assert_int_equal(f->made, 3);
        assert_int_equal(node_identities_count(f->ids), 3);
        assert_string_equal(held(f, "bank", "web", b, sizeof(b)),
                            "spiffe://cluster.local/ns/bank/sa/web");
        struct strbuf js;
        strbuf_init(&js);
        node_identities_render(f->ids, &js);
        assert_non_null(strstr(js.data, "\"certificate_chain\":\"-----BEGIN CERTIFICATE-----"));
        strbuf_free(&js);

        /* gone is matched by generation; an unknown one changes nothing */
        pod(f, false, "shop", "web-1", "web", 99);
        assert_int_equal(node_identity_pods(f->ids, "shop", "web"), 2);
        pod(f, false, "shop", "web-1", "web", 1);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_READY);
        pod(f, false, "shop", "web-2", "web", 2);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_DRAINING);
        /* the drain: the slot and its certificate stay */
        uint64_t now = clock_mono_ms();
        node_identities_sweep(f->ids, now);
        assert_ptr_equal(node_identity_slot(f->ids, "shop", "web"), slot);
        assert_string_equal(held(f, "shop", "web", b, sizeof(b)),
                            "spiffe://cluster.local/ns/shop/sa/web");
        node_identities_sweep(f->ids, now + (DRAIN + 1) * 1000ull);
        assert_null(node_identity_slot(f->ids, "shop", "web"));
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_NONE);
        assert_int_equal(node_identities_count(f->ids), 2);

        struct strbuf sb;
        strbuf_init(&sb);
        node_identities_render_metrics(f->ids, &sb);
        assert_non_null(strstr(sb.data, "shunt_node_identity_dropped_total 1\n"));
        assert_non_null(strstr(sb.data, "shunt_node_identities{state=\"ready\"} 2\n"));
        assert_non_null(strstr(sb.data, "shunt_node_identity_certificates_total 3\n"));
        assert_non_null(strstr(sb.data, "shunt_node_identity_cert_expiry_seconds{namespace="
                                        "\"bank\",service_account=\"web\"} "));
        strbuf_free(&sb);
        fx_free(f);
}

static void test_back_within_the_drain(void **state)
{
        struct fx *f = fx_new(8);
        char b[256];
        pod(f, true, "shop", "web-1", "web", 1);
        node_identities_tick(f->ids);
        struct snapshot_slot *slot = node_identity_slot(f->ids, "shop", "web");
        pod(f, false, "shop", "web-1", "web", 1);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_DRAINING);
        /* the pod's sandbox comes back (a new generation): the same store */
        pod(f, true, "shop", "web-1", "web", 2);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_READY);
        node_identities_sweep(f->ids, clock_mono_ms() + (DRAIN + 1) * 1000ull);
        assert_ptr_equal(node_identity_slot(f->ids, "shop", "web"), slot);
        assert_string_equal(held(f, "shop", "web", b, sizeof(b)),
                            "spiffe://cluster.local/ns/shop/sa/web");
        assert_int_equal(f->made, 1);
        fx_free(f);
}

/* A connection still using the certificate keeps the store past the drain. */
static void test_kept_while_used(void **state)
{
        struct fx *f = fx_new(8);
        pod(f, true, "shop", "web-1", "web", 1);
        node_identities_tick(f->ids);
        struct snapshot_reader r = {0};
        struct tls_snapshot *snap =
            tls_snapshot_get(snapshot_reader_get(&r, node_identity_slot(f->ids, "shop", "web")));
        assert_non_null(snap);
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        struct tls_conn *c;
        assert_int_equal(tls_conn_server_new(snap, sv[0], 1, &c), 0);
        pod(f, false, "shop", "web-1", "web", 1);
        uint64_t later = clock_mono_ms() + (DRAIN + 1) * 1000ull;
        node_identities_sweep(f->ids, later);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_DRAINING);
        tls_conn_free(c);
        node_identities_sweep(f->ids, later);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_NONE);
        snapshot_reader_release(&r);
        close(sv[0]);
        close(sv[1]);
        fx_free(f);
}

static void test_bound(void **state)
{
        struct fx *f = fx_new(2);
        pod(f, true, "shop", "a-1", "a", 1);
        pod(f, true, "shop", "b-1", "b", 2);
        pod(f, true, "shop", "c-1", "c", 3);
        assert_int_equal(node_identities_count(f->ids), 2);
        assert_null(node_identity_slot(f->ids, "shop", "c"));
        assert_int_equal(node_identity_state(f->ids, "shop", "c"), NODE_ID_SHED);
        /* b's last pod leaves: b drains (still counted against the bound) */
        pod(f, false, "shop", "b-1", "b", 2);
        node_identities_sweep(f->ids, clock_mono_ms());
        assert_null(node_identity_slot(f->ids, "shop", "c"));
        /* b dropped: c is given the room */
        node_identities_sweep(f->ids, clock_mono_ms() + (DRAIN + 1) * 1000ull);
        assert_non_null(node_identity_slot(f->ids, "shop", "c"));
        assert_int_equal(node_identity_pods(f->ids, "shop", "c"), 1);
        struct strbuf sb;
        strbuf_init(&sb);
        node_identities_render_metrics(f->ids, &sb);
        assert_non_null(strstr(sb.data, "shunt_node_identity_shed_total 1\n"));
        strbuf_free(&sb);
        /* c's pod leaving releases what it took */
        pod(f, false, "shop", "c-1", "c", 3);
        assert_int_equal(node_identity_state(f->ids, "shop", "c"), NODE_ID_DRAINING);
        fx_free(f);
}

static void test_ca_down(void **state)
{
        struct fx *f = fx_new(8);
        char b[256];
        f->fail = true;
        pod(f, true, "shop", "web-1", "web", 1);
        node_identities_tick(f->ids);
        assert_int_equal(node_identity_state(f->ids, "shop", "web"), NODE_ID_RETRYING);
        assert_string_equal(held(f, "shop", "web", b, sizeof(b)), ""); /* refused */
        /* the retry waits for its backoff: an immediate tick asks nothing */
        node_identities_tick(f->ids);
        struct strbuf sb;
        strbuf_init(&sb);
        node_identities_render_metrics(f->ids, &sb);
        assert_non_null(strstr(sb.data, "shunt_node_identity_fetch_failures_total 1\n"));
        assert_non_null(strstr(sb.data, "shunt_node_identities{state=\"retrying\"} 1\n"));
        strbuf_reset(&sb);
        node_identities_render(f->ids, &sb);
        assert_non_null(strstr(sb.data, "\"state\":\"retrying\""));
        assert_non_null(strstr(sb.data, "shunt-ca is unreachable (test)"));
        assert_non_null(strstr(sb.data, "\"current\":null"));
        assert_non_null(strstr(sb.data, "\"certificate_chain\":null"));
        strbuf_free(&sb);
        fx_free(f);
}

static size_t count(const char *hay, const char *needle)
{
        size_t n = 0;
        for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
                n++;
        return n;
}

/* A node agent starting with many pods: NODE_ID_MAX_FIRST_FETCHES first
 * requests at a time, the others queued until those have an outcome. */
static void test_first_requests_bounded(void **state)
{
        const int n = NODE_ID_MAX_FIRST_FETCHES + 3;
        struct fx *f = fx_new(64);
        for (int k = 0; k < n; k++) {
                char sa[32];
                snprintf(sa, sizeof(sa), "sa-%d", k);
                pod(f, true, "shop", sa, sa, (uint64_t)k + 1);
        }
        struct strbuf sb;
        strbuf_init(&sb);
        node_identities_render(f->ids, &sb);
        assert_int_equal(count(sb.data, "\"queued\":true"), 3);
        assert_int_equal(node_identity_state(f->ids, "shop", "sa-0"), NODE_ID_FETCHING);
        node_identities_tick(f->ids); /* the first ones are answered */
        assert_int_equal(f->made, n);
        assert_int_equal(node_identity_state(f->ids, "shop", "sa-0"), NODE_ID_READY);
        assert_int_equal(node_identity_state(f->ids, "shop", "sa-18"), NODE_ID_FETCHING);
        node_identities_tick(f->ids); /* then the queued ones */
        strbuf_reset(&sb);
        node_identities_render(f->ids, &sb);
        assert_int_equal(count(sb.data, "\"queued\":true"), 0);
        assert_int_equal(count(sb.data, "\"state\":\"ready\""), n);
        strbuf_free(&sb);
        fx_free(f);
}

/* A pod with its own sidecar holds its own identity: left alone. */
static void test_sidecar_pod_left_alone(void **state)
{
        struct fx *f = fx_new(8);
        struct node_pod_info p = {.ns = "shop",
                                  .name = "legacy-1",
                                  .uid = "u",
                                  .sa = "legacy",
                                  .gen = 7,
                                  .netns_fd = -1,
                                  .sidecar = true};
        f->obs->ready(f->obs->ctx, &p);
        assert_null(node_identity_slot(f->ids, "shop", "legacy"));
        assert_int_equal(f->made, 0);
        struct strbuf sb;
        strbuf_init(&sb);
        f->obs->render(f->obs->ctx, &p, &sb);
        assert_string_equal(sb.data, ",\"identity\":null");
        f->obs->gone(f->obs->ctx, &p);
        /* GET /pods shows a node-mode pod's identity and its state */
        pod(f, true, "shop", "web-1", "web", 8);
        p = (struct node_pod_info){.ns = "shop", .name = "web-1", .sa = "web", .gen = 8};
        strbuf_reset(&sb);
        f->obs->render(f->obs->ctx, &p, &sb);
        assert_string_equal(sb.data, ",\"identity\":{\"spiffe_id\":"
                                     "\"spiffe://cluster.local/ns/shop/sa/web\",\"state\":"
                                     "\"fetching\"}");
        strbuf_free(&sb);
        fx_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_counted_and_dropped),
            cmocka_unit_test(test_back_within_the_drain),
            cmocka_unit_test(test_kept_while_used),
            cmocka_unit_test(test_bound),
            cmocka_unit_test(test_ca_down),
            cmocka_unit_test(test_sidecar_pod_left_alone),
            cmocka_unit_test(test_first_requests_bounded),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
