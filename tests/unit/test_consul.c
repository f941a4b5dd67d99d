// SPDX-License-Identifier: Apache-2.0
/* Consul backend pieces against a canned HTTP server on the test's loop:
 * the HTTP client (Content-Length, chunked, read-until-close bodies,
 * X-Consul-Index, bounds, malformed answers, refused connections,
 * timeouts), the backoff schedule, and the backend itself (catalog, health
 * mapping: Node.Address fallback, weights, warning, critical, virtual
 * addresses, protocol tag, locality; token and datacenter on the wire;
 * blocking index (the canned server holds a query on the current index
 * until woken); bad JSON -> stale, last endpoints kept; identities from
 * the tag shunt-meshed (Consul's SPIFFE form) and Meta shunt-identity); the
 * rate limit of quick answers (token bucket). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"
#include "discovery/backend.h"
#include "discovery/consul.h"
#include "discovery/consul_http.h"
#include "discovery/registry.h"

/* ---- canned server ------------------------------------------------------------ */

#define MAX_REQS 256

struct sconn;

struct srv {
        struct loop_io lio;
        struct sconn *conns; /* open server-side connections, freed by srv_stop */
        uint16_t port;
        /* answer for a request (NULL: never answer) */
        const char *(*answer)(struct srv *s, const char *req);
        char *reqs[MAX_REQS];
        unsigned n_reqs;
        const char *fixed; /* used by answer_fixed */
        const char *health_body;
        unsigned health_index;
};

struct sconn {
        struct loop_io io;
        struct srv *s;
        struct sconn *prev, *next;
        char buf[4096];
        size_t len;
        bool answered;
        bool held; /* answered with nothing yet: a blocked query */
};

static void sconn_close(struct loop *loop, struct sconn *c)
{
        if (c->prev)
                c->prev->next = c->next;
        else
                c->s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        loop_io_del(loop, &c->io);
        close(c->io.fd);
        loop_defer_free(loop, c);
}

static void sconn_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)events;
        struct sconn *c = io->data;
        ssize_t r = recv(io->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
        if (r > 0 && !c->answered) {
                c->len += (size_t)r;
                c->buf[c->len] = '\0';
                if (!strstr(c->buf, "\r\n\r\n"))
                        return;
                if (c->s->n_reqs < MAX_REQS)
                        c->s->reqs[c->s->n_reqs++] = strdup(c->buf);
                const char *a = c->s->answer(c->s, c->buf);
                c->answered = true;
                if (!a) {
                        c->held = true; /* hold the connection open */
                        return;
                }
                ssize_t w = send(io->fd, a, strlen(a), MSG_NOSIGNAL);
                (void)w;
                shutdown(io->fd, SHUT_WR);
                return;
        }
        if (r < 0 && errno == EAGAIN)
                return;
        sconn_close(loop, c);
}

static void srv_accept(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)events;
        int fd;
        while ((fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                struct sconn *c = calloc(1, sizeof(*c));
                c->s = io->data;
                c->next = c->s->conns;
                if (c->next)
                        c->next->prev = c;
                c->s->conns = c;
                loop_io_init(&c->io, fd, sconn_io, c);
                assert_int_equal(loop_io_add(loop, &c->io, EPOLLIN), 0);
        }
}

static void srv_start(struct loop *loop, struct srv *s)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 64), 0);
        socklen_t l = sizeof(sa);
        getsockname(fd, (struct sockaddr *)&sa, &l);
        s->port = ntohs(sa.sin_port);
        loop_io_init(&s->lio, fd, srv_accept, s);
        assert_int_equal(loop_io_add(loop, &s->lio, EPOLLIN), 0);
}

static void srv_stop(struct loop *loop, struct srv *s)
{
        loop_io_del(loop, &s->lio);
        close(s->lio.fd);
        while (s->conns)
                sconn_close(loop, s->conns);
        for (unsigned i = 0; i < s->n_reqs; i++)
                free(s->reqs[i]);
        s->n_reqs = 0;
}

