// SPDX-License-Identifier: Apache-2.0
/* Replays a fuzz target's corpus, then feeds it a bounded number of
 * deterministic mutations of the corpus entries. Used when libFuzzer is not
 * built, so every ctest run still exercises the parser under the sanitizers.
 *
 * usage: fuzz_<name> CORPUS_DIR [MUTATIONS] */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_INPUT 65536

struct input {
        uint8_t *data;
        size_t len;
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static void run(const uint8_t *data, size_t len)
{
        /* A private copy so reads past len trip ASan. */
        uint8_t *copy = malloc(len ? len : 1);
        if (!copy)
                abort();
        memcpy(copy, data, len);
        LLVMFuzzerTestOneInput(copy, len);
        free(copy);
}

int main(int argc, char **argv)
{
        if (argc < 2) {
                fprintf(stderr, "usage: %s CORPUS_DIR [MUTATIONS]\n", argv[0]);
                return 2;
        }
        long mutations = argc > 2 ? strtol(argv[2], NULL, 10) : 10000;
        struct input inputs[512];
        size_t n = 0;
        DIR *d = opendir(argv[1]);
        if (!d) {
                fprintf(stderr, "fuzz driver: cannot open corpus %s\n", argv[1]);
                return 2;
        }
        struct dirent *e;
        while ((e = readdir(d)) && n < 512) {
                if (e->d_name[0] == '.')
                        continue;
                char path[4096];
                snprintf(path, sizeof(path), "%s/%s", argv[1], e->d_name);
                FILE *f = fopen(path, "rb");
                if (!f)
                        continue;
                uint8_t *buf = malloc(FUZZ_MAX_INPUT);
                size_t len = fread(buf, 1, FUZZ_MAX_INPUT, f);
                fclose(f);
                inputs[n].data = buf;
                inputs[n].len = len;
                n++;
        }
        closedir(d);
        if (n == 0) {
                fprintf(stderr, "fuzz driver: empty corpus %s\n", argv[1]);
                return 2;
        }
        for (size_t i = 0; i < n; i++) {
                run(inputs[i].data, inputs[i].len);
                for (size_t cut = 0; cut < inputs[i].len; cut += 1 + inputs[i].len / 64)
                        run(inputs[i].data, cut); /* every truncation point, sampled */
        }
        uint8_t *buf = malloc(FUZZ_MAX_INPUT);
        for (long m = 0; m < mutations; m++) {
                struct input *in = &inputs[rng() % n];
                size_t len = in->len;
                memcpy(buf, in->data, len);
                int edits = 1 + (int)(rng() % 8);
                for (int k = 0; k < edits; k++) {
                        switch (rng() % 4) {
                        case 0: /* flip a byte */
                                if (len)
                                        buf[rng() % len] = (uint8_t)rng();
                                break;
                        case 1: /* truncate */
                                if (len)
                                        len = rng() % len;
                                break;
                        case 2: /* insert a byte */
                                if (len < FUZZ_MAX_INPUT) {
                                        size_t at = len ? rng() % len : 0;
                                        memmove(buf + at + 1, buf + at, len - at);
                                        buf[at] = (uint8_t)rng();
                                        len++;
                                }
                                break;
                        case 3: /* interesting value */
                                if (len) {
                                        static const uint8_t vals[] = {0,    0xff, 0x7f,
                                                                       0x80, 0x01, 0x3f};
                                        buf[rng() % len] = vals[rng() % sizeof(vals)];
                                }
                                break;
                        }
                }
                run(buf, len);
        }
        free(buf);
        for (size_t i = 0; i < n; i++)
                free(inputs[i].data);
        printf("fuzz driver: %zu corpus inputs, %ld mutations, no crash\n", n, mutations);
        return 0;
}
