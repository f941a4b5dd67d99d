/* SPDX-License-Identifier: Apache-2.0 */
/* What this build is: the release version (semantic versioning, set in
 * CMakeLists.txt) and the commit it was built from (git describe at build
 * time, "unknown" without one). */
#ifndef SHUNT_CORE_VERSION_H
#define SHUNT_CORE_VERSION_H

#include <stdbool.h>

#include "core/strbuf.h"

const char *shunt_version(void); /* "0.10.0" */
const char *shunt_commit(void);  /* "v0.10.0-3-g1a2b3c4", "1a2b3c4-dirty" or "unknown" */
const char *shunt_tls_library(void);

/* When argv holds --version: prints "<prog> <version> (commit <commit>,
 * <tls library>)" on stdout and returns true (the caller exits 0). The
 * version is the second word, for scripts. */
bool shunt_version_flag(int argc, char *const argv[], const char *prog);

/* The shunt_build_info gauge (always 1; the build is in its labels).
 * 0 or -EINVAL. */
int shunt_build_info_render(struct strbuf *sb);

#endif