/* Answers the held connections whose answer is ready now: blocked queries
 * woken by a change, as Consul does. */
static void srv_wake(struct srv *s)
{
        for (struct sconn *c = s->conns; c; c = c->next) {
                const char *a = c->held ? s->answer(s, c->buf) : NULL;
                if (!a)
                        continue;
                c->held = false;
                ssize_t w = send(c->io.fd, a, strlen(a), MSG_NOSIGNAL);
                (void)w;
                shutdown(c->io.fd, SHUT_WR);
        }
}

static const char *answer_fixed(struct srv *s, const char *req)
{
        (void)req;
        return s->fixed;
}

/* ---- client tests -------------------------------------------------------------- */

struct result {
        bool done;
        int err;
        int status;
        bool has_index, index_valid, filtered;
        uint64_t index;
        char body[256];
        size_t body_len;
};

static void on_done(void *ctx, int err, const struct chttp_resp *resp, const char *why)
{
        struct result *r = ctx;
        (void)why;
        r->done = true;
        r->err = err;
        if (resp) {
                r->status = resp->status;
                r->has_index = resp->has_index;
                r->index_valid = resp->index_valid;
                r->index = resp->index;
                r->filtered = resp->filtered;
                r->body_len = resp->body_len;
                snprintf(r->body, sizeof(r->body), "%s", resp->body);
        }
}

struct stopper {
        struct loop_timer t;
        bool *flag;
        unsigned ticks, max;
};

static void stop_cb(struct loop *loop, struct loop_timer *t)
{
        struct stopper *s = t->data;
        if (*s->flag || ++s->ticks >= s->max) {
                loop_stop(loop);
                return;
        }
        loop_timer_arm(loop, t, 10);
}

/* Runs the loop until *flag, at most max ticks of 10 ms. */
static void run_until_flag(struct loop *loop, bool *flag, unsigned max)
{
        struct stopper s = {.flag = flag, .max = max};
        loop_timer_init(&s.t, stop_cb, &s);
        loop_timer_arm(loop, &s.t, 0);
        loop_run(loop);
        loop_timer_cancel(loop, &s.t);
}

/* A client for the agent at 127.0.0.1:port, started on loop. */
static struct chttp_client *client(struct loop *loop, uint16_t port)
{
        char addr[32], err[256];
        snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
        struct chttp_client_config cfg = {.address = addr};
        struct chttp_client *c = chttp_client_new(&cfg, err, sizeof(err));
        assert_non_null(c);
        assert_int_equal(chttp_client_start(c, loop), 0);
        return c;
}

static struct result fetch(struct loop *loop, struct srv *s, const char *answer, size_t max_body,
                           uint32_t timeout_ms)
{
        struct result r = {0};
        s->fixed = answer;
        struct chttp_client *hc = client(loop, s->port);
        char why[128];
        struct chttp *c = chttp_get(hc, "/v1/x?index=3", "X-Test: 1\r\n", timeout_ms, max_body,
                                    on_done, &r, why, sizeof(why));
        assert_non_null(c);
        run_until_flag(loop, &r.done, 500);
        assert_true(r.done);
        chttp_client_free(hc);
        return r;
}

