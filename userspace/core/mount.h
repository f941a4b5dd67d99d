/* SPDX-License-Identifier: Apache-2.0 */
/* Where the cgroup v2 hierarchy is mounted, as this process sees it. */
#ifndef SHUNT_CORE_MOUNT_H
#define SHUNT_CORE_MOUNT_H

#include <stddef.h>

/* The first mount point in a mountinfo file (/proc/self/mountinfo) of the
 * cgroup v2 hierarchy's own root (a bind of a sub-cgroup would hide the
 * others) that its path still reaches: a mount covered by a later one on
 * the same or a parent path (two `mount --rbind` of /sys stacked, as a
 * chroot leaves) is passed over, since a path there lands in the cover.
 * 0, -ENOENT (none), -ENAMETOOLONG (longer than len), -errno (unreadable). */
int cgroup2_mount(const char *mountinfo, char *out, size_t len);

#endif
