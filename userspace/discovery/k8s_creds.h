/* SPDX-License-Identifier: Apache-2.0 */
/* Credentials for the Kubernetes API server, shared by the discovery
 * backend (k8s.c) and the certificate authority (shunt-ca's TokenReview):
 *
 *  - a kubeconfig (JSON, or YAML when built with libyaml): current-context,
 *    its cluster's server and certificate-authority[-data] (or
 *    insecure-skip-tls-verify), its user's client-certificate[-data] and
 *    client-key[-data], token or tokenFile (exec and auth-provider are not
 *    supported: a warning says so);
 *  - in-cluster: KUBERNETES_SERVICE_HOST/PORT, and token + ca.crt from the
 *    service-account directory (SHUNT_K8S_SERVICEACCOUNT_DIR, default
 *    /var/run/secrets/kubernetes.io/serviceaccount).
 *
 * A token file is re-read whenever it changes (the kubelet rotates a
 * projected token in place). Functions may be called from several threads. */
#ifndef SHUNT_DISCOVERY_K8S_CREDS_H
#define SHUNT_DISCOVERY_K8S_CREDS_H

#include <stddef.h>

#include <curl/curl.h>

struct k8s_creds;

/* kubeconfig: a path, or NULL/"" for the in-cluster credentials. 0, or a
 * negative errno with one line in err naming the file and the problem
 * (-ENOENT: no kubeconfig and not in a cluster). */
int k8s_creds_load(const char *kubeconfig, struct k8s_creds **out, char *err, size_t errlen);
void k8s_creds_free(struct k8s_creds *c);

const char *k8s_creds_mode(const struct k8s_creds *c);   /* "in-cluster" or "kubeconfig" */
const char *k8s_creds_origin(const struct k8s_creds *c); /* the file or directory */
const char *
k8s_creds_server(const struct k8s_creds *c); /* "https://host:port", no '/' at the end */

/* Sets e's TLS options (server CA, client certificate, insecure) and appends
 * "Authorization: Bearer <token>" to *hdrs when there is a token. 0 or
 * -ENOMEM. */
int k8s_creds_apply(struct k8s_creds *c, CURL *e, struct curl_slist **hdrs);

/* The pod's namespace from the in-cluster service-account directory
 * (SHUNT_K8S_SERVICEACCOUNT_DIR or the default)'s "namespace" file. 0, or
 * -ENOENT (no such file: not in a pod), -EINVAL (not a namespace name). */
int k8s_pod_namespace(char *out, size_t len);

#endif