static void test_client(void **state)
{
        (void)state;
        struct loop *loop = loop_new();
        struct srv s = {.answer = answer_fixed};
        srv_start(loop, &s);

        struct result r = fetch(loop, &s,
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                "x-consul-index: 42\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
                                1024, 2000);
        assert_int_equal(r.err, 0);
        assert_int_equal(r.status, 200);
        assert_true(r.has_index && r.index_valid);
        assert_int_equal(r.index, 42);
        assert_false(r.filtered);
        assert_string_equal(r.body, "{\"a\":1}");
        assert_non_null(strstr(s.reqs[0], "GET /v1/x?index=3 HTTP/1.1\r\n"));
        char host[64];
        snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%u\r\n", s.port);
        assert_non_null(strstr(s.reqs[0], host));
        assert_non_null(strstr(s.reqs[0], "\r\nX-Test: 1\r\n"));

        r = fetch(loop, &s,
                  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Consul-Index: 7\r\n\r\n"
                  "4;ext=1\r\n[1,2\r\n3\r\n,3]\r\n0\r\nX-Trailer: y\r\n\r\n",
                  1024, 2000);
        assert_int_equal(r.err, 0);
        assert_string_equal(r.body, "[1,2,3]");
        assert_int_equal(r.body_len, 7);
        assert_int_equal(r.index, 7);

        /* what the token may not read was left out (Consul's ACL filtering) */
        r = fetch(loop, &s,
                  "HTTP/1.1 200 OK\r\nX-Consul-Index: 8\r\n"
                  "x-consul-results-filtered-by-acls:  true\r\nContent-Length: 2\r\n\r\n[]",
                  1024, 2000);
        assert_int_equal(r.err, 0);
        assert_true(r.filtered);
        assert_string_equal(r.body, "[]");

        r = fetch(loop, &s, "HTTP/1.0 404 Not Found\r\n\r\nno such thing", 1024, 2000);
        assert_int_equal(r.err, 0);
        assert_int_equal(r.status, 404);
        assert_false(r.has_index);
        assert_string_equal(r.body, "no such thing");

        r = fetch(loop, &s, "HTTP/1.1 200 OK\r\nX-Consul-Index: abc\r\nContent-Length: 0\r\n\r\n",
                  1024, 2000);
        assert_int_equal(r.err, 0);
        assert_true(r.has_index);
        assert_false(r.index_valid);

        /* bounds and malformed answers */
        r = fetch(loop, &s, "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", 1024, 2000);
        assert_int_equal(r.err, -EMSGSIZE);
        char big[4096];
        memset(big, 'x', sizeof(big));
        memcpy(big, "HTTP/1.1 200 OK\r\n\r\n", 19);
        big[sizeof(big) - 1] = '\0';
        r = fetch(loop, &s, big, 1024, 2000); /* read-until-close body over the bound */
        assert_int_equal(r.err, -EMSGSIZE);
        r = fetch(loop, &s, "SMTP ready\r\n\r\n", 1024, 2000);
        assert_int_equal(r.err, -EPROTO);
        r = fetch(loop, &s,
                  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
                  1024, 2000);
        assert_int_equal(r.err, -EPROTO);
        r = fetch(loop, &s, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 1024, 2000);
        assert_int_equal(r.err, -EPROTO);
        r = fetch(loop, &s, NULL, 1024, 100); /* never answers */
        assert_int_equal(r.err, -ETIMEDOUT);

        /* a cancelled request never calls back */
        struct result rc = {0};
        char why[128];
        s.fixed = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        struct chttp_client *hc = client(loop, s.port);
        struct chttp *c = chttp_get(hc, "/", NULL, 1000, 1024, on_done, &rc, why, sizeof(why));
        assert_non_null(c);
        chttp_cancel(c);
        bool never = false;
        run_until_flag(loop, &never, 20);
        assert_false(rc.done);
        /* one left in flight is cancelled with its client */
        assert_non_null(chttp_get(hc, "/", NULL, 1000, 1024, on_done, &rc, why, sizeof(why)));
        chttp_client_free(hc);
        run_until_flag(loop, &never, 20);
        assert_false(rc.done);

        uint16_t port = s.port;
        srv_stop(loop, &s);
        struct srv none = {.port = port};
        r = fetch(loop, &none, NULL, 1024, 2000);
        assert_int_equal(r.err, -ECONNREFUSED);
        loop_free(loop);
}

