/* SPDX-License-Identifier: Apache-2.0 */
/* SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md).
 *
 * A mesh workload's identity is
 *
 *   spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
 *
 * spiffe_id_parse() accepts any valid SPIFFE ID (a peer issued by SPIRE may
 * use another path) and says whether it has the mesh form; spiffe_id_build()
 * makes only the mesh form. Rules enforced:
 *   - scheme "spiffe" (lower case) followed by "://";
 *   - trust domain: 1..255 characters of [a-z0-9.-_] (no upper case, no
 *     port, no user info, no percent-encoding);
 *   - path: empty or "/"-separated segments, each non-empty, not "." or "..",
 *     of [a-zA-Z0-9.-_]; no trailing "/";
 *   - no query ("?") or fragment ("#");
 *   - the whole ID at most 2048 bytes.
 * Mesh names (namespace, service account) are additionally limited to 253
 * characters. */
#ifndef SHUNT_CORE_SPIFFE_H
#define SHUNT_CORE_SPIFFE_H

#include <stdbool.h>
#include <stddef.h>

#define SPIFFE_ID_MAX   2048
#define SPIFFE_TD_MAX   255
#define SPIFFE_NAME_MAX 253

struct spiffe_id {
        char uri[SPIFFE_ID_MAX + 1];
        char trust_domain[SPIFFE_TD_MAX + 1];
        bool mesh; /* path is /ns/<ns>/sa/<sa> */
        char ns[SPIFFE_NAME_MAX + 1];
        char sa[SPIFFE_NAME_MAX + 1];
};

/* Parses and validates. Returns 0, or -EINVAL with *why (if not NULL) set to
 * a static sentence naming the broken rule. Does not log: peers' input goes
 * to the audit line of the caller. */
int spiffe_id_parse(const char *s, struct spiffe_id *out, const char **why);

/* Builds the mesh form; logs and returns -EINVAL naming the bad part. */
int spiffe_id_build(const char *trust_domain, const char *ns, const char *sa,
                    struct spiffe_id *out);

bool spiffe_trust_domain_valid(const char *td);
/* A namespace or service-account name: a valid path segment of at most
 * SPIFFE_NAME_MAX characters. */
bool spiffe_name_valid(const char *name);

#endif
