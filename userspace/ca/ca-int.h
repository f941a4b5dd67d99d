/* Private to userspace/ca: the HTTPS server, TokenReview client and audit
 * lines shared by the files of the component. */
#ifndef SHUNT_CA_INT_H
#define SHUNT_CA_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "ca/ca.h"
#include "discovery/k8s_creds.h"
#include "tls/spiffe.h"

#define CA_COMP "ca"

/* ---- audit (service.c) -------------------------------------------------------- */

/* One audit line (core/log.h log_audit, event "certificate") per issuance
 * or refusal: result "issued" or "refused", the identity (SPIFFE ID, ""
 * when unknown), serial ("" when none), peer, reason ("" for an issuance),
 * the HTTP status and the message. */
void ca_audit(const char *result, const char *identity, const char *serial, const char *peer,
              const char *reason, int status, const char *message);

/* ---- TokenReview (tokenreview.c) ---------------------------------------------------- */

enum ca_tr_result {
        CA_TR_OK = 0,
        CA_TR_INVALID,     /* token_invalid */
        CA_TR_EXPIRED,     /* token_expired */
        CA_TR_AUDIENCE,    /* wrong_audience */
        CA_TR_UNAVAILABLE, /* tokenreview_unavailable: never issue */
};

const char *ca_tr_reason(enum ca_tr_result r);

struct ca_tr_identity {
        char ns[SPIFFE_NAME_MAX + 1];
        char sa[SPIFFE_NAME_MAX + 1];
};

#define CA_TR_MAX_RESPONSE (1u << 20)
#define CA_TR_MAX_TOKEN    (16u * 1024)

/* Asks the API server whether token is a valid service-account token for
 * audience. Blocking, at most timeout_ms. Thread-safe (a curl handle per
 * thread). msg gets one line saying why when the result is not CA_TR_OK. */
enum ca_tr_result ca_tokenreview(struct k8s_creds *creds, const char *token, const char *audience,
                                 uint32_t timeout_ms, struct ca_tr_identity *id, char *msg,
                                 size_t msglen);
/* Maps a TokenReview status (authenticated, error text, audiences, user
 * name) to a result; pure (unit-tested). */
enum ca_tr_result ca_tr_classify(const char *response_json, size_t len, const char *audience,
                                 struct ca_tr_identity *id, char *msg, size_t msglen);

/* ---- HTTPS server (server.c) ----------------------------------------------------------- */

struct ca_http;

struct ca_http_options {
        const char *listen;
        unsigned workers, queue;
        uint32_t read_timeout_ms;
        size_t max_body;
};

/* Binds and listens. 0 or -errno (logged). */
int ca_http_new(const struct ca_http_options *opt, struct ca_http **out);
void ca_http_free(struct ca_http *h);
uint16_t ca_http_port(const struct ca_http *h);
/* max_body: the route's bound on request bodies (0: opt.max_body). */
int ca_http_route(struct ca_http *h, const char *method, const char *path, ca_handler_fn fn,
                  void *ctx, bool audited, size_t max_body);
/* The serving context (TLS 1.3 only) for connections accepted from now on;
 * the server takes its own reference. */
void ca_http_set_ctx(struct ca_http *h, SSL_CTX *ctx);
/* Accepts and serves until ca_http_stop; tick(arg) runs about once a second
 * on the calling thread. */
int ca_http_run(struct ca_http *h, void (*tick)(void *arg), void *arg);
void ca_http_stop(struct ca_http *h); /* async-signal-safe */

#endif