static void test_backoff(void **state)
{
        (void)state;
        assert_int_equal(consul_backoff_ms(1, 0.5), 1000);
        assert_int_equal(consul_backoff_ms(2, 0.5), 2000);
        assert_int_equal(consul_backoff_ms(5, 0.5), 16000);
        assert_int_equal(consul_backoff_ms(6, 0.5), 30000);
        assert_int_equal(consul_backoff_ms(1000, 0.5), 30000);
        assert_int_equal(consul_backoff_ms(1, 0.0), 800);
        assert_true(consul_backoff_ms(1, 0.99999) <= 1200 && consul_backoff_ms(1, 0.99999) >= 1199);
        assert_int_equal(consul_backoff_ms(9, 0.0), 24000);
        assert_true(consul_backoff_ms(9, 0.99999) <= 36000);
}

/* ---- backend ------------------------------------------------------------------- */

static const char HEALTH_WEB[] =
    "[{\"Node\":{\"Node\":\"n0\",\"Address\":\"10.1.0.1\",\"Datacenter\":\"dc9\"},"
    "\"Service\":{\"ID\":\"w0\",\"Service\":\"web\",\"Tags\":[\"protocol=grpc\",\"shunt-meshed\"],"
    "\"Address\":\"\","
    "\"Port\":9000,\"Weights\":{\"Passing\":3,\"Warning\":1},"
    "\"TaggedAddresses\":{\"consul-virtual\":{\"Address\":\"240.0.0.7\",\"Port\":80},"
    "\"virtual\":{\"Address\":\"10.96.0.7\",\"Port\":80}}},"
    "\"Checks\":[{\"CheckID\":\"serfHealth\",\"Status\":\"passing\"},"
    "{\"CheckID\":\"service:w0\",\"Status\":\"passing\"}]},"
    "{\"Node\":{\"Node\":\"n1\",\"Address\":\"10.1.0.2\",\"Datacenter\":\"dc9\"},"
    "\"Service\":{\"ID\":\"w1\",\"Service\":\"web\",\"Address\":\"10.2.0.2\",\"Port\":9000,"
    "\"Weights\":{\"Passing\":2,\"Warning\":3},"
    "\"Meta\":{\"shunt-identity\":\"spiffe://cluster.local/ns/shop/sa/web-1\","
    "\"shunt-mtls-mode\":\"strict\"},"
    "\"Locality\":{\"Region\":\"eu\",\"Zone\":\"eu-1a\"}},"
    "\"Checks\":[{\"Status\":\"passing\"},{\"Status\":\"warning\"}]},"
    "{\"Node\":{\"Node\":\"n2\",\"Address\":\"10.1.0.3\"},"
    "\"Service\":{\"ID\":\"w2\",\"Service\":\"web\",\"Address\":\"10.2.0.3\",\"Port\":9000},"
    "\"Checks\":[{\"Status\":\"warning\"},{\"Status\":\"critical\"}]},"
    "{\"Node\":{\"Node\":\"n3\",\"Address\":\"n3.example\"},"
    "\"Service\":{\"ID\":\"w3\",\"Service\":\"web\",\"Address\":\"\",\"Port\":9000},"
    "\"Checks\":[]}]";

static char answer_buf[8192];

static const char *answer_consul(struct srv *s, const char *req)
{
        if (strncmp(req, "GET /v1/catalog/services", 24) == 0) {
                const char *body = "{\"consul\":[],\"web\":[\"v1\"]}";
                snprintf(answer_buf, sizeof(answer_buf),
                         "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Length: %zu\r\n\r\n%s",
                         strlen(body), body);
                return answer_buf;
        }
        if (strncmp(req, "GET /v1/health/service/web", 26) == 0) {
                /* a blocking query on the current index waits for a change */
                const char *ix = strstr(req, "&index=");
                if (ix && strtoul(ix + 7, NULL, 10) == s->health_index)
                        return NULL;
                snprintf(answer_buf, sizeof(answer_buf),
                         "HTTP/1.1 200 OK\r\nX-Consul-Index: %u\r\nContent-Length: %zu\r\n\r\n%s",
                         s->health_index, strlen(s->health_body), s->health_body);
                return answer_buf;
        }
        snprintf(answer_buf, sizeof(answer_buf),
                 "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Length: 2\r\n\r\n[]");
        return answer_buf;
}

