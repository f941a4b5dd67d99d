/* SPDX-License-Identifier: Apache-2.0 */
/* Sidecar injection: the mutating admission webhook's logic, without I/O.
 *
 * An AdmissionReview v1 request for a Pod CREATE goes in; an AdmissionReview
 * v1 response comes out, with a base64 JSONPatch that adds shunt's capture
 * init container (`shuntd init`), the proxy (uid 1337, `--capture init`, no
 * capability, the metrics port 15020 declared), the projected token and
 * trust-bundle volumes, the label `shunt.io/meshed: "true"` and, unless the
 * pod has its own, the prometheus.io/ scrape annotations for that port. What to add comes from an
 * inject config (JSON,
 * `--inject-config FILE` of shunt-ca; the chart renders it into a ConfigMap)
 * and from the pod's `shunt.io/` annotations.
 *
 * Node mode (inject config node_namespaces): a pod of such a namespace gets
 * no sidecar, only the meshed label, which the node agent's Pods watch
 * selects. capture_from "node": sidecar pods get no init container (Pod
 * Security "baseline" refuses NET_ADMIN); the capture's settings go into the
 * annotation INJECT_NODE_CAPTURE_ANNOTATION, and the node agent installs
 * that capture in the pod's network namespace (node/sidecar_capture.h). */
#ifndef SHUNT_INJECT_INJECT_H
#define SHUNT_INJECT_INJECT_H

#include <stddef.h>

#include "core/strbuf.h"

/* Largest AdmissionReview accepted. The API server stores objects of at most
 * 1.5 MiB; a review carries one Pod plus a few hundred bytes. */
#define INJECT_MAX_REVIEW_BYTES (2u * 1024 * 1024)
/* Largest inject config file. */
#define INJECT_MAX_CONFIG_BYTES (64u * 1024)

/* Names the webhook and the chart share. */
#define INJECT_NS_LABEL       "shunt.io/inject"        /* namespace label, value "enabled" */
#define INJECT_OPTOUT         "shunt.io/inject"        /* pod annotation (or label), "false" */
#define INJECT_MESHED_LABEL   "shunt.io/meshed"        /* set to "true" on injected pods */
#define INJECT_PROXY_NAME     "shunt-proxy"            /* the proxy container */
#define INJECT_INIT_NAME      "shunt-init"             /* the capture init container */
#define INJECT_TOKEN_DIR      "/var/run/secrets/shunt" /* projected token, file "token" */
#define INJECT_BUNDLE_DIR     "/var/run/shunt/bundle"  /* trust bundle, file "ca.crt" */
#define INJECT_BUNDLE_CM      "shunt-ca-bundle"
#define INJECT_TOKEN_AUDIENCE "shunt-ca"
/* capture_from "node": a JSON object of the environment `shuntd init` would
 * have had, only the keys INJECT_NODE_CAPTURE_KEYS. */
#define INJECT_NODE_CAPTURE_ANNOTATION "shunt.io/node-capture"
/* What the capture depends on (config keys by their environment names);
 * the node agent refuses any other key. */
#define INJECT_NODE_CAPTURE_KEYS                                                                   \
        "SHUNT_REDIRECT", "SHUNT_PROXY_UID", "SHUNT_PROXY_MARK", "SIDECAR_INBOUND_PORT",           \
            "SIDECAR_OUTBOUND_PORT", "SHUNT_ADMIN_METRICS_PORT", "SHUNT_ADMIN_METRICS_ADDRESS",    \
            "SHUNT_EXCLUDE_INBOUND_PORTS", "SHUNT_EXCLUDE_OUTBOUND_PORTS",                         \
            "SHUNT_EXCLUDE_OUTBOUND_CIDRS"
#define INJECT_NODE_NAMESPACES_MAX 64

struct inject_config;

/* Parses an inject config (JSON object; unknown keys are errors). Returns 0,
 * or -EINVAL with one line in err naming the key and what is allowed. */
int inject_config_parse(const char *json, size_t len, struct inject_config **out, char *err,
                        size_t errlen);
/* Reads and parses FILE (at most INJECT_MAX_CONFIG_BYTES). 0 or -errno. */
int inject_config_load(const char *path, struct inject_config **out, char *err, size_t errlen);
void inject_config_free(struct inject_config *cfg);

/* Answers one AdmissionReview request body.
 *   0           out holds an AdmissionReview response (HTTP 200): allowed
 *               with a patch, allowed unchanged (opt-out, already injected,
 *               not a Pod CREATE, host network), or refused (status code 400,
 *               the reason in status.message) when the Pod or one of its
 *               shunt.io/ annotations is malformed;
 *   -EINVAL     the body is not an AdmissionReview v1 with a request uid: no
 *               review can be answered (HTTP 400); out holds
 *               {"error":"bad_request","message":"..."};
 *   -EMSGSIZE   body larger than INJECT_MAX_REVIEW_BYTES (HTTP 413,
 *               {"error":"too_large",...});
 *   -ENOMEM.
 * note (may be NULL) gets one line for the server's log: what was decided
 * for which pod and why. */
int inject_review(const struct inject_config *cfg, const char *body, size_t len, struct strbuf *out,
                  char *note, size_t notelen);

/* The HTTP status for inject_review's result. */
int inject_http_status(int rc);

#endif
