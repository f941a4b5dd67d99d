// SPDX-License-Identifier: Apache-2.0
#include "core/mount.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

int cgroup2_mount(const char *mountinfo, char *out, size_t len)
{
        FILE *f = fopen(mountinfo, "re");
        if (!f)
                return -errno;
        char line[4096];
        int rc = -ENOENT;
        while (rc == -ENOENT && fgets(line, sizeof(line), f)) {
                /* id parent maj:min root mountpoint options [optional...] - fstype source
                 * super-options */
                const char *sep = strstr(line, " - ");
                char root[512], mnt[512], fstype[32];
                unsigned maj, min;
                if (!sep || sscanf(sep + 3, "%31s", fstype) != 1 || strcmp(fstype, "cgroup2") ||
                    sscanf(line, "%*s %*s %u:%u %511s %511s", &maj, &min, root, mnt) != 4 ||
                    strcmp(root, "/") != 0)
                        continue;
                struct stat st;
                if (stat(mnt, &st) != 0 || st.st_dev != makedev(maj, min))
                        continue;
                if (strlen(mnt) >= len) {
                        rc = -ENAMETOOLONG;
                        break;
                }
                snprintf(out, len, "%s", mnt);
                rc = 0;
        }
        fclose(f);
        return rc;
}