struct wait_web {
        struct disc_registry *r;
        uint32_t want;
        struct loop_timer t;
        unsigned ticks;
        bool met;
};

static void web_cb(struct loop *loop, struct loop_timer *t)
{
        struct wait_web *w = t->data;
        const struct disc_snapshot *s = disc_registry_acquire(w->r);
        const struct disc_service *svc = disc_find_service(s, NULL, "web");
        w->met = svc && svc->n_endpoints == w->want;
        disc_snapshot_release(s);
        if (w->met || ++w->ticks > 300) {
                loop_stop(loop);
                return;
        }
        loop_timer_arm(loop, t, 10);
}

static void run_until_web(struct loop *loop, struct disc_registry *r, uint32_t n)
{
        struct wait_web w = {.r = r, .want = n};
        loop_timer_init(&w.t, web_cb, &w);
        loop_timer_arm(loop, &w.t, 0);
        loop_run(loop);
        loop_timer_cancel(loop, &w.t);
        assert_true(w.met);
}

static const struct disc_endpoint *ep_at(const struct disc_snapshot *s, const char *ip)
{
        struct disc_addr a;
        assert_int_equal(disc_addr_parse(ip, 9000, &a), 0);
        return disc_find_endpoint(s, &a);
}

static void test_backend(void **state)
{
        (void)state;
        struct loop *loop = loop_new();
        struct srv s = {.answer = answer_consul, .health_body = HEALTH_WEB, .health_index = 9};
        srv_start(loop, &s);
        struct shunt_config *cfg = calloc(1, sizeof(*cfg));
        snprintf(cfg->sd_type, sizeof(cfg->sd_type), "consul");
        snprintf(cfg->consul_address, sizeof(cfg->consul_address), "http://127.0.0.1:%u/", s.port);
        snprintf(cfg->consul_token, sizeof(cfg->consul_token), "tok-1");
        snprintf(cfg->consul_datacenter, sizeof(cfg->consul_datacenter), "dc9");
        snprintf(cfg->trust_domain, sizeof(cfg->trust_domain), "mesh.test");
        struct disc_registry *r = disc_registry_new(NULL);
        void *impl = NULL;
        char err[256];
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), 0);
        assert_int_equal(disc_consul_ops.start(impl, loop, err, sizeof(err)), 0);
        run_until_web(loop, r, 3); /* w3 has a hostname only: skipped */

        const struct disc_snapshot *snap = disc_registry_acquire(r);
        const struct disc_service *web = disc_find_service(snap, NULL, "web");
        assert_int_equal(web->n_vips, 2);
        struct disc_addr vip;
        assert_int_equal(disc_addr_parse("240.0.0.7", 80, &vip), 0);
        assert_ptr_equal(disc_find_vip(snap, &vip, NULL), web);
        assert_int_equal(web->n_ports, 1);
        assert_int_equal(web->ports[0].port, 80);
        assert_int_equal(web->ports[0].target_port, 9000);
        assert_int_equal(web->ports[0].proto, PROTO_GRPC);
        const struct disc_endpoint *e0 = ep_at(snap, "10.1.0.1"); /* Node.Address fallback */
        assert_non_null(e0);
        assert_int_equal(e0->health, DISC_HEALTH_HEALTHY);
        assert_int_equal(e0->weight, 300);
        assert_string_equal(e0->region, "dc9");
        const struct disc_endpoint *e1 = ep_at(snap, "10.2.0.2"); /* warning: Weights.Warning */
        assert_int_equal(e1->health, DISC_HEALTH_HEALTHY);
        assert_int_equal(e1->weight, 300);
        assert_string_equal(e1->region, "eu");
        assert_string_equal(e1->zone, "eu-1a");
        const struct disc_endpoint *e2 = ep_at(snap, "10.2.0.3"); /* critical: out */
        assert_int_equal(e2->health, DISC_HEALTH_UNHEALTHY);
        assert_false(disc_endpoint_routable(e2));
        /* identities: the tag shunt-meshed gives Consul's service-mesh form;
         * Meta shunt-identity is taken as is, with its shunt-mtls-mode;
         * neither: not meshed. */
        assert_true(e0->meshed);
        assert_string_equal(e0->identity, "spiffe://mesh.test/ns/default/dc/dc9/svc/web");
        assert_int_equal(e0->mtls, DISC_MTLS_DEFAULT);
        assert_true(e1->meshed);
        assert_string_equal(e1->identity, "spiffe://cluster.local/ns/shop/sa/web-1");
        assert_int_equal(e1->mtls, DISC_MTLS_STRICT);
        assert_false(e2->meshed);
        assert_string_equal(e2->identity, "");
        assert_non_null(disc_find_service(snap, NULL, "consul"));
        disc_snapshot_release(snap);

        /* wire: token, datacenter, blocking index after the first answer */
        bool blocking = false;
        for (unsigned i = 0; i < s.n_reqs; i++) {
                assert_non_null(strstr(s.reqs[i], "\r\nX-Consul-Token: tok-1\r\n"));
                assert_non_null(strstr(s.reqs[i], "dc=dc9"));
                assert_non_null(strstr(s.reqs[i], "wait="));
                if (strstr(s.reqs[i], "GET /v1/health/service/web?") &&
                    strstr(s.reqs[i], "&index=9 "))
                        blocking = true;
        }
        if (!blocking) {
                bool never = false;
                run_until_flag(loop, &never, 30);
                for (unsigned i = 0; i < s.n_reqs; i++)
                        blocking |= strstr(s.reqs[i], "&index=9 ") != NULL;
        }
        assert_true(blocking);
        assert_false(disc_source_stale(r, 0));

        /* a change: w2 gone */
        static const char two[] =
            "[{\"Node\":{\"Address\":\"10.1.0.1\"},\"Service\":{\"Address\":\"\",\"Port\":9000},"
            "\"Checks\":[]},{\"Node\":{\"Address\":\"10.1.0.2\"},\"Service\":{\"Address\":"
            "\"10.2.0.2\",\"Port\":9000},\"Checks\":[]}]";
        s.health_body = two;
        s.health_index = 12;
        srv_wake(&s);
        run_until_web(loop, r, 2);

        /* bad JSON: stale, the last endpoints stay */
        s.health_body = "[{\"Node\":";
        s.health_index = 13;
        srv_wake(&s);
        bool never = false;
        run_until_flag(loop, &never, 50);
        assert_true(disc_source_stale(r, 0));
        snap = disc_registry_acquire(r);
        assert_int_equal(disc_find_service(snap, NULL, "web")->n_endpoints, 2);
        disc_snapshot_release(snap);
        struct strbuf sb;
        strbuf_init(&sb);
        disc_consul_ops.render(impl, &sb);
        assert_non_null(strstr(sb.data, "invalid JSON"));
        strbuf_free(&sb);

        disc_consul_ops.destroy(impl);
        srv_stop(loop, &s);
        disc_registry_free(r);
        free(cfg);
        loop_free(loop);
}

