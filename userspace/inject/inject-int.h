/* SPDX-License-Identifier: Apache-2.0 */
/* Inside the inject component: the config's fields and the value checks
 * config.c and inject.c share. */
#ifndef SHUNT_INJECT_INJECT_INT_H
#define SHUNT_INJECT_INJECT_INT_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "inject/inject.h"

/* shuntd keeps at most this many excluded ports or CIDRs per list
 * (CONFIG_MAX_EXCLUDES); the webhook refuses more rather than have
 * `shuntd init` fail in the pod. */
#define INJECT_LIST_MAX 32
#define INJECT_ITEM_MAX 48

/* Excluded ports or CIDRs, in order, without duplicates. */
struct inject_list {
        char item[INJECT_LIST_MAX][INJECT_ITEM_MAX];
        size_t n;
};

struct inject_config {
        char image[256];
        char pull_policy[16];
        char capture[16]; /* iptables | ebpf | auto: SHUNT_REDIRECT */
        bool native_sidecar;
        int proxy_uid;
        int startup_timeout; /* seconds the proxy may take to become ready */
        char ca_address[256];
        char trust_domain[256];
        char audience[128];
        int token_expiration;
        char bundle_configmap[254];
        char log_level[8];
        char mtls_mode[16]; /* empty: shuntd's own default */
        char discovery[16];
        char bpf_pin_root[200];
        cJSON *proxy_resources; /* NULL: none */
        cJSON *init_resources;
        struct inject_list exclude_in, exclude_out, exclude_cidrs;
        int metrics_port;        /* shuntd's read-only metrics listener; 0 = none */
        bool scrape_annotations; /* prometheus.io/ annotations for it on the pod */
        /* Node mode: namespaces whose pods get no sidecar, only the meshed
         * label ("*": every namespace the webhook sees). */
        char node_namespaces[INJECT_NODE_NAMESPACES_MAX][64];
        size_t n_node_namespaces;
        bool capture_from_node; /* capture_from "node": no init container */
};

/* Where the init container sees the node's /sys/fs/cgroup (eBPF). */
#define INJECT_HOST_CGROUP "/host/sys/fs/cgroup"

int inject_enum_index(const char *const *names, const char *s);
void inject_enum_list(const char *const *names, char *buf, size_t n);

/* A Kubernetes resource quantity as the API server accepts it ("100m",
 * "0.5", "128Mi", "1e3"). */
bool inject_valid_quantity(const char *s);
/* Adds one port (1..65535) or CIDR to l (a duplicate is dropped). 0, or
 * -EINVAL / -E2BIG with why. */
int inject_list_add(struct inject_list *l, const char *text, bool cidr, char *why, size_t whylen);
/* Adds every element of a comma-separated list. */
int inject_list_add_csv(struct inject_list *l, const char *csv, bool cidr, char *why,
                        size_t whylen);

#endif