/* Creates the backend from cfg on a registry of its own and renders it. */
static void render_created(const struct shunt_config *cfg, struct strbuf *sb)
{
        struct disc_registry *r = disc_registry_new(NULL);
        void *impl = NULL;
        char err[256];
        if (disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)) != 0)
                fail_msg("create: %s", err);
        strbuf_init(sb);
        disc_consul_ops.render(impl, sb);
        disc_consul_ops.destroy(impl);
        disc_registry_free(r);
}

/* The rate limit of quick answers: two at once, then one per refill period;
 * a pause refills the bucket, at most to its burst. */
static void test_bucket(void **state)
{
        (void)state;
        struct consul_bucket b = {0};
        uint64_t t = 1000;
        assert_int_equal(consul_bucket_take(&b, t), 0);
        assert_int_equal(consul_bucket_take(&b, t + 10), 0);
        uint32_t d = consul_bucket_take(&b, t + 20);
        assert_int_equal(d, CONSUL_RATE_REFILL_MS - 20); /* 20 ms of refill were there */
        /* churn: each query goes one refill period after the previous one */
        t += 20 + d;
        for (int i = 0; i < 5; i++) {
                d = consul_bucket_take(&b, t);
                assert_int_equal(d, CONSUL_RATE_REFILL_MS);
                t += d;
        }
        /* quiet for long: the burst again, not more */
        t += 100 * CONSUL_RATE_REFILL_MS;
        assert_int_equal(consul_bucket_take(&b, t), 0);
        assert_int_equal(consul_bucket_take(&b, t), 0);
        assert_true(consul_bucket_take(&b, t) > 0);
}

static void test_bad_config(void **state)
{
        (void)state;
        struct shunt_config *cfg = calloc(1, sizeof(*cfg));
        struct disc_registry *r = disc_registry_new(NULL);
        void *impl = NULL;
        char err[256];
        snprintf(cfg->consul_address, sizeof(cfg->consul_address), "ftp://consul:8501");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "service_discovery.consul.address"));
        snprintf(cfg->consul_address, sizeof(cfg->consul_address), "[::1");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        snprintf(cfg->consul_address, sizeof(cfg->consul_address), "consul:99999");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        snprintf(cfg->consul_address, sizeof(cfg->consul_address), "user@consul:8500");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        /* https: the TLS files must be readable, and only go with https */
        snprintf(cfg->consul_address, sizeof(cfg->consul_address), "https://consul");
        snprintf(cfg->consul_ca_file, sizeof(cfg->consul_ca_file), "/nonexistent/ca.pem");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "service_discovery.consul.ca_file: /nonexistent/ca.pem"));
        snprintf(cfg->consul_ca_file, sizeof(cfg->consul_ca_file), "/dev/null");
        snprintf(cfg->consul_cert_file, sizeof(cfg->consul_cert_file), "/dev/null");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "cert_file and key_file go together"));
        snprintf(cfg->consul_key_file, sizeof(cfg->consul_key_file), "/dev/null");
        struct strbuf sb;
        render_created(cfg, &sb);
        assert_non_null(strstr(sb.data, "\"address\":\"https://consul:8501\""));
        strbuf_free(&sb);
        snprintf(cfg->consul_address, sizeof(cfg->consul_address), "http://consul");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "need an https:// address"));
        cfg->consul_ca_file[0] = cfg->consul_cert_file[0] = cfg->consul_key_file[0] = '\0';
        /* the token from a file, trimmed; not both; not empty */
        char tf[] = "/tmp/test_consul_token_XXXXXX";
        int fd = mkstemp(tf);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, " tok-1\n", 7), 7);
        close(fd);
        snprintf(cfg->consul_token_file, sizeof(cfg->consul_token_file), "%s", tf);
        render_created(cfg, &sb);
        assert_non_null(strstr(sb.data, "\"acl_token\":true"));
        strbuf_free(&sb);
        snprintf(cfg->consul_token, sizeof(cfg->consul_token), "x");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "both set"));
        cfg->consul_token[0] = '\0';
        assert_int_equal(truncate(tf, 0), 0);
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "token_file"));
        unlink(tf);
        cfg->consul_token_file[0] = '\0';
        snprintf(cfg->consul_address, sizeof(cfg->consul_address), "[::1]:8500");
        snprintf(cfg->consul_token, sizeof(cfg->consul_token), "a\nb");
        assert_int_equal(disc_consul_ops.create(r, cfg, &impl, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "service_discovery.consul.token"));
        disc_registry_free(r);
        free(cfg);
}

int main(void)
{
        log_set_level(LOG_ERROR);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_client),     cmocka_unit_test(test_backoff),
            cmocka_unit_test(test_backend),    cmocka_unit_test(test_bucket),
            cmocka_unit_test(test_bad_config),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
